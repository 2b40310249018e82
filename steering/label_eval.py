"""How well labels describe their features, measured offline: `tinymorph eval-labels`.

For a sample of labelled features, held-out contexts where the feature fires (its top activations on text the labels
were not made from) and contexts where it does not (random positions, checked to be silent for it). A label detects
its feature when the model's own embedding of the label (the mean residual over its tokens, at a middle layer) is
closer (cosine) to the contexts where the feature fires than to the others: per feature, the balanced accuracy of
"fires" = "similarity above the median of its contexts". The same with labels shuffled among the features is the
baseline, in the same run. No external model judges anything.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any

import torch

from .hooks import capture_residual
from .labels import context_at
from .models import LoadedModel
from .sae import SAE, HookPoint
from .stats import feature_statistics


@dataclass(frozen=True)
class LabelEval:
    features: int
    contexts_per_side: int
    balanced_accuracy: float
    """Mean over the features of the balanced accuracy of their labels."""
    shuffled_baseline: float
    """The same with every feature given another feature's label."""
    beats_baseline: float
    """Share of features whose own label scores higher than the shuffled one."""
    tokens: int

    def to_dict(self) -> dict[str, Any]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


@torch.inference_mode()
def embed(lm: LoadedModel, texts: list[str], layer: int, batch: int = 32) -> torch.Tensor:
    """The mean residual (after block `layer`) over each text's tokens: `[len(texts), d]`, unit norm."""
    out = []
    for first in range(0, len(texts), batch):
        rows = [list(lm.tokenizer(t)["input_ids"]) or [0] for t in texts[first:first + batch]]
        width = max(map(len, rows))
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width)
        for i, row in enumerate(rows):
            ids[i, :len(row)], mask[i, :len(row)] = torch.tensor(row), 1.0
        resid = capture_residual(lm.model, lm.blocks, HookPoint(layer), ids.to(lm.device)).float().cpu()
        mask[:, 0] = 0.0 if width > 1 else 1.0  # the first position's outsized norm would dominate the mean
        mean = (resid * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
        out.append(torch.nn.functional.normalize(mean, dim=-1))
    return torch.cat(out)


def balanced_accuracy(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """Balanced accuracy of `score > median of all scores` as the detector of the positive contexts."""
    threshold = torch.cat([pos, neg]).median()
    return 0.5 * (float((pos > threshold).float().mean()) + float((neg <= threshold).float().mean()))


@torch.inference_mode()
def evaluate_labels(lm: LoadedModel, sae: SAE, labels: dict[str, Any], stream: torch.Tensor, *, context: int = 128,
                    tokens: int = 50_000, features: int = 200, per_side: int = 5, seed: int = 0) -> LabelEval:
    """Detection scores of the labels in `labels` (labels.json) on the held-out token `stream`."""
    assert sae.hook is not None
    stats = feature_statistics(lm, sae, stream, context=context, tokens=tokens, top=per_side)
    entries = labels.get("features", {})
    rng = random.Random(seed)
    candidates = [f for f in range(sae.d_sae) if entries.get(str(f), {}).get("label")
                  and int((stats.top_tokens[f] >= 0).sum()) >= per_side]
    chosen = sorted(rng.sample(candidates, min(features, len(candidates))))
    if len(chosen) < 2:
        raise ValueError("Fewer than two labelled features fire in the held-out text; give more text.")
    special = set(getattr(lm.tokenizer, "all_special_ids", None) or []) | lm.eos_token_ids
    readable = len(stream) // context * context
    positions = [p for p in range(readable) if p % context and int(stream[p]) not in special]
    # the SAE's activations at candidate silent positions: read once, for every feature
    pool = sorted(rng.sample(positions, min(len(positions), per_side * 40)))
    silent_acts = _activations_at(lm, sae, stream, pool, context)
    layer = max(0, lm.n_layers // 2)
    own: list[float] = []
    shuffled: list[float] = []
    texts_pos: dict[int, list[str]] = {}
    texts_neg: dict[int, list[str]] = {}
    for f in chosen:
        texts_pos[f] = [context_at(lm.tokenizer, stream, int(p), context, special).marked().replace("«", "")
                        .replace("»", "") for p in stats.top_tokens[f].tolist() if p >= 0][:per_side]
        quiet = [p for p, acts in zip(pool, silent_acts, strict=True) if acts[f] <= 0]
        picks = rng.sample(quiet, min(per_side, len(quiet)))
        texts_neg[f] = [context_at(lm.tokenizer, stream, p, context, special).marked().replace("«", "")
                        .replace("»", "") for p in picks]
    all_texts = [t for f in chosen for t in texts_pos[f] + texts_neg[f]]
    vectors = embed(lm, all_texts, layer)
    label_vectors = embed(lm, [entries[str(f)]["label"] for f in chosen], layer)
    permutation = chosen[1:] + chosen[:1]  # every feature gets another feature's label
    index = {f: i for i, f in enumerate(chosen)}
    at = 0
    for f, other in zip(chosen, permutation, strict=True):
        n_pos, n_neg = len(texts_pos[f]), len(texts_neg[f])
        block = vectors[at:at + n_pos + n_neg]
        at += n_pos + n_neg
        if not n_pos or not n_neg:
            continue
        for target, label in ((own, label_vectors[index[f]]), (shuffled, label_vectors[index[other]])):
            sims = block @ label
            target.append(balanced_accuracy(sims[:n_pos], sims[n_pos:]))
    if not own:
        raise ValueError("No labelled feature had contexts on both sides; give more text.")
    beats = sum(a > b for a, b in zip(own, shuffled, strict=True)) / len(own)
    return LabelEval(len(own), per_side, sum(own) / len(own), sum(shuffled) / len(shuffled), beats, stats.tokens)


def _activations_at(lm: LoadedModel, sae: SAE, stream: torch.Tensor, positions: list[int], context: int,
                    ) -> list[torch.Tensor]:
    """The SAE's activations `[d_sae]` at each stream position, read in its sequence."""
    assert sae.hook is not None
    out = []
    for p in positions:
        start = p - p % context
        ids = stream[start:p + 1][None].to(lm.device)
        resid = capture_residual(lm.model, lm.blocks, sae.hook, ids)[0, -1]
        out.append(sae.encode(resid.to(sae.device, sae.dtype)).float().cpu())
    return out
