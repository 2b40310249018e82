"""A decode step's blocks as one TorchScript call, on a CPU.

A decode step of the default model runs some 40 tensor operations a block, 1,200 a token, and on a CPU each costs
Python 2-4 µs around a kernel of a few: the step's operations took a third of its time. TorchScript runs the same
operations, in the same order, from C++ (`_Steps`); its fuser does not fuse on a CPU, so the results are the eager
block's to the last bit (tested), and a token takes 12-20 % less time on 2 cores (9.4-9.8 against 11.5-12.6 ms at
512 tokens of context). A function given the weights each call spent 100 µs converting them: a scripted module
keeps them.

It covers the usual step: one row, one new token that sees every position before it (`model.View.single`), in the
Llama-like families (RMSNorm, rotary positions, gated MLP, no soft caps or extra norms) with their linears in 4 bits,
int8 or the model's own weights; anything else runs block by block as before (`FastModel.blocks`).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F

from .family import ACTIVATIONS
from .linear import INT4_GROUP, Linear

FOUR, EIGHT, FULL = 4, 8, 16
"""How a linear multiplies a decode step's row: its 4-bit copy (in groups of `INT4_GROUP`), its int8 copy, the
model's weights (literals below: TorchScript reads no module constants)."""


def _linear(x: torch.Tensor, w: list[torch.Tensor], kind: int) -> torch.Tensor:
    """`linear.Linear` for one row: `w` is the weight (packed or not), its scales and its bias (empty: none)."""
    if kind == 4:
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(x, w[0], 32, w[1])
    elif kind == 8:
        out = torch._weight_int8pack_mm(x, w[0], w[1])
    elif w[2].numel() > 0:
        return F.linear(x, w[0], w[2])
    else:
        return F.linear(x, w[0])
    return out + w[2] if w[2].numel() > 0 else out


def _norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """`FastModel.norm` without a bias: RMSNorm through the fused LayerNorm kernel."""
    d = x.shape[-1]
    return F.layer_norm(torch.cat((x, -x), dim=-1), [2 * d], weight, None, eps)[..., :d].contiguous()


class _Steps(torch.nn.Module):
    """Blocks of a decode step (`forward`), the weights kept as attributes."""

    def __init__(self, norms: list[list[torch.Tensor]], linears: list[list[list[torch.Tensor]]],
                 kinds: list[list[int]], shape: list[int], eps: float, scale: float, gelu: bool) -> None:
        super().__init__()
        self.norms = norms
        self.linears = linears
        self.kinds = kinds
        self.heads, self.kv, self.hd = shape[0], shape[1], shape[2]
        self.eps, self.scale, self.gelu = eps, scale, gelu

    def forward(self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, cos: torch.Tensor,
                sin: torch.Tensor, position: int, first: int, last: int, sdpa_span: int) -> torch.Tensor:
        """Blocks `first .. last` over the residual row `x` `[1, d]` at `position`: `FastModel.block` and
        `model.attend` as they run there, their operations in the same order. `keys`, `values`: every block's
        cache `[layers, kv, capacity, hd]`."""
        heads, kv, hd = self.heads, self.kv, self.hd
        nq, nk = heads * hd, kv * hd
        span = position + 1
        for i in range(first, last):
            linears, kinds = self.linears[i], self.kinds[i]
            qkv = _linear(_norm(x, self.norms[i][0], self.eps), linears[0], kinds[0])
            qk = qkv[:, :nq + nk].view(1, 1, heads + kv, hd).transpose(1, 2)
            qk = torch.addcmul(qk * cos, qk.roll(hd // 2, dims=-1), sin)
            q, k = qk[:, :heads], qk[:, heads:]
            v = qkv[:, nq + nk:].view(1, 1, kv, hd).transpose(1, 2)
            keys[i, :, position:span] = k[0]
            values[i, :, position:span] = v[0]
            seen_k, seen_v = keys[i, :, :span][None], values[i, :, :span][None]
            if span <= sdpa_span:
                attended = F.scaled_dot_product_attention(q.to(seen_k.dtype), seen_k, seen_v, scale=self.scale,
                                                          enable_gqa=True).to(q.dtype)
            else:
                scores = torch.matmul(q.reshape(1, kv, -1, hd).to(seen_k.dtype), seen_k.transpose(2, 3)) * self.scale
                probs = torch.softmax(scores.float(), dim=-1).to(seen_v.dtype)
                attended = torch.matmul(probs, seen_v).reshape(1, heads, 1, hd).to(q.dtype)
            x = x + _linear(attended.transpose(1, 2).reshape(1, nq).to(x.dtype), linears[1], kinds[1])
            gate, up = _linear(_norm(x, self.norms[i][1], self.eps), linears[2], kinds[2]).chunk(2, dim=-1)
            hidden = F.gelu(gate, approximate="tanh") if self.gelu else F.silu(gate)
            x = x + _linear(hidden * up, linears[3], kinds[3])
        return x


def _weights(linear: Linear) -> tuple[int, list[torch.Tensor]]:
    """How a linear multiplies one row (`Linear.__call__` for a decode step) and the tensors it needs."""
    bias = linear.bias if linear.bias is not None else torch.empty(0, dtype=linear.weight.dtype)
    if linear.int4 is not None:
        return FOUR, [linear.int4[0], linear.int4[1], bias]
    if linear.int8 is not None:
        return EIGHT, [linear.int8[0], linear.int8[1], bias]
    return FULL, [linear.weight, linear.weight, bias]


class ScriptedSteps:
    """The decode step's blocks of `fast` as one TorchScript call (`__call__`); `ScriptedSteps.of(fast)` is None
    where the model or the device is not covered (the module docstring)."""

    def __init__(self, run: torch.jit.ScriptModule) -> None:
        self.run = run

    @staticmethod
    def of(fast: Any) -> ScriptedSteps | None:
        """`fast`: a `model.FastModel` (which holds the result: model imports this module, not the reverse)."""
        family = fast.family
        if INT4_GROUP != 32 or fast.device.type != "cpu" or family.gpt2 or family.sandwich_norms \
                or fast.attention_cap or fast.positions is not None or fast.cache_dtype != torch.float32:
            return None
        linears = [(layer.qkv, layer.o, layer.gate_up, layer.down) for layer in fast.layers]
        if any(layer.norm1_bias is not None or layer.norm2_bias is not None or layer.post_attention is not None
               or layer.post_mlp is not None for layer in fast.layers) \
                or any(lin.dynamic is not None for group in linears for lin in group):
            return None
        if fast.activation not in (ACTIVATIONS["silu"], ACTIVATIONS["gelu_pytorch_tanh"], ACTIVATIONS["gelu_new"]):
            return None
        weights = [[_weights(lin) for lin in group] for group in linears]
        steps = _Steps([[layer.norm1, layer.norm2] for layer in fast.layers],
                       [[tensors for _, tensors in layer] for layer in weights],
                       [[kind for kind, _ in layer] for layer in weights],
                       [fast.n_heads, fast.n_kv, fast.head_dim], fast.eps, fast.scale,
                       fast.activation is not ACTIVATIONS["silu"])
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TorchScript's deprecation notice is not the writer's concern
                return ScriptedSteps(torch.jit.script(steps))
        except Exception:  # a torch without TorchScript, or one that cannot compile this: block by block
            return None

    def __call__(self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, cos: torch.Tensor,
                 sin: torch.Tensor, position: int, first: int, last: int, sdpa_span: int) -> torch.Tensor:
        return self.run(x, keys, values, cos, sin, position, first, last, sdpa_span)
