"""Feature labels, first cut: the logit lens of a feature's decoder row (through the final norm and unembedding)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from .models import LoadedModel
from .sae import SAE


class TokenScore(NamedTuple):
    token: str
    score: float


@dataclass(frozen=True)
class LogitLens:
    feature: int
    promoted: tuple[TokenScore, ...]
    suppressed: tuple[TokenScore, ...]


@torch.inference_mode()
def logit_lens(lm: LoadedModel, sae: SAE, feature: int, top: int = 10) -> LogitLens:
    """Tokens whose logits the feature's decoder direction raises (promoted) and lowers (suppressed) most."""
    direction = sae.W_dec[sae.check_feature(feature)].to(lm.device, lm.dtype)
    h = direction[None, None, :]
    if lm.final_norm is not None:
        h = lm.final_norm(h)
    logits = lm.unembed(h)[0, 0].float()
    top = min(top, logits.shape[-1])
    hi, lo = logits.topk(top), (-logits).topk(top)

    def named(values: torch.Tensor, ids: torch.Tensor, sign: float) -> tuple[TokenScore, ...]:
        return tuple(TokenScore(lm.tokenizer.decode([i]), sign * v) for v, i in zip(values.tolist(), ids.tolist(),
                                                                                   strict=True))

    return LogitLens(feature, named(hi.values, hi.indices, 1.0), named(lo.values, lo.indices, -1.0))


# ------------------------------------------------------------------------------------------------ labels.json
LABELS_FILE = "labels.json"


@dataclass
class FeatureStats:
    """What a pass over text says about every feature."""

    max_act: torch.Tensor
    frequency: torch.Tensor
    top_values: torch.Tensor  # [d_sae, n]
    top_tokens: torch.Tensor  # [d_sae, n] global token index into the corpus stream (-1: none)
    tokens: int


@torch.inference_mode()
def feature_statistics(lm: LoadedModel, sae: SAE, stream: torch.Tensor, *, context: int = 128, tokens: int = 100_000,
                       top: int = 8, batch: int = 8) -> FeatureStats:
    """max activation, firing frequency and top activating token positions over the first `tokens` of `stream`."""
    from .hooks import capture_residual

    assert sae.hook is not None
    n_seq = max(1, min(len(stream) // context, math.ceil(tokens / max(1, context - 1))))
    d = sae.d_sae
    max_act = torch.zeros(d)
    fired = torch.zeros(d, dtype=torch.long)
    top_v = torch.full((d, top), -1.0)
    top_i = torch.full((d, top), -1, dtype=torch.long)
    seen = 0
    for first in range(0, n_seq, batch):
        idx = range(first, min(n_seq, first + batch))
        ids = torch.stack([stream[i * context : (i + 1) * context] for i in idx])
        if ids.shape[1] < 2:
            break
        resid = capture_residual(lm.model, lm.blocks, sae.hook, ids.to(lm.device))[:, 1:]
        acts = sae.encode(resid.to(sae.device, sae.dtype)).float().cpu().reshape(-1, d)
        positions = torch.tensor([i * context + p for i in idx for p in range(1, ids.shape[1])])
        max_act = torch.maximum(max_act, acts.max(0).values)
        fired += (acts > 0).sum(0)
        seen += len(acts)
        k = min(top, len(acts))
        bv, bi = acts.topk(k, dim=0)  # [k, d]
        all_v = torch.cat([top_v, bv.T], 1)
        all_i = torch.cat([top_i, positions[bi].T], 1)
        keep = all_v.topk(top, dim=1).indices
        top_v, top_i = all_v.gather(1, keep), all_i.gather(1, keep)
    top_i[top_v <= 0] = -1
    return FeatureStats(max_act, fired.float() / max(1, seen), top_v.clamp_min(0), top_i, seen)


def _context(tokenizer: Any, stream: torch.Tensor, position: int, context: int, before: int = 12,
             after: int = 4) -> tuple[str, str]:
    seq_start = position - position % context
    lo, hi = max(seq_start, position - before), min(seq_start + context, position + 1 + after)
    left = tokenizer.decode(stream[lo:position].tolist())
    token = tokenizer.decode([int(stream[position])])
    right = tokenizer.decode(stream[position + 1 : hi].tolist())
    return f"{left}«{token}»{right}".replace("\n", "⏎"), token


@torch.inference_mode()
def build_labels(lm: LoadedModel, sae: SAE, stats: FeatureStats, stream: torch.Tensor, *, context: int = 128,
                 lens_top: int = 8) -> dict[str, Any]:
    """labels.json: per feature a short label, its top contexts, activating tokens and logit-lens tokens."""
    features: dict[str, Any] = {}
    d = sae.d_sae
    for first in range(0, d, 256):
        rows = sae.W_dec[first : first + 256].to(lm.device, lm.dtype)[:, None, :]
        h = lm.final_norm(rows) if lm.final_norm is not None else rows
        logits = lm.unembed(h)[:, 0].float()
        hi, lo = logits.topk(lens_top, dim=-1), (-logits).topk(lens_top, dim=-1)
        for j in range(rows.shape[0]):
            f = first + j
            promoted = [lm.tokenizer.decode([i]) for i in hi.indices[j].tolist()]
            suppressed = [lm.tokenizer.decode([i]) for i in lo.indices[j].tolist()]
            contexts, activating = [], []
            for value, pos in zip(stats.top_values[f].tolist(), stats.top_tokens[f].tolist(), strict=True):
                if pos < 0:
                    continue
                text, token = _context(lm.tokenizer, stream, pos, context)
                contexts.append({"text": text, "activation": round(value, 3)})
                activating.append(token)
            features[str(f)] = {
                "label": make_label(activating, promoted, alive=bool(contexts)),
                "max_act": round(float(stats.max_act[f]), 4),
                "frequency": float(stats.frequency[f]),
                "activating": _most_common(activating, 5),
                "promoted": promoted,
                "suppressed": suppressed,
                "contexts": contexts,
            }
    return {"version": 1, "hook": sae.hook.name if sae.hook else None, "tokens": stats.tokens, "features": features}


def _most_common(tokens: list[str], n: int) -> list[str]:
    counts: dict[str, int] = {}
    for t in tokens:
        key = t.strip().lower()
        if key:
            counts[key] = counts.get(key, 0) + 1
    return [t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]


def make_label(activating: list[str], promoted: list[str], *, alive: bool = True) -> str:
    """Short human label: the most frequent activating tokens, then → the top promoted tokens."""
    if not alive:
        return "(never fired)"
    fires = "/".join(_most_common(activating, 2)) or "·"
    promotes = " ".join(p.strip() for p in promoted[:2] if p.strip())
    return f"{fires} → {promotes}" if promotes else fires


def feature_label(entry: dict[str, Any], lens: LogitLens) -> str:
    """A feature's label: the one labels.json gives, else its top three promoted tokens."""
    return entry.get("label") or " ".join(t.token.strip() or repr(t.token) for t in lens.promoted[:3])


def load_labels(folder: str | Path | None) -> dict[str, Any] | None:
    """The labels.json beside an SAE, or None."""
    if folder is None:
        return None
    path = Path(folder)
    path = path / LABELS_FILE if path.is_dir() else path.parent / LABELS_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("features"), dict) else None


def search_labels(labels: dict[str, Any], query: str, limit: int = 20) -> list[tuple[int, float]]:
    """(feature, score) for features whose label, activating or promoted tokens, or contexts mention `query`."""
    q = query.strip().lower()
    if not q:
        return []
    scored = []
    for key, entry in labels["features"].items():
        score = 0.0
        if q in entry.get("label", "").lower():
            score += 10
        score += 4 * sum(q == t.strip().lower() for t in entry.get("activating", []))
        score += 2 * sum(q == t.strip().lower() for t in entry.get("promoted", []))
        score += sum(q in c.get("text", "").lower() for c in entry.get("contexts", []))
        if score:
            scored.append((int(key), score))
    scored.sort(key=lambda fs: (-fs[1], fs[0]))
    return scored[:limit]
