"""The fast path's linear layers: the model's own weights (fused where several layers read one input), 4-bit or int8
copies for decode steps on a CPU, and row counts padded to a few buckets in reduced precision.

Quantisation is a weight transform applied once when the fast model is built (gpt-fast's `quantize.py`); a
`Linear` then picks per call which weights a pass of its size computes fastest with.
"""

from __future__ import annotations

import warnings
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
Int4 = tuple[torch.Tensor, torch.Tensor]
"""A weight as 4-bit groups packed for `_weight_int4pack_mm_for_cpu`, and each group's scale and mid-point value
`[in / INT4_GROUP, out, 2]`."""
INT4_GROUP = 32
"""Input columns per 4-bit group: a GGUF's Q4_0 / Q4_1 block."""
INT4_EXACT = 0.01
"""A weight is kept in 4 bits only when they hold it to this relative error: a weight that was stored in 4-bit blocks
(the default model's blocks, from its Q4_1 GGUF, round-trip within 0.14 %, bfloat16's own rounding) loses nothing,
while a weight trained in full precision (9 % error in 4 bits) keeps its int8 copy."""


def quantize_int8(weight: torch.Tensor) -> Int8:
    """Symmetric per-output-channel int8 of a weight `[out, in]` (scales in the weight's dtype)."""
    w = weight.detach().float()
    scales = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)
    q = (w / scales[:, None]).round().clamp(-127, 127).to(torch.int8).contiguous()
    return q, scales.to(weight.dtype)


def quantize_int4(weight: torch.Tensor) -> Int4 | None:
    """The weight `[out, in]` in 4-bit groups of `INT4_GROUP` input columns (each with a scale and an offset, as
    Q4_1 stores them), or None when that is not exact (`INT4_EXACT`) or the shape does not fit the kernel."""
    out_f, in_f = weight.shape
    if in_f % INT4_GROUP or out_f % 16:
        return None
    w = weight.detach().float().reshape(out_f, in_f // INT4_GROUP, INT4_GROUP)
    lo, hi = w.amin(-1), w.amax(-1)
    scale = ((hi - lo) / 15).clamp(min=1e-12)
    q = ((w - lo[..., None]) / scale[..., None]).round().clamp(0, 15)
    if float((q * scale[..., None] + lo[..., None] - w).norm()) > INT4_EXACT * float(w.norm()):
        return None
    mid = lo + 8 * scale  # the kernel computes (q - 8) * scale + mid
    scales = torch.stack([scale, mid], dim=-1).transpose(0, 1).contiguous().to(weight.dtype)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.reshape(out_f, in_f).to(torch.int32), 1)
    return packed, scales


def int4_available(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether decode steps can use 4-bit weight-only matmuls here (bfloat16 on a CPU whose torch has the kernel)."""
    return dtype == torch.bfloat16 and device.type == "cpu" and \
        hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu") and \
        hasattr(torch.ops.aten, "_convert_weight_to_int4pack_for_cpu")


def pack_dynamic(weight: torch.Tensor) -> object | None:
    """The weight `[out, in]` as per-output-channel int8 packed for the quantized engine's dynamic linear (FBGEMM
    on x86: each call quantizes its input rows to 8 bits and multiplies int8 by int8, as llama.cpp's Q8_0 does), or
    None where this torch has no such engine. On the 2-core test CPU the default model's unembedding (49,152 x 576)
    takes 0.65 ms so against 2.0 ms through `_weight_int8pack_mm`, which widens every weight to bfloat16 first.
    torch marks quantized tensors deprecated (its warning is kept from the writer's log): where a later torch has
    no such engine, the weight decodes through `_weight_int8pack_mm` as before."""
    if torch.backends.quantized.engine not in ("x86", "fbgemm"):
        return None
    w = weight.detach().float()
    scales = (w.abs().amax(dim=1) / 127).clamp(min=1e-12).double()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*deprecated")
            q = torch.quantize_per_channel(w, scales, torch.zeros(w.shape[0], dtype=torch.long), 0, torch.qint8)
        return torch.ops.quantized.linear_prepack(q, None)
    except (RuntimeError, AttributeError, NotImplementedError):  # no such kernel in this torch
        return None


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


def whole_rows(n: int) -> int:
    """The most rows, at most `n` (>= 1), that `row_bucket` pads to themselves: a pass of that many wastes nothing
    (48 rows run as 64, at a third more cost per token)."""
    if n <= ROW_BUCKET:
        return 1 << (n.bit_length() - 1)
    return n // ROW_BUCKET * ROW_BUCKET


@dataclass
class Linear:
    """`x @ weight.T + bias` over rows `[n, in]`, from the 4-bit or int8 copy for a few rows when there is one."""

    weight: torch.Tensor
    bias: torch.Tensor | None = None
    int8: Int8 | None = None
    int4: Int4 | None = None
    dynamic: object | None = None
    """The int8 weight packed for the dynamic quantized linear (`pack_dynamic`): used for a few rows in place of
    `int8` where there is one."""
    bucket: bool = False
    """Pad the rows to `row_bucket` (reduced precision on a CPU)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if self.int4 is not None and n <= INT8_ROWS:
            out = torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.int4[0], INT4_GROUP, self.int4[1])
            return out if self.bias is None else out + self.bias
        if self.dynamic is not None and n <= INT8_ROWS:
            out = torch.ops.quantized.linear_dynamic(x.float(), self.dynamic).to(x.dtype)
            return out if self.bias is None else out + self.bias
        if self.int8 is not None and n <= INT8_ROWS:
            out = torch._weight_int8pack_mm(x, *self.int8)
            return out if self.bias is None else out + self.bias
        rows = row_bucket(n) if self.bucket else n
        if rows != n:
            padded = x.new_zeros(rows, x.shape[1])
            padded[:n] = x
            return F.linear(padded, self.weight, self.bias)[:n]
        return F.linear(x, self.weight, self.bias)


def linear_maker(dtype: torch.dtype, device: torch.device, int8: bool, int4: bool = True) -> Callable[..., Linear]:
    """How the fast model makes its linears here: with decode copies when asked and available (4-bit where that is
    exact, `quantize_int4`, else int8), padded to row buckets in reduced precision on a CPU. `dynamic` (the
    unembedding): an int8 copy multiplies with its input quantized too (`pack_dynamic`). Only there: quantizing the
    blocks' inputs as well cost 0.02 nats of held-out CE on the default model (int8 weights alone: 0.002), the
    unembedding's none measurable."""
    quantize = int8 and int8_available(dtype, device)
    four = quantize and int4 and int4_available(dtype, device)
    bucket = device.type == "cpu" and dtype in (torch.bfloat16, torch.float16)

    def make(weight: torch.Tensor, bias: torch.Tensor | None = None, dynamic: bool = False) -> Linear:
        q4 = quantize_int4(weight) if four else None
        packed = pack_dynamic(weight) if dynamic and quantize and q4 is None else None
        q8 = quantize_int8(weight) if quantize and q4 is None and packed is None else None
        return Linear(weight, bias, q8, q4, packed, bucket=bucket)

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
