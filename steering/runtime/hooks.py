"""Forward hooks on the residual stream, always removed on the way out (context managers with `finally`).

`resid_pre L` is the input of block L (a forward pre-hook), `resid_post L` its output (a forward hook). Hooks read
modules, not `hidden_states`: the last entry of HF's `hidden_states` already has the final norm applied.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import torch
from torch import nn

from steering.errors import ModelLoadError
from steering.sae.autoencoder import HookPoint

ResidualFn = Callable[[torch.Tensor], torch.Tensor | None]


class StopForward(Exception):
    """Raised inside a hook to end a forward pass early, once the wanted layer is computed."""


def _block(blocks: nn.ModuleList, point: HookPoint) -> nn.Module:
    if not 0 <= point.layer < len(blocks):
        raise ModelLoadError(f"Layer {point.layer} is out of range: the model has layers 0 to {len(blocks) - 1}.")
    return blocks[point.layer]


@contextmanager
def residual_hook(blocks: nn.ModuleList, point: HookPoint, fn: ResidualFn) -> Iterator[None]:
    """Call `fn(h)` on the residual `[batch, seq, d]` at `point`; a returned tensor replaces it."""
    block = _block(blocks, point)
    if point.site == "resid_pre":

        def pre_hook(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            if args:
                new = fn(args[0])
                return None if new is None else ((new, *args[1:]), kwargs)
            new = fn(kwargs["hidden_states"])
            return None if new is None else (args, {**kwargs, "hidden_states": new})

        handle = block.register_forward_pre_hook(pre_hook, with_kwargs=True)
    else:

        def post_hook(_module: nn.Module, _args: Any, output: Any) -> Any:
            if isinstance(output, torch.Tensor):
                return fn(output)
            new = fn(output[0])
            return None if new is None else (new, *output[1:])

        handle = block.register_forward_hook(post_hook)
    try:
        yield
    finally:
        handle.remove()


def capture_residual(model: Any, blocks: nn.ModuleList, point: HookPoint, input_ids: torch.Tensor) -> torch.Tensor:
    """The residual `[batch, seq, d]` at `point`, running the model only as far as that block."""
    captured: list[torch.Tensor] = []

    def grab(h: torch.Tensor) -> None:
        captured.append(h.detach())
        raise StopForward

    with residual_hook(blocks, point, grab), suppress(StopForward):
        model(input_ids=input_ids, use_cache=False)
    if not captured:
        raise ModelLoadError(f"The hook at {point} never fired: the model does not run through that block.")
    return captured[0]


def windowed_residual(model: Any, blocks: nn.ModuleList, point: HookPoint, ids: list[int], device: torch.device | str,
                      *, window: int = 1024, context: int = 64) -> Iterator[tuple[int, torch.Tensor]]:
    """The residual at `point` of a long token sequence, `window` tokens at a time, each window read after up to
    `context` tokens before it: yields (first position, residual `[n, d]`) for consecutive pieces of `ids`."""
    start = 0
    while start < len(ids):
        end = min(start + window, len(ids))
        lo = max(0, start - context)
        chunk = torch.tensor([ids[lo:end]], device=device)
        yield start, capture_residual(model, blocks, point, chunk)[0, start - lo:]
        start = end
