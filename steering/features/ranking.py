"""Which features a span is about: its features ranked by how unusual their activation is for them, not by how
loud it is.

A feature's score over a span is its summed activation in units of its mean activation where it fires (about how
many times it fired at its usual strength), times log(1 / its firing rate) over the corpus: tf-idf with the SAE's
feature statistics as the document frequencies. A feature that fires on everything scores little wherever it fires;
one that rarely fires scores high where it does. Dense features, and features whose activation falls mostly on
punctuation or white space alone or on the first positions of a text, say nothing about a span's content: they are
ranked (for tooltips and hover) but never hinted. Without statistics the summed activation ranks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import torch

from steering.sae.autoencoder import SAE

DENSE_FREQUENCY = 0.05
DENSE_RATIO = 5.0
"""A feature firing on more than DENSE_FREQUENCY of the tokens and more than DENSE_RATIO times as often as the
average feature is dense (the average is L0 / width: 1.4 % for k 64 of 4,608)."""
FILLER_SHARE = 0.5
"""A feature with more than this share of its activation on punctuation or white space alone is about form."""
EARLY_SHARE = 0.5
"""A feature with more than this share of its activation on a text's first positions is about position."""
CONFIDENCE_FLOOR = 0.6
"""A feature whose label separates its contexts from the background no better than this balanced accuracy is not
hinted (`steering.features.separation`)."""
EVERYDAY = 0.002
EVERYDAY_WEIGHT = 0.5


@dataclass(frozen=True)
class Weight:
    """How a feature's summed activation over a span turns into its score, and whether it may be hinted."""

    per_unit: float
    hintable: bool


@dataclass(frozen=True)
class Ranked:
    feature: int
    score: float
    hintable: bool


def alive_and_sparse(frequency: torch.Tensor) -> torch.Tensor:
    """Per feature: it fires at all, and not densely (`DENSE_FREQUENCY`, `DENSE_RATIO`)."""
    frequency = frequency.float().cpu()
    dense = max(DENSE_FREQUENCY, DENSE_RATIO * float(frequency.mean()))
    return (frequency > 0) & (frequency <= dense)


class Specificity:
    """Per-feature weights of one SAE, from its feature statistics and, when given, its labels (labels.json's
    features): a feature whose label describes its contexts well ranks higher (weight times 0.5 + J, J = 2 *
    confidence - 1), one below `CONFIDENCE_FLOOR` is not hinted, and one whose label is an everyday verb, adjective or
    adverb (`used`, `near`: not a noun, in more than `EVERYDAY` of all contexts) ranks at `EVERYDAY_WEIGHT`."""

    def __init__(self, sae: SAE, labels: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        d, stats = sae.d_sae, sae.stats
        self.weights = torch.ones(d)
        self.hintable = torch.ones(d, dtype=torch.bool)
        frequency, mean = stats.get("frequency"), stats.get("mean_act")
        if frequency is not None:
            frequency = frequency.float().cpu()
            unit = mean.float().cpu() if mean is not None else stats.get("max_act", torch.ones(d)).float().cpu()
            self.weights = torch.log(1.0 / frequency.clamp_min(1e-7)) / unit.clamp_min(1e-6)
            self.hintable &= alive_and_sparse(frequency)
        for name, limit in (("punct_share", FILLER_SHARE), ("early_share", EARLY_SHARE)):
            share = stats.get(name)
            if share is not None:
                self.hintable &= share.float().cpu() <= limit
        if labels:
            entries = [labels.get(str(f), {}) for f in range(d)]
            confidence = torch.tensor([float(e.get("confidence", -1.0)) for e in entries])
            measured = confidence >= 0
            self.hintable &= ~measured | (confidence >= CONFIDENCE_FLOOR)
            self.weights = self.weights * torch.where(measured, 0.5 + (2 * confidence - 1).clamp(0, 1), 1.0)
            everyday = torch.tensor([e.get("noun") is False and float(e.get("common", 0.0)) > EVERYDAY
                                     for e in entries])
            self.weights = torch.where(everyday, self.weights * EVERYDAY_WEIGHT, self.weights)

    @classmethod
    def neutral(cls, sae: SAE) -> Specificity:
        """Summed activation ranks and every feature may be hinted (as if the SAE had no statistics)."""
        out = cls.__new__(cls)
        out.weights, out.hintable = torch.ones(sae.d_sae), torch.ones(sae.d_sae, dtype=torch.bool)
        return out

    def weight(self, feature: int) -> Weight:
        return Weight(float(self.weights[feature]), bool(self.hintable[feature]))


def rank(totals: Mapping[int, float], weights: Mapping[int, Weight], *, top: int, also: int = 3) -> list[Ranked]:
    """The `top` hintable features of a span by score (from their summed activations `totals`), then up to `also`
    features that are never hinted (dense, punctuation, position), for tooltips. Features without a weight count
    as hintable with weight 1."""
    scored = [Ranked(f, total * w.per_unit, w.hintable) for f, total in totals.items() if total > 0
              for w in (weights.get(f, Weight(1.0, True)),)]
    scored.sort(key=lambda r: (-r.score, r.feature))
    hinted = [r for r in scored if r.hintable][:top]
    return hinted + [r for r in scored if not r.hintable][:also]


def rank_dense(totals: torch.Tensor, specificity: Specificity, *, top: int, also: int = 3) -> list[Ranked]:
    """`rank` over a dense vector of summed activations, one per feature (the same order, in double precision as
    `rank` computes it), without a Python loop over the features."""
    scores = totals.double() * specificity.weights.double()
    fired = totals > 0
    out: list[Ranked] = []
    for hintable, limit in ((True, top), (False, also)):
        mask = fired & (specificity.hintable if hintable else ~specificity.hintable)
        n = int(mask.sum())
        if not n or limit <= 0:
            continue
        values, index = torch.where(mask, scores, float("-inf")).topk(min(n, limit + 8))
        picked = sorted(zip((-v for v in values.tolist()), index.tolist(), strict=True))[:limit]
        out += [Ranked(f, -neg, hintable) for neg, f in picked]
    return out


@dataclass(frozen=True)
class Specific:
    """A feature ranked by how specific it is to a passage: its score there (`rank`'s, times `share`), the share
    of its density (activation per token) that falls in the passage rather than around it, and its peak there."""

    feature: int
    score: float
    share: float
    peak: float
    hintable: bool = True


def rank_passage(feats: torch.Tensor, inside: torch.Tensor, specificity: Specificity, *, top: int) -> list[Specific]:
    """The `top` hintable features most specific to the tokens where `inside` is True (a passage) among all of
    `feats` `[n_tokens, d_sae]` (its document): ranked as the hints are (summed activation over the passage in units
    of the feature's usual strength, times log(1 / its corpus firing rate)), times the share of the feature's
    density inside the passage against outside it (1 when it fires only there or the passage is the whole text,
    1/2 when it is as dense around it). A feature the whole document is about thus ranks below one this passage
    alone has."""
    inside = inside.bool()
    n_in, n_out = int(inside.sum()), int((~inside).sum())
    if n_in == 0:
        return []
    block = feats[inside].float()
    total, peak = block.sum(0), block.max(0).values
    density = total / n_in
    if n_out:
        around = feats[~inside].float().sum(0) / n_out
        share = torch.where(density > 0, density / (density + around).clamp_min(1e-12), torch.zeros_like(density))
    else:
        share = torch.ones_like(density)
    scores = total.double() * specificity.weights.double() * share.double()
    mask = (total > 0) & specificity.hintable
    n = int(mask.sum())
    if not n or top <= 0:
        return []
    values, index = torch.where(mask, scores, float("-inf")).topk(min(n, top))
    return [Specific(f, v, float(share[f]), float(peak[f])) for v, f in zip(values.tolist(), index.tolist(),
                                                                          strict=True)]


class Hintable(Protocol):
    @property
    def feature(self) -> int: ...

    @property
    def hintable(self) -> bool: ...


H = TypeVar("H", bound=Hintable)


def _mentions(words: set[str], word: str) -> bool:
    """Whether `words` (a text's, lower case) hold `word` or a form of it (plural, -ed, -ing, a longer word it
    starts, when it has four letters or more)."""
    return any(w == word or w in (word + "s", word + "es", word + "ed", word + "ing")
               or (len(word) >= 4 and w.startswith(word)) for w in words)
_LABEL_WORD = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*")


def pick_hints(ranked: Iterable[H], labels: Mapping[int, str], count: int, *,
               names: Mapping[int, Sequence[str]] | None = None, text: str | None = None) -> list[tuple[H, str]]:
    """The hint of a span: its first `count` hintable features (in ranked order) that have a label in `labels`, each
    with the label shown for it. Words an earlier feature of the same hint already shows are left out of a later
    label, and a feature with nothing new to say gives its slot to the next one (no ⟨pay, money · pay⟩). A label
    word that is a name (`names`: per feature) is shown only where the span's `text` mentions it: a character's
    name says nothing about a paragraph she is not in."""
    out: list[tuple[H, str]] = []
    said: set[str] = set()
    mentioned = {w.lower() for w in _LABEL_WORD.findall(text)} if text is not None else set()
    for item in ranked:
        if len(out) >= count:
            break
        if not item.hintable:
            continue
        unnamed = {n.lower() for n in (names or {}).get(item.feature, ())} - mentioned
        words = [w.strip() for w in labels.get(item.feature, "").split(",")
                 if w.strip() and w.strip().lower() not in unnamed]
        if text is not None and len(words) > 1:
            # a label of several words names several things the feature fires on: show the ones this text
            # mentions (the sense at work here), else the first, the one that tells most
            words = [w for w in words if _mentions(mentioned, w.lower())] or words[:1]
        new = [w for w in words if w.lower() not in said]
        if not new:
            continue
        said.update(w.lower() for w in words)
        said.update(m.group(0).lower() for w in words for m in _LABEL_WORD.finditer(w))
        out.append((item, ", ".join(new)))
    return out
