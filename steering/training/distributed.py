"""Data-parallel training under `torchrun`: which rank this is, joining the process group, summing across ranks.

Without `torchrun` (or with one process) every function here is the single-process identity.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def dist_info() -> tuple[int, int]:
    """(rank, world size)."""
    if is_distributed():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def maybe_init_distributed(device: torch.device) -> bool:
    """Join the process group that `torchrun` describes in the environment (gloo on CPU, nccl on CUDA)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return True


def leave_distributed() -> None:
    """Every rank waits for the others, then leaves the process group. A rank that exits with the group still up
    can be killed by gloo's teardown (SIGABRT) while a peer is still connected."""
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()


def all_reduce(t: torch.Tensor, op: Any = None) -> torch.Tensor:
    """Reduce `t` in place across ranks (sum unless `op` says otherwise); returns it."""
    if is_distributed():
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t


def all_max(t: torch.Tensor) -> torch.Tensor:
    """The element-wise maximum of `t` across ranks, in place."""
    return all_reduce(t, dist.ReduceOp.MAX if is_distributed() else None)


def broadcast_(t: torch.Tensor) -> None:
    """Copy rank 0's `t` to every rank."""
    if is_distributed():
        dist.broadcast(t, 0)
