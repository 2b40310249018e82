"""One pass of an SAE over a corpus: what every feature does there.

Per feature: its largest activation (the unit of `add` steering), how often it fires, its mean activation where it
fires, how much of its activation falls on tokens of punctuation or white space alone and on the first positions of a
text (such features say nothing about a paragraph's content), its top activating positions (for labels), and its
DiffMean direction: the mean residual where it fires (weighted by its activation, so strong firings count most) minus
the mean residual where it does not (a steering direction, AxBench's "DiffMean"). The first position of every sequence
is left out, as everywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from steering.runtime.hooks import capture_residual
from steering.runtime.models import LoadedModel
from steering.sae.autoencoder import SAE

EARLY_POSITIONS = 3
"""Positions 1 to this one of a sequence count as its start (position 0 is never read)."""


@dataclass
class FeatureStats:
    """What a pass over text says about every feature."""

    max_act: torch.Tensor
    frequency: torch.Tensor
    mean_act: torch.Tensor
    """Mean activation over the tokens where the feature fires (0 where it never does)."""
    punct_share: torch.Tensor
    """Share of the feature's summed activation on tokens that are punctuation or white space alone."""
    early_share: torch.Tensor
    """Share of the feature's summed activation on the first `EARLY_POSITIONS` positions of a sequence."""
    top_values: torch.Tensor  # [d_sae, n]
    top_tokens: torch.Tensor  # [d_sae, n] global token index into the corpus stream (-1: none)
    tokens: int
    diffmean: torch.Tensor | None = None
    """`[d_sae, d_in]` in the model's residual space: the activation-weighted mean residual where the feature fires
    minus the mean residual where it does not (zero for features that never fire)."""
    sample_tokens: torch.Tensor | None = None
    """`[d_sae, sample]` positions where the feature fires, drawn at random in proportion to its activation (-1:
    none): where it usually fires, beside its top activations (labels are chosen on both)."""
    pool_tokens: torch.Tensor | None = None
    """`[pool]` positions drawn evenly from the tokens read: the background a label must separate from."""
    pool_fired: torch.Tensor | None = None
    """`[pool, d_sae]` whether each feature fires at each of `pool_tokens`."""

    def tensors(self) -> dict[str, torch.Tensor]:
        """The per-feature statistics an SAE keeps (`SAE.set_feature_stats`)."""
        out = {"max_act": self.max_act, "frequency": self.frequency, "mean_act": self.mean_act,
               "punct_share": self.punct_share, "early_share": self.early_share}
        if self.diffmean is not None:
            out["diffmean"] = self.diffmean
        return out


def is_filler(text: str) -> bool:
    """A token of punctuation, symbols or white space alone (no letter, no digit)."""
    return not any(ch.isalnum() for ch in text)


def filler_mask(tokenizer: Any, ids: torch.Tensor) -> torch.Tensor:
    """For each token id up to the largest in `ids`: whether it is filler (`is_filler`) or a special token."""
    size = int(ids.max()) + 1 if len(ids) else 1
    mask = torch.zeros(size, dtype=torch.bool)
    special = set(getattr(tokenizer, "all_special_ids", None) or [])
    for token in torch.unique(ids).tolist():
        mask[token] = token in special or is_filler(tokenizer.decode([token]))
    return mask


@torch.inference_mode()
def feature_statistics(lm: LoadedModel, sae: SAE, stream: torch.Tensor, *, context: int = 128, tokens: int = 100_000,
                       top: int = 32, batch: int = 8, sample: int = 0, pool: int = 0, seed: int = 0) -> FeatureStats:
    """Statistics of every feature over about `tokens` of `stream`, read in sequences of `context` tokens spread
    evenly over the whole stream (so every part of a corpus counts, not its first files). With `sample`, also that
    many firing positions per feature drawn in proportion to activation; with `pool`, about that many background
    positions and which features fire there (both for labels; neither changes the other statistics)."""
    assert sae.hook is not None
    available = len(stream) // context
    n_seq = max(1, min(available, math.ceil(tokens / max(1, context - 1))))
    chosen = torch.linspace(0, max(0, available - 1), n_seq).round().long().unique().tolist()
    d = sae.d_sae
    filler = filler_mask(lm.tokenizer, stream[: available * context])
    max_act, total, on_filler, early = (torch.zeros(d) for _ in range(4))
    fired = torch.zeros(d, dtype=torch.long)
    top_v = torch.full((d, top), -1.0)
    top_i = torch.full((d, top), -1, dtype=torch.long)
    weighted = torch.zeros(d, sae.d_in)  # activation-weighted sum of the residual where each feature fires
    where_fired = torch.zeros(d, sae.d_in)  # plain sum of the residual where each feature fires
    resid_sum = torch.zeros(sae.d_in)
    seen = 0
    generator = torch.Generator().manual_seed(seed)
    sample_k = torch.full((d, sample), float("-inf"))
    sample_i = torch.full((d, sample), -1, dtype=torch.long)
    every = max(1, math.ceil(n_seq * (context - 1) / pool)) if pool else 0
    pool_i: list[torch.Tensor] = []
    pool_f: list[torch.Tensor] = []
    for first in range(0, len(chosen), batch):
        idx = chosen[first:first + batch]
        ids = torch.stack([stream[i * context : (i + 1) * context] for i in idx])
        if ids.shape[1] < 2:
            break
        resid = capture_residual(lm.model, lm.blocks, sae.hook, ids.to(lm.device))[:, 1:]
        acts = sae.encode(resid.to(sae.device, sae.dtype)).float().cpu()  # [b, t - 1, d]
        early += acts[:, :EARLY_POSITIONS].sum((0, 1))
        acts = acts.reshape(-1, d)
        flat = resid.reshape(-1, resid.shape[-1]).float().cpu()
        weighted += acts.T @ flat
        where_fired += (acts > 0).float().T @ flat
        resid_sum += flat.sum(0)
        token_ids = ids[:, 1:].reshape(-1)
        positions = torch.tensor([i * context + p for i in idx for p in range(1, ids.shape[1])])
        max_act = torch.maximum(max_act, acts.max(0).values)
        fired += (acts > 0).sum(0)
        total += acts.sum(0)
        on_filler += acts[filler[token_ids]].sum(0)
        seen += len(acts)
        k = min(top, len(acts))
        bv, bi = acts.topk(k, dim=0)  # [k, d]
        all_v = torch.cat([top_v, bv.T], 1)
        all_i = torch.cat([top_i, positions[bi].T], 1)
        keep = all_v.topk(top, dim=1).indices
        top_v, top_i = all_v.gather(1, keep), all_i.gather(1, keep)
        if sample:
            # weighted reservoir (Efraimidis-Spirakis): key log(u) / activation, the largest keys kept
            u = torch.rand(acts.shape, generator=generator).clamp_min(1e-12)
            keys = torch.where(acts > 0, u.log() / acts.clamp_min(1e-12), float("-inf"))
            kv, ki = keys.topk(min(sample, len(acts)), dim=0)
            all_k, all_s = torch.cat([sample_k, kv.T], 1), torch.cat([sample_i, positions[ki].T], 1)
            keep = all_k.topk(sample, dim=1).indices
            sample_k, sample_i = all_k.gather(1, keep), all_s.gather(1, keep)
        if every:
            rows = torch.arange(-(seen - len(acts)) % every, len(acts), every)  # every `every`-th token read
            pool_i.append(positions[rows])
            pool_f.append(acts[rows] > 0)
    top_i[top_v <= 0] = -1
    sample_i[~torch.isfinite(sample_k)] = -1
    mass = total.clamp_min(1e-12)
    silent = (resid_sum - where_fired) / (seen - fired).clamp_min(1)[:, None].float()
    diffmean = torch.where((total > 0)[:, None], weighted / mass[:, None] - silent, torch.zeros(()))
    return FeatureStats(max_act, fired.float() / max(1, seen), total / fired.clamp_min(1), on_filler / mass,
                        early / mass, top_v.clamp_min(0), top_i, seen, diffmean,
                        sample_i if sample else None, torch.cat(pool_i) if pool_i else None,
                        torch.cat(pool_f) if pool_f else None)
