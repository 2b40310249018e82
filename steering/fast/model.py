"""The fast path: a lean forward pass of Llama-family models over their own weights, with a KV cache kept per
document.

gpt-fast's recipe without the compiler: the attention's query/key/value projections and the MLP's gate/up
projections are fused into one matrix each (the model's own modules become views into them, so no memory is
doubled), the KV cache is preallocated and written in place, and a step is a short, fixed list of tensor operations
instead of transformers' module tree with its dynamic cache. On the default model and two CPU cores this decodes at
about twice the speed of the transformers forward (`benchmarks/bench_engine.py`).

The model is cut in two at the steering hook: the *lower* blocks (before the hook point) never see steering, the
*upper* ones do. A `PrefixCache` keeps, per token, the lower blocks' keys and values, the residual at the hook point
(what the SAE reads: annotation reuses it) and the upper blocks' keys and values, the latter valid only for the
steering they were computed under. After an edit only the tokens from the first changed one on are computed again,
and a change of steering recomputes only the upper blocks, from the kept residuals.

Steering is applied inside the step as data: the residual at the hook point always gets `h + vector` (a zero vector
when unsteered, so a steering change never changes the step), plus the SAE's clamps when the set has any.

Families: Llama, Mistral (within its sliding window) and Qwen2 (projection biases). Others (GPT-2, Gemma2, ...) use
the transformers forward (`steering.runtime.decode`); `fast_model` says why.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Generator, Hashable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from steering.runtime.interventions import vector_digest
from steering.runtime.models import spread
from steering.sae.autoencoder import HookPoint

FAMILIES = ("llama", "mistral", "qwen2")
"""The `model_type`s the fast path runs."""
CHUNK = 256
"""Tokens per forward pass when reading a long prompt: bounds the attention's memory and the wait of a cancel."""
GROW = 512
"""A cache grows in steps of this many tokens."""

Steer = Callable[[torch.Tensor], torch.Tensor]
"""What the step applies to the residual at the hook point `[n, d]` (for the upper blocks)."""


INT8_ROWS = 4
"""Forward passes of at most this many tokens (decode steps) use the int8 weights when there are any; longer ones
(reading a prompt) compute faster from the model's own weights."""

Int8 = tuple[torch.Tensor, torch.Tensor]
"""A weight as int8 `[out, in]` and its per-output-channel scales."""


def quantize_int8(weight: torch.Tensor) -> Int8:
    """Symmetric per-output-channel int8 of a weight `[out, in]` (scales in the weight's dtype)."""
    w = weight.detach().float()
    scales = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)
    q = (w / scales[:, None]).round().clamp(-127, 127).to(torch.int8).contiguous()
    return q, scales.to(weight.dtype)


def int8_available(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether decode steps can use int8 weight-only matmuls here: bfloat16 weights on a CPU whose torch has the
    kernel (`_weight_int8pack_mm`); it halves the memory read per token, which bounds decode speed on a CPU."""
    return dtype == torch.bfloat16 and device.type == "cpu" and hasattr(torch.ops.aten, "_weight_int8pack_mm")


ROW_BUCKET = 32
"""On a CPU, bfloat16 / float16 matmuls run `[rows, in]` padded to a bucket of rows: a power of two up to this
many, then a multiple of it. oneDNN keeps a compiled kernel for every shape it sees (about 0.5 MB each, up to 1,024
of them), and a document read after edits in random places brings a new row count with almost every pass: a long
session grew by some 20 MB a minute that way. With buckets there are a dozen shapes a weight, and the passes run no
slower (the kernel for a round row count is the faster one)."""


def row_bucket(n: int) -> int:
    """The row count `n` rows are padded to (`ROW_BUCKET`)."""
    if n <= ROW_BUCKET:
        return 1 << max(0, n - 1).bit_length()
    return -(-n // ROW_BUCKET) * ROW_BUCKET


@dataclass
class _Linear:
    weight: torch.Tensor
    bias: torch.Tensor | None = None
    int8: Int8 | None = None
    bucket: bool = False
    """Pad the rows to `row_bucket` (reduced precision on a CPU)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if self.int8 is not None and n <= INT8_ROWS:
            out = torch._weight_int8pack_mm(x, *self.int8)
            return out if self.bias is None else out + self.bias
        rows = row_bucket(n) if self.bucket else n
        if rows != n:
            padded = x.new_zeros(rows, x.shape[1])
            padded[:n] = x
            return F.linear(padded, self.weight, self.bias)[:n]
        return F.linear(x, self.weight, self.bias)


@dataclass
class _Layer:
    qkv: _Linear
    o: _Linear
    gate_up: _Linear
    down: _Linear
    norm1: torch.Tensor
    norm2: torch.Tensor


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding of queries or keys `[..., head_dim]`."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def unsupported_reason(model: Any, hook: HookPoint) -> str | None:
    """Why the fast path cannot run `model`, or None when it can."""
    config: Any = getattr(model, "config", None)
    kind = getattr(config, "model_type", None)
    if kind not in FAMILIES:
        return f"model type {kind!r} is not one of {', '.join(FAMILIES)}"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act!r}"
    if getattr(config, "mlp_bias", False) or (kind != "qwen2" and getattr(config, "attention_bias", False)):
        return "biases the fast path does not apply"
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "rotary_emb") or not hasattr(inner, "embed_tokens"):
        return "an unexpected module layout"
    if spread(model):
        return "its weights are spread over several devices"
    if not 0 <= hook.layer < config.num_hidden_layers:
        return f"hook {hook} is outside the model"
    return None


def _fuse(modules: list[nn.Linear]) -> torch.Tensor:
    """One weight for several linear layers reading the same input; the modules' weights become views into it."""
    fused = torch.cat([m.weight.detach() for m in modules], dim=0).contiguous()
    row = 0
    for m in modules:
        n = m.weight.shape[0]
        m.weight = nn.Parameter(fused[row:row + n], requires_grad=False)
        row += n
    return fused


class FastModel:
    """The fused weights of a Llama-family model, split at `hook` (see the module docstring)."""

    def __init__(self, model: Any, hook: HookPoint, *, int8: bool = False) -> None:
        reason = unsupported_reason(model, hook)
        if reason is not None:
            raise ValueError(f"The fast path cannot run this model: {reason}.")
        config = model.config
        inner = model.model
        self.hook = hook
        self.split = hook.layer + 1 if hook.site == "resid_post" else hook.layer
        self.n_layers = config.num_hidden_layers
        self.n_heads = config.num_attention_heads
        self.n_kv = getattr(config, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.n_heads
        self.d_model = config.hidden_size
        self.eps = float(config.rms_norm_eps)
        self.max_positions = int(getattr(config, "max_position_embeddings", 2048))
        window = getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", True) else None
        if window:
            self.max_positions = min(self.max_positions, int(window))
        self.embed = inner.embed_tokens.weight.detach()
        self.final_norm = inner.norm.weight.detach()
        self.rotary = inner.rotary_emb
        self.dtype = self.embed.dtype
        self.device = self.embed.device
        self.cache_dtype = torch.float32 if self.device.type == "cpu" else self.dtype
        """Keys and values are kept in float32 on a CPU: a decode step's attention reads them three times faster
        than bfloat16 there (and they are exact copies of what the blocks computed)."""
        self.int8 = int8 and int8_available(self.dtype, self.device)
        """Whether decode steps use int8 copies of the weights (`int8_available`)."""

        def linear(weight: torch.Tensor, bias: torch.Tensor | None = None) -> _Linear:
            return _Linear(weight, bias, quantize_int8(weight) if self.int8 else None,
                           bucket=self.device.type == "cpu" and self.dtype in (torch.bfloat16, torch.float16))

        self.unembed = linear(model.get_output_embeddings().weight.detach())
        self.layers: list[_Layer] = []
        for block in inner.layers:
            attn, mlp = block.self_attn, block.mlp
            projections = [attn.q_proj, attn.k_proj, attn.v_proj]
            bias = None
            if attn.q_proj.bias is not None:
                bias = torch.cat([p.bias.detach() for p in projections]).contiguous()
            self.layers.append(_Layer(
                qkv=linear(_fuse(projections), bias), o=linear(attn.o_proj.weight.detach()),
                gate_up=linear(_fuse([mlp.gate_proj, mlp.up_proj])), down=linear(mlp.down_proj.weight.detach()),
                norm1=block.input_layernorm.weight.detach(), norm2=block.post_attention_layernorm.weight.detach()))
        self.scale = self.head_dim ** -0.5
        self._cos = self._sin = torch.empty(0)

    # ------------------------------------------------------------------------------------------- pieces
    def bytes_per_token(self) -> int:
        """Memory a cache holds per token: keys and values of every block and the residual at the split."""
        kv = torch.tensor([], dtype=self.cache_dtype).element_size()
        resid = torch.tensor([], dtype=self.dtype).element_size()
        return kv * 2 * self.n_layers * self.n_kv * self.head_dim + resid * self.d_model

    def _rope(self, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cos.shape[0] < end:
            size = min(self.max_positions, max(end, 2 * self._cos.shape[0], GROW))
            positions = torch.arange(size, device=self.device)[None]
            probe = torch.zeros(1, dtype=self.dtype, device=self.device)
            cos, sin = self.rotary(probe, positions)
            self._cos, self._sin = cos[0], sin[0]
        return self._cos, self._sin

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return weight * h.to(x.dtype)

    def _block(self, i: int, x: torch.Tensor, cache: PrefixCache, start: int) -> torch.Tensor:
        """Block `i` over the residual `x` `[n, d]` of positions start .. start+n, reading and writing the cache."""
        layer = self.layers[i]
        n, hd = x.shape[0], self.head_dim
        end = start + n
        qkv = layer.qkv(self._norm(x, layer.norm1))
        nq, nk = self.n_heads * hd, self.n_kv * hd
        q = qkv[:, :nq].view(n, self.n_heads, hd).transpose(0, 1)
        k = qkv[:, nq:nq + nk].view(n, self.n_kv, hd).transpose(0, 1)
        v = qkv[:, nq + nk:].view(n, self.n_kv, hd).transpose(0, 1)
        cos_all, sin_all = self._rope(end)
        cos, sin = cos_all[start:end], sin_all[start:end]
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        cache.k[i, :, start:end] = k
        cache.v[i, :, start:end] = v
        keys, values = cache.k[i, :, :end], cache.v[i, :, :end]
        if n == 1:  # one query: two small matmuls beat the fused attention kernel's set-up several times over
            scores = torch.matmul(q.reshape(self.n_kv, -1, hd).to(keys.dtype), keys.transpose(1, 2)) * self.scale
            probs = torch.softmax(scores.float(), dim=-1).to(values.dtype)
            out = torch.matmul(probs, values).reshape(1, nq).to(x.dtype)
        else:
            keys, values = keys.to(q.dtype), values.to(q.dtype)
            if start == 0:
                attn = F.scaled_dot_product_attention(q[None], keys[None], values[None], is_causal=True,
                                                      enable_gqa=True)
            else:
                mask = torch.ones(n, end, dtype=torch.bool, device=x.device).tril(start)
                attn = F.scaled_dot_product_attention(q[None], keys[None], values[None], attn_mask=mask,
                                                      enable_gqa=True)
            out = attn[0].transpose(0, 1).reshape(n, nq)
        return self._tail(layer, x, out)

    def _tail(self, layer: _Layer, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """The rest of a block after attention: output projection and MLP, each added to the residual."""
        x = x + layer.o(attended)
        gate, up = layer.gate_up(self._norm(x, layer.norm2)).chunk(2, dim=-1)
        return x + layer.down(F.silu(gate) * up)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Float logits `[vocab]` of the last row of the final residual `h`."""
        return self.unembed(self._norm(h[-1:], self.final_norm))[0].float()

    # ------------------------------------------------------------------------------------------- passes
    def lower(self, cache: PrefixCache, limit: int | None = None) -> bool:
        """Compute the lower blocks for the tokens of `cache.ids` not yet read (at most `limit` of them), keeping
        their residuals; True when every token is read."""
        end = len(cache.ids) if limit is None else min(len(cache.ids), cache.low + limit)
        cache.reserve(end)
        while cache.low < end:
            start = cache.low
            stop = min(end, start + CHUNK)
            ids = torch.tensor(cache.ids[start:stop], device=self.device)
            x = F.embedding(ids, self.embed)
            for i in range(self.split):
                x = self._block(i, x, cache, start)
            cache.resid[start:stop] = x
            cache.low = stop
        return cache.low == len(cache.ids)

    def upper(self, cache: PrefixCache, steer: Steer, key: Hashable, *, keep: bool = False) -> torch.Tensor:
        """Logits after the last token of `cache.ids`: the lower blocks for new tokens, then the upper blocks from
        the kept residuals (under `steer`, whose identity is `key`) for every token they have not seen under it.
        `keep`: trust the upper blocks already computed whatever their steering (a generation's later steps)."""
        self.lower(cache)
        end = len(cache.ids)
        if not keep and cache.key != key:
            cache.high, cache.key = 0, key
        cache.high = min(cache.high, end - 1)  # the last token is always run, for its logits
        h = cache.resid[:0]
        while cache.high < end:
            start = cache.high
            stop = min(end, start + CHUNK)
            h = steer(cache.resid[start:stop])
            for i in range(self.split, self.n_layers):
                h = self._block(i, h, cache, start)
            cache.high = stop
        return self.logits(h)


class PrefixCache:
    """Keys, values and hook-point residuals of one token sequence (`ids`), for the fast path.

    `low`: tokens whose lower blocks are computed; `high`: tokens whose upper blocks are computed, under the steering
    identified by `key`. Always `high <= low <= len(ids)`.
    """

    def __init__(self, fast: FastModel, capacity: int = GROW) -> None:
        self.fast = fast
        self.ids: list[int] = []
        self.low = 0
        self.high = 0
        self.key: Hashable = None
        self.capacity = 0
        self.k = self.v = self.resid = torch.empty(0)
        self.codes: SparseCodes | None = None
        """SAE codes of the first `coded` tokens: annotation encodes only the tokens after them."""
        self.coded = 0
        self.reserve(capacity)

    @property
    def nbytes(self) -> int:
        return self.capacity * self.fast.bytes_per_token() + (self.codes.nbytes if self.codes is not None else 0)

    def codes_for(self, n: int, width: int, encode: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """The SAE codes `[n, width]` (float32, CPU) of the first `n` tokens (whose residuals are read), encoding
        with `encode` only the rows not kept from an earlier call."""
        if self.codes is None or self.codes.width != width:
            self.codes, self.coded = SparseCodes(width), 0
        if self.coded < n:
            self.codes.put(self.coded, encode(self.resid[self.coded:n]).float().cpu())
            self.coded = n
        return self.codes.dense(n)

    def reserve(self, tokens: int) -> None:
        """Room for at least `tokens` tokens (kept contents stay)."""
        if tokens <= self.capacity:
            return
        fast = self.fast
        if tokens > fast.max_positions:
            raise ValueError(f"{tokens} tokens exceed the model's {fast.max_positions} positions.")
        size = min(fast.max_positions, math.ceil(tokens / GROW) * GROW)
        shape = (fast.n_layers, fast.n_kv, size, fast.head_dim)
        k = torch.empty(shape, dtype=fast.cache_dtype, device=fast.device)
        v = torch.empty(shape, dtype=fast.cache_dtype, device=fast.device)
        resid = torch.empty(size, fast.d_model, dtype=fast.dtype, device=fast.device)
        keep = self.low
        if keep:
            k[:, :, :keep] = self.k[:, :, :keep]
            v[:, :, :keep] = self.v[:, :, :keep]
            resid[:keep] = self.resid[:keep]
        self.k, self.v, self.resid, self.capacity = k, v, resid, size

    def sync(self, ids: list[int]) -> int:
        """Make the cache describe `ids`: everything after the first token that differs is dropped. Returns how many
        tokens were kept."""
        kept = 0
        limit = min(len(ids), len(self.ids))
        while kept < limit and ids[kept] == self.ids[kept]:
            kept += 1
        self.ids = list(ids)
        self.low = min(self.low, kept)
        self.high = min(self.high, kept)
        self.coded = min(self.coded, kept)
        return kept

    def push(self, token: int) -> None:
        self.ids.append(token)


class SparseCodes:
    """SAE codes of a token sequence kept as each row's nonzero entries, `width` columns wide when dense.

    A TopK SAE's code has k nonzeros of thousands (64 of 4,608 for the default SAE): dense float32 rows took 18 KB a
    token, as much as the model's keys and values, so fewer documents fitted the cache budget and a switch between
    them read a whole document again. Kept here: `index` and `value` `[rows, k]`, k the most nonzeros a row has had;
    a row with fewer pads with value 0 at column 0, which adds nothing when the rows are made dense again.
    """

    def __init__(self, width: int) -> None:
        self.width = width
        self.index = torch.zeros(0, 0, dtype=torch.int32)
        self.value = torch.zeros(0, 0)

    @property
    def nbytes(self) -> int:
        return self.index.numel() * self.index.element_size() + self.value.numel() * self.value.element_size()

    def put(self, start: int, rows: torch.Tensor) -> None:
        """Keep `rows` `[m, width]` as rows `start` to `start + m` (rows after them are dropped)."""
        m = rows.shape[0]
        k = max(int((rows != 0).sum(dim=1).max()) if m else 0, self.value.shape[1])
        need, have = start + m, self.value.shape[0]
        if need > have or k > self.value.shape[1]:
            size = max(need, have * 5 // 4) if need > have else have
            index = torch.zeros(size, k, dtype=torch.int32)
            value = torch.zeros(size, k)
            kept, width = min(start, have), self.value.shape[1]
            index[:kept, :width] = self.index[:kept]
            value[:kept, :width] = self.value[:kept]
            self.index, self.value = index, value
        if not m or not k:
            self.value[start:need] = 0
            return
        top = rows.abs().topk(k, dim=1).indices
        self.index[start:need] = top.to(torch.int32)
        self.value[start:need] = rows.gather(1, top)

    def dense(self, n: int) -> torch.Tensor:
        """The first `n` rows as `[n, width]` float32."""
        out = torch.zeros(n, self.width)
        if n and self.value.shape[1]:
            out.scatter_add_(1, self.index[:n].long(), self.value[:n])
        return out


class SessionCaches:
    """Prefix caches by session (a document), least recently used dropped beyond `budget_bytes`."""

    def __init__(self, fast: FastModel, budget_bytes: int) -> None:
        self.fast = fast
        self.budget = budget_bytes
        self._caches: OrderedDict[str, PrefixCache] = OrderedDict()

    def get(self, session: str | None) -> PrefixCache:
        """The session's cache (a fresh, unkept one without a session)."""
        if session is None:
            return PrefixCache(self.fast)
        cache = self._caches.pop(session, None) or PrefixCache(self.fast)
        self._caches[session] = cache
        return cache

    def trim(self) -> None:
        """Drop least recently used caches until the rest fit the budget (the most recent one always stays)."""
        while len(self._caches) > 1 and self.nbytes > self.budget:
            self._caches.popitem(last=False)

    def read(self, session: str | None, ids: list[int], limit: int | None = None) -> tuple[PrefixCache, bool] | None:
        """The session's cache made to describe `ids`, with the lower blocks read for (up to `limit` more of) them,
        and whether all are read; None when `ids` exceed the model's positions."""
        if len(ids) > self.fast.max_positions:
            return None
        with torch.inference_mode():
            cache = self.get(session)
            cache.sync(ids)
            done = self.fast.lower(cache, limit)
        self.trim()
        return cache, done

    def drop(self, session: str) -> None:
        self._caches.pop(session, None)

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self._caches.values())

    def __len__(self) -> int:
        return len(self._caches)


def steering_key(vector: torch.Tensor | None, extra: tuple[Any, ...] = ()) -> Hashable:
    """The identity of a steering applied at the hook point: None for none at all."""
    if (vector is None or not bool(vector.any())) and not extra:
        return None
    return vector_digest(vector) if vector is not None else "", extra


def vector_steer(vector: torch.Tensor | None, d_model: int, device: torch.device) -> Steer:
    """`h + vector` in float32, back in the residual's dtype (the transformers path's `SteeringHook` rounds the same
    way); a zero vector when there is none, so steered and unsteered steps run the same operations."""
    v = torch.zeros(d_model, device=device) if vector is None else vector.detach().float().to(device)

    def steer(h: torch.Tensor) -> torch.Tensor:
        return (h.float() + v).to(h.dtype)

    return steer


def decode(fast: FastModel, cache: PrefixCache, ids: list[int], prompt: tuple[Steer, Hashable],
           generated: tuple[Steer, Hashable]) -> Generator[torch.Tensor, int, None]:
    """Logits after `ids`, then after each token sent in (`send(token)`): the cache reads only what it has not
    seen. Generated tokens stay in the cache afterwards; their upper blocks only when the generated positions were
    steered as the prompt was (`prompt`, `generated`: the steer of each phase and its key)."""
    cache.sync(ids)
    steer, key = prompt
    try:
        token = yield fast.upper(cache, steer, key)
        steer = generated[0]
        while True:
            cache.push(token)
            token = yield fast.upper(cache, steer, None, keep=True)
    finally:
        if generated[1] != key:
            cache.high = min(cache.high, len(ids))
