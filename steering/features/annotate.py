"""Reading features off a document: run the model up to the SAE's layer, encode every token, aggregate by paragraph.

The first position of each forward pass has an outsized residual norm in most models; its features are never
reported (long documents run in overlapping windows so that only the document's first token is affected).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import torch

from steering.runtime.hooks import windowed_residual
from steering.runtime.models import LoadedModel
from steering.sae.autoencoder import SAE
from steering.spans import split_spans

from .ranking import Specificity, Weight, rank_dense


class FeatureValue(NamedTuple):
    feature: int
    activation: float


@dataclass(frozen=True)
class TokenFeatures:
    """One token, its character span in the text, and its strongest features."""

    index: int
    token_id: int
    text: str
    start: int
    end: int
    features: tuple[FeatureValue, ...]


@dataclass(frozen=True)
class SpanFeature:
    """A feature's activity over a span: summed and maximal activation, on how many tokens it fired, and its
    specificity score (`steering.features.ranking`); `hintable` is False for dense, punctuation and position features."""

    feature: int
    total: float
    max: float
    count: int
    score: float = 0.0
    hintable: bool = True


@dataclass(frozen=True)
class SpanFeatures:
    """A paragraph (character offsets, end exclusive) and its features, most specific first (`steering.features.ranking`)."""

    start: int
    end: int
    features: tuple[SpanFeature, ...]


@dataclass(frozen=True)
class Annotation:
    text: str
    hook: str
    tokens: tuple[TokenFeatures, ...]
    paragraphs: tuple[SpanFeatures, ...]
    weights: dict[int, Weight] = field(default_factory=dict, compare=False)
    """How each feature seen here is ranked: what ranks a selection of the text as the spans were (`rank`)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "hook": self.hook,
            "tokens": [
                {**{k: v for k, v in asdict(t).items() if k != "features"},
                 "features": [{"feature": f.feature, "activation": round(f.activation, 4)} for f in t.features]}
                for t in self.tokens
            ],
            "paragraphs": [
                {"start": p.start, "end": p.end, "text": self.text[p.start : p.end],
                 "features": [{"feature": f.feature, "total": round(f.total, 4), "max": round(f.max, 4),
                               "count": f.count, "score": round(f.score, 4), "hint": f.hintable}
                              for f in p.features]}
                for p in self.paragraphs
            ],
        }


Codes = Callable[[list[int]], "torch.Tensor | None"]
"""Another way to the SAE's codes `[n, d_sae]` (float32, on the CPU) of a token list: the fast path's prefix cache,
which computes only what changed. None where it cannot."""


@torch.inference_mode()
def encode_document(
    lm: LoadedModel, sae: SAE, text: str, *, window: int = 1024, context: int = 64,
    codes: Codes | None = None,
) -> tuple[list[int], list[tuple[int, int]], torch.Tensor]:
    """Token ids, character offsets and feature activations `[n_tokens, d_sae]` (first token zeroed). Without
    `codes` (or where it gives None), long documents are read `window` tokens at a time, each after `context`
    tokens before it."""
    if sae.hook is None:
        raise ValueError("The SAE has no hook point.")
    enc = lm.tokenizer(text, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    whole = codes(ids) if codes is not None and ids else None
    if whole is not None:
        feats = whole.clone()
    else:
        feats = torch.zeros(len(ids), sae.d_sae, dtype=torch.float32)
        for start, resid in windowed_residual(lm.model, lm.blocks, sae.hook, ids, lm.device, window=window,
                                              context=context):
            feats[start:start + len(resid)] = sae.encode(resid.to(sae.device, sae.dtype)).float().cpu()
    if len(ids):
        feats[0] = 0.0
    return ids, offsets, feats


def annotate(
    lm: LoadedModel, sae: SAE, text: str, *, top_k: int = 5, paragraph_top: int = 8, window: int = 1024,
    granularity: str = "paragraph", specificity: Specificity | None = None, codes: Codes | None = None,
    watch: Sequence[int] = (),
) -> Annotation:
    """Per-token top-k features and per-span features of `text` (spans are paragraphs, sentences or lines, by
    `granularity`): the `paragraph_top` most specific hintable ones, then a few that are never hinted. The features
    in `watch` are kept on every token where they fire, in its top k or not (ids the SAE does not have are left
    out). Empty text gives an empty annotation."""
    split_spans("", granularity)  # an unknown granularity is an error, also for an empty text
    if not text.strip():
        return Annotation(text, sae.hook.name if sae.hook else "", (), ())
    ids, offsets, feats = encode_document(lm, sae, text, window=window, codes=codes)
    return annotation_of(sae, text, ids, offsets, feats, top_k=top_k, paragraph_top=paragraph_top,
                         granularity=granularity, specificity=specificity, watch=watch)


def annotation_of(
    sae: SAE, text: str, ids: list[int], offsets: list[tuple[int, int]], feats: torch.Tensor, *, top_k: int = 5,
    paragraph_top: int = 8, granularity: str = "paragraph", specificity: Specificity | None = None,
    watch: Sequence[int] = (),
) -> Annotation:
    """`annotate` from the codes `encode_document` gave."""
    spans_of = split_spans(text, granularity)
    hook = sae.hook.name if sae.hook else ""
    k = min(top_k, sae.d_sae)
    values, indices = feats.topk(k, dim=-1) if k else (torch.zeros(len(ids), 0), torch.zeros(len(ids), 0))
    watched = sorted({f for f in watch if 0 <= f < sae.d_sae})  # features of another SAE fire nowhere here
    extra = feats[:, watched].tolist() if watched else None
    tokens = []
    for i, (token_id, (start, end)) in enumerate(zip(ids, offsets, strict=True)):
        fv = [FeatureValue(int(f), float(v)) for v, f in zip(values[i].tolist(), indices[i].tolist(), strict=True)
              if v > 0]
        if extra is not None:
            top = {f.feature for f in fv}
            fv += [FeatureValue(f, v) for f, v in zip(watched, extra[i], strict=True) if v > 0 and f not in top]
            fv.sort(key=lambda x: -x.activation)
        tokens.append(TokenFeatures(i, token_id, text[start:end], start, end, tuple(fv)))
    specificity = specificity or Specificity(sae)
    seen = (feats > 0).any(0).nonzero().flatten().tolist()
    weights = {f: specificity.weight(f) for f in seen}
    ends = torch.tensor([max(e - 1, s) for s, e in offsets])
    spans = []
    for p_start, p_end in spans_of:
        mask = (ends >= p_start) & (ends < p_end)
        if not mask.any():
            continue
        block = feats[mask]
        total, peak, count = block.sum(0), block.max(0).values, (block > 0).sum(0)
        ranked = rank_dense(total, specificity, top=paragraph_top)
        spans.append(SpanFeatures(p_start, p_end, tuple(
            SpanFeature(r.feature, float(total[r.feature]), float(peak[r.feature]), int(count[r.feature]), r.score,
                        r.hintable) for r in ranked)))
    return Annotation(text, hook, tuple(tokens), tuple(spans), weights)
