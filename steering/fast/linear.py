"""The fast path's linear layers: the model's own weights (fused where several layers read one input), int8 copies
for decode steps on a CPU, and row counts padded to a few buckets in reduced precision.

Quantisation is a weight transform applied once when the fast model is built (gpt-fast's `quantize.py`); a
`Linear` then picks per call which weights a pass of its size computes fastest with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

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
class Linear:
    """`x @ weight.T + bias` over rows `[n, in]`, from the int8 copy for a few rows when there is one."""

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


def linear_maker(dtype: torch.dtype, device: torch.device, int8: bool) -> Callable[..., Linear]:
    """How the fast model makes its linears here: with int8 copies when asked and available, padded to row buckets
    in reduced precision on a CPU."""
    quantize = int8 and int8_available(dtype, device)
    bucket = device.type == "cpu" and dtype in (torch.bfloat16, torch.float16)

    def make(weight: torch.Tensor, bias: torch.Tensor | None = None) -> Linear:
        return Linear(weight, bias, quantize_int8(weight) if quantize else None, bucket=bucket)

    return make


def fuse(modules: list[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One weight (and bias, when the layers have them) for several linear layers reading the same input; the
    modules' weights become views into it, so no memory is doubled."""
    fused = torch.cat([m.weight.detach() for m in modules], dim=0).contiguous()
    row = 0
    for m in modules:
        n = m.weight.shape[0]
        m.weight = nn.Parameter(fused[row:row + n], requires_grad=False)
        row += n
    biases = [m.bias for m in modules]
    if all(b is None for b in biases):
        return fused, None
    bias = torch.cat([b.detach() if b is not None else torch.zeros(m.weight.shape[0], dtype=fused.dtype,
                                                                   device=fused.device)
                      for b, m in zip(biases, modules, strict=True)]).contiguous()
    return fused, bias
