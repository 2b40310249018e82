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
from steering.sae.codes import SparseCodes
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


Codes = Callable[[list[int]], "SparseCodes | None"]
"""Another way to the SAE's codes of a token list (`n` rows): the fast path's prefix cache, which computes only what
changed. None where it cannot."""


@torch.inference_mode()
def encode_codes(
    lm: LoadedModel, sae: SAE, text: str, *, window: int = 1024, context: int = 64,
    codes: Codes | None = None,
) -> tuple[list[int], list[tuple[int, int]], SparseCodes]:
    """Token ids, character offsets and feature activations as nonzeros (`SparseCodes`, a row per token, the first
    token's zeroed). Without `codes` (or where it gives None), long documents are read `window` tokens at a time,
    each after `context` tokens before it."""
    if sae.hook is None:
        raise ValueError("The SAE has no hook point.")
    enc = lm.tokenizer(text, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    got = codes(ids) if codes is not None and ids else None
    if got is None:
        got = SparseCodes(sae.d_sae)
        for start, resid in windowed_residual(lm.model, lm.blocks, sae.hook, ids, lm.device, window=window,
                                              context=context):
            index, value = sae.encode_sparse(resid.to(sae.device, sae.dtype))
            got.put(start, index.cpu(), value.float().cpu())
        got = got.first(len(ids))
    if len(ids):
        got.value[0] = 0.0
    return ids, offsets, got


def encode_document(
    lm: LoadedModel, sae: SAE, text: str, *, window: int = 1024, context: int = 64,
    codes: Codes | None = None,
) -> tuple[list[int], list[tuple[int, int]], torch.Tensor]:
    """`encode_codes` with the activations dense, `[n_tokens, d_sae]` float32 (first token zeroed)."""
    ids, offsets, got = encode_codes(lm, sae, text, window=window, context=context, codes=codes)
    return ids, offsets, got.dense(len(ids))


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
    ids, offsets, got = encode_codes(lm, sae, text, window=window, codes=codes)
    return annotation_of(sae, text, ids, offsets, got, top_k=top_k, paragraph_top=paragraph_top,
                         granularity=granularity, specificity=specificity, watch=watch)


def annotation_of(
    sae: SAE, text: str, ids: list[int], offsets: list[tuple[int, int]], codes: SparseCodes | torch.Tensor, *,
    top_k: int = 5, paragraph_top: int = 8, granularity: str = "paragraph", specificity: Specificity | None = None,
    watch: Sequence[int] = (),
) -> Annotation:
    """`annotate` from the codes `encode_codes` gave (or dense ones, `[n_tokens, d_sae]`)."""
    spans_of = split_spans(text, granularity)
    hook = sae.hook.name if sae.hook else ""
    if isinstance(codes, torch.Tensor):
        codes = SparseCodes.of(codes)
    n, d = len(ids), sae.d_sae
    index, value = codes.index[:n].long(), codes.value[:n]
    k = min(top_k, value.shape[1])
    if k:
        top_values, at = value.topk(k, dim=-1)
        values, features = top_values.tolist(), index.gather(1, at).tolist()
    else:
        values = features = [[] for _ in range(n)]
    watched = sorted({f for f in watch if 0 <= f < d})  # features of another SAE fire nowhere here
    extra = None
    if watched:
        hit = index[:, :, None] == torch.tensor(watched)[None, None]
        extra = (value[:, :, None] * hit).sum(1).tolist()
    tokens = []
    for i, (token_id, (start, end)) in enumerate(zip(ids, offsets, strict=True)):
        fv = [FeatureValue(f, v) for v, f in zip(values[i], features[i], strict=True) if v > 0]
        if extra is not None:
            top = {f.feature for f in fv}
            fv += [FeatureValue(f, v) for f, v in zip(watched, extra[i], strict=True) if v > 0 and f not in top]
            fv.sort(key=lambda x: -x.activation)
        tokens.append(TokenFeatures(i, token_id, text[start:end], start, end, tuple(fv)))
    specificity = specificity or Specificity(sae)
    seen = index[value > 0].unique()
    weights = dict(zip(seen.tolist(), map(Weight, specificity.weights[seen].tolist(),
                                          specificity.hintable[seen].tolist()), strict=True))
    # each token belongs to the span its last character falls in (spans do not overlap): every span's sums, peaks
    # and counts in one pass over the nonzeros
    ends = torch.tensor([max(e - 1, s) for s, e in offsets], dtype=torch.long)
    starts = torch.tensor([p_start for p_start, _ in spans_of], dtype=torch.long)
    owner = torch.searchsorted(starts, ends, right=True) - 1
    inside = owner >= 0
    if len(spans_of):
        stops = torch.tensor([p_end for _, p_end in spans_of], dtype=torch.long)
        inside &= ends < stops[owner.clamp_min(0)]
    cells = (owner[inside, None] * d + index[inside]).flatten()
    fired = value[inside].flatten()
    size = len(spans_of) * d
    totals = torch.zeros(size).index_add_(0, cells, fired).view(-1, d)
    peaks = torch.zeros(size).scatter_reduce_(0, cells, fired, "amax").view(-1, d)
    counts = torch.zeros(size).index_add_(0, cells, (fired > 0).float()).view(-1, d)
    present = torch.zeros(len(spans_of), dtype=torch.bool)
    present[owner[inside]] = True
    spans = []
    for j, (p_start, p_end) in enumerate(spans_of):
        if not present[j]:
            continue
        total, peak, count = totals[j], peaks[j], counts[j]
        ranked = rank_dense(total, specificity, top=paragraph_top)
        spans.append(SpanFeatures(p_start, p_end, tuple(
            SpanFeature(r.feature, float(total[r.feature]), float(peak[r.feature]), int(count[r.feature]), r.score,
                        r.hintable) for r in ranked)))
    return Annotation(text, hook, tuple(tokens), tuple(spans), weights)
