"""The fast path's model: a lean forward pass of the supported families (`family.FAMILIES`) over their own weights.

gpt-fast's recipe without the compiler: the attention's query/key/value projections and the MLP's gate/up
projections are fused into one matrix each (`linear.fuse`: the model's own modules become views into them, so no
memory is doubled), keys and values live in preallocated caches written in place, and a block is a short, fixed list
of tensor operations instead of transformers' module tree with its dynamic cache. On the default model and two CPU
cores this decodes at about three times the speed of `transformers.generate` (`benchmarks/bench_decode.py`).

One block function (`FastModel.block`) serves every pass: reading a document's prompt in chunks, a decode step, and
a step of many batched rows (`batched`). What differs between those is where keys and values are kept and which
positions a query sees: a `View` of the cache says it (`PrefixView` for one sequence, `batched.BatchView` for rows).

The model is cut in two at the steering hook: the *lower* blocks (before the hook point) never see steering, the
*upper* ones do. A `cache.PrefixCache` keeps, per token, the lower blocks' keys and values, the residual at the
hook point (what the SAE reads: annotation reuses it) and the upper blocks' keys and values, the latter valid only
for the steering they were computed under. After an edit only the tokens from the first changed one on are computed
again, and a change of steering recomputes only the upper blocks, from the kept residuals. Steering is a
`runtime.interventions.Plan` applied to the residual at the hook point, as data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from steering.runtime.interventions import Plan, compile_plan
from steering.sae.autoencoder import HookPoint

from .cache import GROW, Partial, PrefixCache, matching, moved_run
from .family import ACTIVATIONS, activation_name, family_of, window
from .linear import Linear, fuse, int8_available, linear_maker
from .scripted import ScriptedSteps

SDPA_SPAN = 1536
"""A decode step's attention over a float32 cache of at most this many positions runs through the fused kernel: on
the 2-core CPU, 30 layers of the default model's shape take 1.14 against 1.71 ms at 512 positions, 2.34 against 3.06
at 1,024, 4.14 against 4.34 at 1,536, but 7.97 against 5.89 at 2,048 (the two matmuls win there)."""
CHUNK = 256
"""The fewest tokens a forward pass over a long prompt reads at once (`FastModel.pass_rows`) ..."""
PASS_ROWS = 2048
"""... and the most ..."""
PASS_BYTES = 64 << 20
"""... as many as keep a pass's widest intermediates (the MLP's, and the attention's mask or soft-capped scores)
within this many bytes. Fewer, longer passes read faster: the default model's lower blocks over 2,048 tokens cold
took 0.93 s in one pass against 1.10 s in passes of 256 on a 2-core CPU (each later pass converted the cached
keys before it to the queries' dtype and masked them); the fused attention keeps its memory linear in the rows."""
BLOCK_ROWS = 256
"""Queries per block of `attend_blocks` (128: 5 % slower, 512: half again; a pass of at least half as many tokens
reads through it, a shorter one through the fused kernel) ..."""
BLOCK_BYTES = 32 << 20
"""... or half as many, and so on, to keep a block's scores and probabilities within this many bytes ..."""
SPAN_BUCKET = 256
"""... over keys padded to a multiple of this many positions."""
SPLICE_REACH = 128
"""A continuation splices over an edit of at most this many tokens (`FastModel.splice`) ..."""
SPLICE_MIN = 32
"""... when at least this many tokens after it are kept ..."""
SPLICE_LIMIT = 8
"""... and at most this many edits were spliced over since its cache was exact (else the stale tokens are read again:
held-out CE of a continuation after 8 edits undone one by one, the hard case, is 0.01-0.02 nats above an exact
read, `benchmarks/bench_splice.py`)."""


@dataclass
class Layer:
    qkv: Linear
    o: Linear
    gate_up: Linear
    down: Linear
    norm1: torch.Tensor
    norm2: torch.Tensor
    norm1_bias: torch.Tensor | None = None
    """LayerNorm biases (GPT-2); None: RMSNorm."""
    norm2_bias: torch.Tensor | None = None
    post_attention: torch.Tensor | None = None
    """Gemma 2's sandwich norms (`family.Family.sandwich_norms`): after attention, and after the MLP."""
    post_mlp: torch.Tensor | None = None


class View(Protocol):
    """Where one pass's keys and values go and what its queries see: `rows` sequences of `tokens` new tokens each,
    the residual `[rows * tokens, d]`."""

    rows: int
    tokens: int
    cos: torch.Tensor
    """Rotary cosines `[rows, 1, tokens, head_dim]` of the new tokens' positions (sines likewise)."""
    sin: torch.Tensor
    visible: torch.Tensor | None
    """`[rows, tokens, span]`: which cached positions each new token attends to; None: all of them (or, `causal`,
    those up to its own)."""
    causal: bool
    """The new tokens are the last of the span, each seeing the positions up to its own: causal attention after
    whatever the cache holds before them."""

    @property
    def single(self) -> tuple[torch.Tensor, torch.Tensor, int] | None:
        """For one row's one new token that sees every position before it (a decode step): every block's keys and
        values `[layers, kv_heads, capacity, head_dim]` and the token's position (`scripted.ScriptedSteps`); else
        None."""
        ...

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep the new keys and values `[rows, kv_heads, tokens, head_dim]` of block `layer`; every key and value
        the new tokens attend to, `[rows, kv_heads, span, head_dim]`."""
        ...


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding of queries and keys `[..., head_dim]` (both at once: three operations a block, not
    fourteen). `sin` is signed (`FastModel.rope`): its first half negated, so that rotating
    half the dimensions is a roll, `(-x2, x1) * sin == roll(x) * signed`."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), sin)


def attend_capped(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, view: View, scale: float,
                  cap: float) -> torch.Tensor:
    """`attend` with the scores soft-capped before the softmax (`cap * tanh(s / cap)`, Gemma 2), in float32: no
    fused kernel applies a cap."""
    rows, heads, tokens, hd = q.shape
    kv, span = keys.shape[1], keys.shape[2]
    group = heads // kv
    scores = torch.matmul(q.float().reshape(rows, kv, group * tokens, hd), keys.float().transpose(2, 3)) * scale
    scores = torch.tanh(scores / cap) * cap
    visible = view.visible
    if visible is None and view.causal and tokens > 1:
        visible = torch.ones(tokens, span, dtype=torch.bool, device=q.device).tril(span - tokens)[None]
    if visible is not None:
        mask = visible[:, None, None].expand(rows, 1, group, tokens, span).reshape(rows, 1, group * tokens, span)
        scores = scores.masked_fill(~mask, float("-inf"))
    out = torch.matmul(torch.softmax(scores, dim=-1), values.float())
    return out.reshape(rows, heads, tokens, hd).to(q.dtype)


def attend_blocks(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal grouped-query attention of one sequence's queries `[1, heads, tokens, hd]`, the last `tokens` of the
    span of `keys`, `values` `[1, kv, span, hd]`, as two matmuls and a softmax per block of queries, in the queries'
    dtype. On a CPU in bfloat16 this reads a long prompt's attention in two thirds of the fused kernel's time (the
    default model's 9 heads over 2,048 tokens: 27-31 against 41-45 ms a block on 2 cores), whose softmax and
    masking, not its matmuls, bound it. The scores are rounded to bfloat16 before the softmax, as transformers' own
    attention does in bfloat16; held-out CE over 16 windows of 2,048 tokens: 2.43109 against the fused kernel's
    2.43159 (float32: 2.43040), and the SAE's top 5 features per token agree with float32's as often (99.3 %).

    The matmuls run on a few shapes only (`BLOCK_ROWS`, `SPAN_BUCKET`): oneDNN keeps a compiled kernel for every
    shape it sees, and a span that grew by one token a call grew a server by 0.8 MB a call."""
    _, heads, tokens, hd = q.shape
    kv, span = keys.shape[1], keys.shape[2]
    group, start = heads // kv, span - tokens
    room = -(-span // SPAN_BUCKET) * SPAN_BUCKET
    step = BLOCK_ROWS
    while step > 16 and 4 * heads * step * room > BLOCK_BYTES:
        step //= 2
    padded = -(-tokens // step) * step
    k, v = q.new_zeros(2, kv, room, hd)  # the cache's keys and values in the queries' dtype, the rest hidden
    k[:, :span], v[:, :span] = keys[0], values[0]
    grouped = q.new_zeros(kv, group, padded, hd)  # a query head reads key head h // group, as SDPA's GQA
    grouped[:, :, :tokens] = (q[0] * scale).view(kv, group, tokens, hd)
    out = q.new_empty(kv, group, padded, hd)
    for first in range(0, tokens, step):
        seen = min(room, -(-(start + first + step) // SPAN_BUCKET) * SPAN_BUCKET)
        scores = torch.bmm(grouped[:, :, first:first + step].reshape(kv, group * step, hd),
                           k[:, :seen].transpose(1, 2)).view(kv, group, step, seen)
        # each query sees the keys up to its own position: the later ones of the block and the padding are hidden
        # (adding -inf takes a third of masked_fill_'s time)
        scores[..., start + first:] += torch.full((step, seen - start - first), float("-inf"), dtype=q.dtype,
                                                  device=q.device).triu(1)
        probs = torch.softmax(scores, dim=-1).view(kv, group * step, seen)
        out[:, :, first:first + step] = torch.bmm(probs, v[:, :seen]).view(kv, group, step, hd)
    return out[:, :, :tokens].reshape(1, heads, tokens, hd)


def attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, view: View, scale: float) -> torch.Tensor:
    """Grouped-query attention of queries `[rows, heads, tokens, hd]` over `keys`, `values` `[rows, kv, span, hd]`,
    in the queries' dtype. One query per row over a float32 cache of at most `SDPA_SPAN` positions that it sees
    whole runs through the fused kernel; one query otherwise as two small matmuls (faster over longer spans, and
    what a batched step needs: each row sees its own positions); many causal ones in bfloat16 on a CPU in blocks
    (`attend_blocks`); others through the fused kernel."""
    rows, heads, tokens, hd = q.shape
    kv = keys.shape[1]
    if tokens == 1 and view.visible is None and keys.shape[2] <= SDPA_SPAN and keys.dtype == torch.float32:
        out = F.scaled_dot_product_attention(q.to(keys.dtype), keys, values, scale=scale, enable_gqa=True)
        return out.to(q.dtype)
    if tokens == 1:
        scores = torch.matmul(q.reshape(rows, kv, -1, hd).to(keys.dtype), keys.transpose(2, 3)) * scale
        scores = scores.float()
        if view.visible is not None:
            scores = scores.masked_fill(~view.visible[:, None], float("-inf"))
        probs = torch.softmax(scores, dim=-1).to(values.dtype)
        return torch.matmul(probs, values).reshape(rows, heads, 1, hd).to(q.dtype)
    if view.causal and rows == 1 and tokens >= BLOCK_ROWS // 2 and q.device.type == "cpu" and \
            q.dtype == torch.bfloat16:  # (float16 matmuls on a CPU without AVX512-FP16 run a thousand times slower)
        return attend_blocks(q, keys, values, scale)
    keys, values = keys.to(q.dtype), values.to(q.dtype)
    span = keys.shape[2]
    if view.causal and span == tokens:
        return F.scaled_dot_product_attention(q, keys, values, is_causal=True, scale=scale, enable_gqa=True)
    visible = view.visible
    if view.causal:
        visible = torch.ones(tokens, span, dtype=torch.bool, device=q.device).tril(span - tokens)[None]
    mask = None if visible is None else visible[:, None]
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scale, enable_gqa=True)


class FastModel:
    """The fused weights of a supported model, split at `hook` (see the module docstring)."""

    def __init__(self, model: Any, hook: HookPoint, *, int8: bool = False, int4: bool = True) -> None:
        family = family_of(model, hook)
        if isinstance(family, str):
            raise ValueError(f"The fast path cannot run this model: {family}.")
        config = model.config
        self.family = family
        self.hook = hook
        self.split = hook.layer + 1 if hook.site == "resid_post" else hook.layer
        self.n_layers = config.num_hidden_layers
        self.n_heads = config.num_attention_heads
        self.n_kv = getattr(config, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.n_heads
        self.d_model = config.hidden_size
        self.eps = float(config.layer_norm_epsilon if family.gpt2 else config.rms_norm_eps)
        self.max_positions = int(getattr(config, "max_position_embeddings", 2048))
        if (size := window(config)) is not None:
            self.max_positions = min(self.max_positions, size)
        self.activation = ACTIVATIONS[activation_name(config)]
        self.attention_cap = float(config.attn_logit_softcapping or 0) if family.soft_caps else 0.0
        self.logit_cap = float(config.final_logit_softcapping or 0) if family.soft_caps else 0.0
        inner = model.transformer if family.gpt2 else model.model
        self.embed = (inner.wte if family.gpt2 else inner.embed_tokens).weight.detach()
        self.embed_scale = family.embedding_scale(config)
        self.rotary = None if family.gpt2 else inner.rotary_emb
        self.positions = inner.wpe.weight.detach() if family.gpt2 else None
        """GPT-2's learned position embeddings: views carry them as their `cos` rows, the first block adds them."""
        self.dtype = self.embed.dtype
        self.device = self.embed.device
        self.final_norm = self._norm_weight(inner.ln_f if family.gpt2 else inner.norm)
        self.final_norm_bias = inner.ln_f.bias.detach() if family.gpt2 else None
        self.cache_dtype = torch.float32 if self.device.type == "cpu" else self.dtype
        """Keys and values are kept in float32 on a CPU: a decode step's attention reads them three times faster
        than bfloat16 there (and they are exact copies of what the blocks computed)."""
        make = linear_maker(self.dtype, self.device, int8, int4)
        self.int8 = int8 and int8_available(self.dtype, self.device)
        """Whether decode steps use int8 copies of the weights (`linear.int8_available`)."""
        self.unembed = make(model.get_output_embeddings().weight.detach(), dynamic=True)
        build = _gpt2_layer if family.gpt2 else _llama_layer
        self.layers: list[Layer] = [build(block, make, self._norm_weight, family.sandwich_norms)
                                    for block in (inner.h if family.gpt2 else inner.layers)]
        linears = [self.unembed, *(lin for la in self.layers for lin in (la.qkv, la.o, la.gate_up, la.down))]
        self.int4 = sum(lin.int4 is not None for lin in linears)
        """How many decode weights are 4-bit (`linear.quantize_int4`: those the model stored that way; the others
        decode from int8)."""
        width = max(la.gate_up.weight.shape[0] for la in self.layers)
        self.row_bytes = 2 * width * self.embed.element_size()
        """Memory a pass needs per token for the MLP's intermediates (`pass_rows`)."""
        query_scalar = getattr(config, "query_pre_attn_scalar", None) if family.soft_caps else None
        self.scale = float(query_scalar or self.head_dim) ** -0.5
        self._cos = self._sin = torch.empty(0)
        self.scripted = ScriptedSteps.of(self)
        """A decode step's blocks as one TorchScript call, where it covers the model (`scripted`)."""
        self.unsteered = compile_plan([], None, self.d_model)
        """What the upper blocks apply without steering (a zero vector: steered and unsteered passes run the same
        operations)."""

    def _norm_weight(self, module: Any) -> torch.Tensor:
        """A norm's weight as `norm` takes it: LayerNorm's as it is; RMSNorm's (plus the family's offset) followed by
        as many zeros."""
        weight = module.weight.detach()
        if self.family.gpt2:
            return weight
        weight = weight + self.family.norm_offset if self.family.norm_offset else weight
        return torch.cat((weight, torch.zeros_like(weight)))

    # ------------------------------------------------------------------------------------------- pieces
    def bytes_per_token(self) -> int:
        """Memory a cache holds per token: keys and values of every block and the residual at the split."""
        kv = torch.tensor([], dtype=self.cache_dtype).element_size()
        resid = torch.tensor([], dtype=self.dtype).element_size()
        return kv * 2 * self.n_layers * self.n_kv * self.head_dim + resid * self.d_model

    def pass_rows(self, start: int, end: int) -> int:
        """How many tokens one pass over the tokens `start .. end` of a prompt reads (`PASS_BYTES`): the MLP's
        intermediates, plus, after the first pass, a mask over the keys (a boolean and its float copy), or with
        soft-capped attention its float32 scores (no fused kernel)."""
        span = 4 * self.n_heads * end if self.attention_cap else 5 * end if start else 0
        return max(CHUNK, min(PASS_ROWS, PASS_BYTES // (self.row_bytes + span)))

    def rope(self, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotary cosines and signed sines (`rotate`) `[positions, head_dim]` of at least the first `end` positions,
        in the model's dtype, as transformers rotates (rotated in float32, a batched row's keys differed from the
        same text's alone in their last bits, and greedy tokens followed); for learned positions (GPT-2) their
        embeddings `[positions, d_model]`, twice."""
        if self.positions is not None:
            return self.positions, self.positions
        if self._cos.shape[0] < end:
            size = min(self.max_positions, max(end, 2 * self._cos.shape[0], GROW))
            positions = torch.arange(size, device=self.device)[None]
            probe = torch.zeros(1, dtype=self.dtype, device=self.device)
            assert self.rotary is not None
            cos, sin = (t[0] for t in self.rotary(probe, positions))
            half = self.head_dim // 2
            self._cos, self._sin = cos, torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)
        return self._cos, self._sin

    def norm(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """LayerNorm where there is a `bias`; else RMSNorm through the fused LayerNorm kernel (three operations
        instead of the eight of `x * rsqrt(mean(x²) + eps) * w`, which torch runs one by one on a CPU): `[x, -x]` has
        mean 0 and variance mean(x²), so its LayerNorm's first half, by the weight `[w, 0]` (`_norm_weight`), is
        RMSNorm(x) * w, computed in float32 and rounded once. Contiguous (a copy only for several rows): the 4-bit
        matmul takes nothing else."""
        if bias is not None:
            return F.layer_norm(x, (x.shape[-1],), weight, bias, self.eps)
        d = x.shape[-1]
        return F.layer_norm(torch.cat((x, -x), dim=-1), (2 * d,), weight, None, self.eps)[..., :d].contiguous()

    def embedding(self, ids: torch.Tensor) -> torch.Tensor:
        x = F.embedding(ids, self.embed)
        return x * self.embed_scale if self.embed_scale != 1.0 else x

    def block(self, i: int, x: torch.Tensor, view: View) -> torch.Tensor:
        """Block `i` over the residual `x` `[rows * tokens, d]` of the new tokens `view` describes."""
        layer = self.layers[i]
        rows, tokens, hd = view.rows, view.tokens, self.head_dim
        if i == 0 and self.positions is not None:
            x = x + view.cos.reshape(rows * tokens, -1).to(x.dtype)
        qkv = layer.qkv(self.norm(x, layer.norm1, layer.norm1_bias))
        nq, nk = self.n_heads * hd, self.n_kv * hd
        qk = qkv[:, :nq + nk].view(rows, tokens, self.n_heads + self.n_kv, hd).transpose(1, 2)
        if self.positions is None:
            qk = rotate(qk, view.cos, view.sin)
        q, k = qk[:, :self.n_heads], qk[:, self.n_heads:]
        v = qkv[:, nq + nk:].view(rows, tokens, self.n_kv, hd).transpose(1, 2)
        keys, values = view.store(i, k, v)
        if self.attention_cap:
            attended = attend_capped(q, keys, values, view, self.scale, self.attention_cap)
        else:
            attended = attend(q, keys, values, view, self.scale)
        out = layer.o(attended.transpose(1, 2).reshape(rows * tokens, nq).to(x.dtype))
        x = x + (out if layer.post_attention is None else self.norm(out, layer.post_attention))
        if self.family.gpt2:
            out = layer.down(self.activation(layer.gate_up(self.norm(x, layer.norm2, layer.norm2_bias))))
            return x + out
        gate, up = layer.gate_up(self.norm(x, layer.norm2)).chunk(2, dim=-1)
        out = layer.down(self.activation(gate) * up)
        return x + (out if layer.post_mlp is None else self.norm(out, layer.post_mlp))

    def blocks(self, x: torch.Tensor, view: View, first: int, last: int) -> torch.Tensor:
        if self.scripted is not None and (single := view.single) is not None:  # a decode step
            keys, values, position = single
            return self.scripted(x, keys, values, view.cos, view.sin, position, first, last, SDPA_SPAN)
        for i in range(first, last):
            x = self.block(i, x, view)
        return x

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Float logits `[rows, vocab]` of the final residual rows `h`."""
        logits = self.unembed(self.norm(h, self.final_norm, self.final_norm_bias)).float()
        return torch.tanh(logits / self.logit_cap) * self.logit_cap if self.logit_cap else logits

    # ------------------------------------------------------------------------------------------- passes
    def lower(self, cache: PrefixCache, limit: int | None = None, *, pause: Callable[[], bool] | None = None,
              ) -> bool:
        """Compute the lower blocks for the tokens of `cache.ids` not yet read (at most `limit` of them, or the rest
        of a pass that paused), keeping their residuals; True when every token is read. With `pause`, a pass
        stops between two blocks once `pause()` is true (after one block at least), and the next call goes on
        from there (`PrefixCache.partial`): a background read of long passes, which costs a third of short ones
        per token, keeps more urgent work waiting for one block at most."""
        end = len(cache.ids) if limit is None else min(len(cache.ids), cache.low + limit)
        cache.reserve(end)
        ran = False
        while cache.low < end:
            start, partial, cache.partial = cache.low, cache.partial, None
            if partial is not None and partial.start == start:
                stop, first, x = partial.stop, partial.block, partial.x
            else:
                stop, first = min(end, start + self.pass_rows(start, end)), 0
                x = self.embedding(torch.tensor(cache.ids[start:stop], device=self.device))
            view = PrefixView(self, cache, start, stop)
            if pause is None:
                x = self.blocks(x, view, first, self.split)
            else:
                for i in range(first, self.split):
                    if ran and pause():
                        cache.partial = Partial(start, stop, i, x)
                        return False
                    x = self.blocks(x, view, i, i + 1)
                    cache.block_rows += stop - start
                    ran = True
            cache.resid[start:stop] = x
            if pause is None:
                cache.block_rows += (self.split - first) * (stop - start)
            cache.low = stop
        return cache.low == len(cache.ids)

    def read(self, cache: PrefixCache, limit: int) -> bool:
        """Compute every block for up to `limit` more tokens of `cache.ids` (the upper ones under `cache.plan`,
        unsteered in a cache that has none yet); True when all are read."""
        if cache.plan is None:
            cache.plan, cache.key, cache.high = self.unsteered, self.unsteered.key, 0
        plan = cache.plan
        self.lower(cache, limit)
        while cache.high < cache.low:
            start = cache.high
            stop = min(cache.low, start + self.pass_rows(start, cache.low))
            self.blocks(plan(cache.resid[start:stop]), PrefixView(self, cache, start, stop), self.split,
                        self.n_layers)
            cache.high = stop
        return cache.high == len(cache.ids)

    def upper(self, cache: PrefixCache, plan: Plan | None = None, *, keep: bool = False) -> torch.Tensor:
        """Logits `[vocab]` after the last token of `cache.ids`: the lower blocks for new tokens, then the upper blocks
        from the kept residuals, steered by `plan`, for every token they have not seen under it. `keep`: trust the
        upper blocks already computed whatever their steering (a generation's later steps)."""
        self.lower(cache)
        plan = plan or self.unsteered
        key = plan.key
        end = len(cache.ids)
        if not keep and cache.key != key:
            cache.high, cache.key = 0, key
        if not keep:
            cache.plan = plan
        cache.high = min(cache.high, end - 1)  # the last token is always run, for its logits
        h = cache.resid[:0]
        while cache.high < end:
            start = cache.high
            stop = min(end, start + self.pass_rows(start, end))
            h = self.blocks(plan(cache.resid[start:stop]), PrefixView(self, cache, start, stop), self.split,
                            self.n_layers)
            cache.high = stop
        return self.logits(h[-1:])[0]

    def follow(self, cache: PrefixCache, ids: list[int]) -> None:
        """Make `cache` describe `ids` for a continuation: over a short edit the tokens after it are kept
        (`splice`), up to `SPLICE_LIMIT` edits; after that, everything from the first stale token on is read
        again."""
        if cache.splices >= SPLICE_LIMIT or not self.splice(cache, ids):
            cache.sync(ids, exact=cache.splices >= SPLICE_LIMIT)

    def splice(self, cache: PrefixCache, ids: list[int]) -> bool:
        """Make `cache` describe `ids` by reading only the edits' own tokens: the keys and values of the tokens
        between and after them move to their new positions (keys rotated by the shift: relative positions are what
        rotary attention sees) instead of being computed again, as llama.cpp's cache reuse does. Approximate: the
        moved tokens did not see the edits (they are `stale`; an exact reader reads them again). Each edit at most
        `SPLICE_REACH` tokens long, each run of moved tokens at least `SPLICE_MIN`; False (nothing done) where
        there is no such run."""
        if not self.can_splice:
            return False
        read = cache.high
        old = cache.ids[:read]
        p = matching(old, 0, ids, 0)
        runs: list[tuple[int, int, int]] = []
        a = b = edit = p  # edit: where the edit being followed began in `ids`
        while read - a >= SPLICE_MIN and (run := moved_run(old, ids, a, b, SPLICE_REACH)) is not None and \
                run[1] - edit <= SPLICE_REACH:
            a, b = run[0] + run[2], run[1] + run[2]
            if run[2] >= SPLICE_MIN:
                runs.append(run)
                edit = b
            # else: too few tokens to move between two edits: they are read with them
        if not runs:
            return False
        if runs[0][0] == 0:  # the old first token stays where it was read: moved on, it would keep its first-token
            i, j, n = runs[0]  # keys and values (most heads' resting place) in the middle of the text
            runs[0] = (1, j + 1, n - 1)
        end = runs[-1][1] + runs[-1][2]
        plan = cache.plan or self.unsteered
        with torch.inference_mode():
            moved = {}  # every moved run's keys, values and residuals, taken before any is overwritten
            for i, j, n in runs:
                if i != j:
                    cos, sin = self.turn(j - i)
                    keys = rotate(cache.k[:, :, i:i + n].float(), cos, sin).to(cache.k.dtype)
                    moved[j] = (keys, cache.v[:, :, i:i + n].clone(), cache.resid[i:i + n].clone())
            cache.reserve(end)
            cache.low = cache.high = p  # until the splice is done: a failure part-way leaves an exact prefix
            cache.partial = None
            cache.coded = min(cache.coded, p)
            cache.ids = list(ids)
            edit = p
            for _i, j, n in runs:
                if j > edit:  # an edit's own tokens, read after everything before them
                    view = PrefixView(self, cache, edit, j)
                    x = self.blocks(self.embedding(torch.tensor(ids[edit:j], device=self.device)), view, 0,
                                    self.split)
                    cache.resid[edit:j] = x
                    self.blocks(plan(x), view, self.split, self.n_layers)
                if j in moved:
                    cache.k[:, :, j:j + n], cache.v[:, :, j:j + n], cache.resid[j:j + n] = moved[j]
                edit = j + n
        cache.low = cache.high = end
        first = runs[0][1]
        cache.stale = first if cache.stale is None else min(cache.stale, first)
        cache.splices += len(runs)
        return True

    @property
    def can_splice(self) -> bool:
        """Whether `splice` can move keys: rotary positions with a fixed frequency per dimension and no scaling."""
        return self.rotary is not None and getattr(self.rotary, "rope_type", "default") != "dynamic" and \
            getattr(self.rotary, "attention_scaling", 1.0) == 1.0

    def turn(self, delta: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Cosines and signed sines (`rotate`) `[head_dim]`, float32, that move a rotated key `delta` positions on."""
        assert self.rotary is not None
        angle = delta * self.rotary.inv_freq.to(self.device, torch.float32)
        cos, sin = angle.cos(), angle.sin()
        return torch.cat((cos, cos)), torch.cat((-sin, sin))

    def candidates(self, cache: PrefixCache, tokens: torch.Tensor) -> torch.Tensor:
        """The residuals at the hook point `[k, d]` of each of `tokens` `[k]` as the next token of `cache.ids` (whose
        lower blocks must be read): the lower blocks only, which steering never touches."""
        return self.blocks(self.embedding(tokens), CandidateView(self, cache, len(tokens)), 0, self.split)

    def take(self, cache: PrefixCache, tokens: torch.Tensor, index: int, residual: torch.Tensor) -> None:
        """Append candidate `index` of `tokens` to `cache.ids` with what `candidates` computed for it (its keys and
        values in the lower blocks, its residual): the next pass reads it in the upper blocks alone."""
        pos = len(cache.ids)
        assert cache.low == pos, "the candidates follow the whole sequence"
        if index:
            cache.k[:self.split, :, pos] = cache.k[:self.split, :, pos + index]
            cache.v[:self.split, :, pos] = cache.v[:self.split, :, pos + index]
        cache.resid[pos] = residual
        cache.push(int(tokens[index]))
        cache.low = pos + 1


def _llama_layer(block: Any, make: Callable[..., Linear], norm: Callable[[Any], torch.Tensor],
                 sandwich: bool) -> Layer:
    """A block of the Llama layout: q/k/v and gate/up fused; Gemma 2's sandwich norms where `sandwich`."""
    attn, mlp = block.self_attn, block.mlp
    qkv, bias = fuse([attn.q_proj, attn.k_proj, attn.v_proj])
    gate_up, _ = fuse([mlp.gate_proj, mlp.up_proj])
    return Layer(
        qkv=make(qkv, bias), o=make(attn.o_proj.weight.detach()), gate_up=make(gate_up),
        down=make(mlp.down_proj.weight.detach()), norm1=norm(block.input_layernorm),
        norm2=norm(block.pre_feedforward_layernorm if sandwich else block.post_attention_layernorm),
        post_attention=norm(block.post_attention_layernorm) if sandwich else None,
        post_mlp=norm(block.post_feedforward_layernorm) if sandwich else None)


def _gpt2_layer(block: Any, make: Callable[..., Linear], norm: Callable[[Any], torch.Tensor],
                sandwich: bool) -> Layer:
    """A GPT-2 block: its Conv1D weights, kept as (in, out), transposed once; LayerNorm weights and biases."""

    def conv(module: Any) -> Linear:
        return make(module.weight.detach().t().contiguous(), module.bias.detach())

    attn, mlp = block.attn, block.mlp
    return Layer(qkv=conv(attn.c_attn), o=conv(attn.c_proj), gate_up=conv(mlp.c_fc), down=conv(mlp.c_proj),
                 norm1=block.ln_1.weight.detach(), norm2=block.ln_2.weight.detach(),
                 norm1_bias=block.ln_1.bias.detach(), norm2_bias=block.ln_2.bias.detach())


class PrefixView:
    """The tokens `start .. stop` of one cached sequence (`View`)."""

    def __init__(self, fast: FastModel, cache: PrefixCache, start: int, stop: int) -> None:
        self.cache, self.start, self.stop = cache, start, stop
        self.rows, self.tokens = 1, stop - start
        cos, sin = fast.rope(stop)
        self.cos, self.sin = cos[None, None, start:stop], sin[None, None, start:stop]
        self.causal = True
        self.visible: torch.Tensor | None = None

    @property
    def single(self) -> tuple[torch.Tensor, torch.Tensor, int] | None:
        return (self.cache.k, self.cache.v, self.start) if self.tokens == 1 else None

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cache, start, stop = self.cache, self.start, self.stop
        cache.k[layer, :, start:stop] = k[0]
        cache.v[layer, :, start:stop] = v[0]
        return cache.k[layer, :, :stop][None], cache.v[layer, :, :stop][None]


class CandidateView:
    """Candidate next tokens of one cached sequence, all at its next position, each attending to the sequence and to
    itself alone (`View`): their keys and values go to the slots after the sequence, which the taken one then
    moves into (`FastModel.take`)."""

    def __init__(self, fast: FastModel, cache: PrefixCache, count: int) -> None:
        self.cache, self.pos = cache, len(cache.ids)
        self.rows, self.tokens, self.causal = 1, count, False
        cache.reserve(self.pos + count)
        cos, sin = fast.rope(self.pos + 1)
        self.cos = cos[self.pos:self.pos + 1].expand(count, -1)[None, None]
        self.sin = sin[self.pos:self.pos + 1].expand(count, -1)[None, None]
        span = torch.arange(self.pos + count, device=fast.device)
        own = self.pos + torch.arange(count, device=fast.device)
        self.visible: torch.Tensor | None = ((span[None] < self.pos) | (span[None] == own[:, None]))[None]
        self.single: tuple[torch.Tensor, torch.Tensor, int] | None = None

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cache, pos, end = self.cache, self.pos, self.pos + self.tokens
        cache.k[layer, :, pos:end] = k[0]
        cache.v[layer, :, pos:end] = v[0]
        return cache.k[layer, :, :end][None], cache.v[layer, :, :end][None]
