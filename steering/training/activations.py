"""Activations to train on: the model's residual stream over the corpus, streamed through a bounded shuffle buffer.

The first position of every sequence is left out (its residual norm is outsized). Under `torchrun` each rank reads
its own shard of the corpus.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from steering.config import TrainConfig
from steering.runtime.hooks import capture_residual
from steering.runtime.models import LoadedModel
from steering.sae.autoencoder import HookPoint

from .corpus import Corpus
from .distributed import dist_info

Source = Iterator[tuple[int, torch.Tensor]]
"""(next unread sequence position, activations `[n, d]`), batch after batch."""


def activation_stream(lm: LoadedModel, hook: HookPoint, corpus: Corpus, cfg: TrainConfig, *, start: int = 0,
                      ) -> Source:
    """Activations `[model_batch * (context - 1), d]` of this rank's sequences from `start` on; position 0 dropped."""
    rank, world = dist_info()
    batch: list[torch.Tensor] = []
    for index, ids in corpus.sequences(cfg.context, start=start, rank=rank, world=world, repeat=cfg.allow_repeat,
                                       shuffle=cfg.seed):
        batch.append(ids)
        if len(batch) == cfg.model_batch:
            yield index + 1, _residuals(lm, hook, torch.stack(batch))
            batch = []
    if batch:
        yield corpus.n_sequences(cfg.context), _residuals(lm, hook, torch.stack(batch))


@torch.inference_mode()
def _residuals(lm: LoadedModel, hook: HookPoint, ids: torch.Tensor) -> torch.Tensor:
    resid = capture_residual(lm.model, lm.blocks, hook, ids.to(lm.device))
    return resid[:, 1:].reshape(-1, resid.shape[-1]).float()


class ShuffleBuffer:
    """A bounded pool of activations: filled, shuffled, half served as batches, refilled."""

    def __init__(self, source: Source, capacity: int, d: int, device: torch.device,
                 generator: torch.Generator) -> None:
        self.source = source
        self.store = torch.empty(capacity, d, device=device)
        self.capacity = capacity
        self.size = 0
        self.generator = generator
        self.position = 0  # next unread sequence position of the source
        self.pending: torch.Tensor | None = None  # activations read but not yet in the store
        self.exhausted = False

    def fill(self) -> None:
        """Read from the source until the pool is full or the source ends."""
        while self.size < self.capacity:
            if self.pending is None or len(self.pending) == 0:
                try:
                    self.position, self.pending = next(self.source)
                except StopIteration:
                    self.exhausted = True
                    return
            n = min(len(self.pending), self.capacity - self.size)
            self.store[self.size : self.size + n] = self.pending[:n].to(self.store.device)
            self.pending = self.pending[n:]
            self.size += n

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        while True:
            self.fill()
            if self.size < batch_size:
                return
            perm = torch.randperm(self.size, generator=self.generator).to(self.store.device)
            self.store[: self.size] = self.store[perm]
            serve = max(batch_size, (self.size // 2) // batch_size * batch_size) if not self.exhausted else (
                self.size // batch_size * batch_size)
            for i in range(0, serve, batch_size):
                yield self.store[i : i + batch_size]
            remaining = self.size - serve
            self.store[:remaining] = self.store[serve : self.size].clone()
            self.size = remaining
