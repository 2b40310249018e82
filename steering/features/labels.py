"""Feature labels a writer reads (labels.json): per feature a few words chosen by how well they separate the contexts
where it fires from the background (`separation.py`), its top contexts, and the logit lens of its decoder row."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from steering.atomic import write_bytes
from steering.errors import TinymorphError
from steering.runtime.models import LoadedModel
from steering.sae.autoencoder import SAE
from steering.sae.layouts import FEATURE_STATS, stats_folder

from .ranking import CONFIDENCE_FLOOR
from .separation import (
    WINDOW_AFTER,
    WINDOW_BEFORE,
    Background,
    Contexts,
    Vocabulary,
    is_label_word,
    separating_label,
)
from .stats import FeatureStats
from .wordnet import WordNet


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
CONTEXTS_KEPT = 8
"""Top activating contexts kept per feature in labels.json (the examples a tooltip shows)."""
SAMPLED = 24
"""Positions per feature drawn where it usually fires (beside its top 32) for choosing its label."""
BACKGROUND = 4000
"""Background positions a label must separate the feature's contexts from."""


@dataclass(frozen=True)
class Context:
    """A top activating context: the text around the peak token (never across a document or sequence boundary)."""

    left: str
    token: str
    right: str
    activation: float

    def marked(self) -> str:
        return f"{self.left}«{self.token}»{self.right}".replace("\n", "⏎")


def context_at(tokenizer: Any, stream: torch.Tensor, position: int, context: int, separators: set[int], *,
               before: int = 12, after: int = 4, activation: float = 0.0) -> Context:
    """The context of `stream[position]`, cut at the ends of its sequence and at document separators."""
    seq_start = position - position % context
    lo, hi = max(seq_start, position - before), min(seq_start + context, len(stream), position + 1 + after)
    ids, peak = stream[lo:hi].tolist(), position - lo
    cut = [i for i in range(peak) if ids[i] in separators]
    if cut:
        ids, peak = ids[cut[-1] + 1:], peak - cut[-1] - 1
    ends = [i for i in range(peak + 1, len(ids)) if ids[i] in separators]
    if ends:
        ids = ids[:ends[0]]

    def text(part: list[int]) -> str:
        return str(tokenizer.decode(part, skip_special_tokens=True))

    return Context(text(ids[:peak]), text(ids[peak:peak + 1]), text(ids[peak + 1:]), activation)


def vocabulary(tokenizer: Any, stream: torch.Tensor, chunk: int = 4096) -> Vocabulary:
    """The words of the text of `stream`: counts, capitals, base forms."""
    return Vocabulary.of_text(tokenizer.decode(stream[start:start + chunk].tolist(), skip_special_tokens=True)
                              for start in range(0, len(stream), chunk))


@torch.inference_mode()
def build_labels(lm: LoadedModel, sae: SAE, stats: FeatureStats, stream: torch.Tensor, *, context: int = 128,
                 lens_top: int = 8, wordnet: WordNet | None = None) -> dict[str, Any]:
    """labels.json: per feature a label in words chosen by how well it separates the feature's contexts from the
    background (`steering.features.separation`) with its confidence, its top contexts, activating tokens and
    logit-lens tokens. `stats` must come with a sample and a background pool (`feature_statistics(sample=...,
    pool=...)`)."""
    special = set(getattr(lm.tokenizer, "all_special_ids", None) or []) | lm.eos_token_ids
    words = vocabulary(lm.tokenizer, stream)
    around = Contexts(lm.tokenizer, stream, context, special, words)
    if stats.pool_tokens is not None and stats.pool_fired is not None and len(stats.pool_tokens):
        pool, fired = stats.pool_tokens.tolist(), stats.pool_fired
    else:
        pool, fired = [], torch.zeros(0, sae.d_sae, dtype=torch.bool)
    background = Background([around.words(p) for p in pool])
    silent_all = (~fired).numpy()
    features: dict[str, Any] = {}
    for first in range(0, sae.d_sae, 256):
        rows = sae.W_dec[first : first + 256].to(lm.device, lm.dtype)[:, None, :]
        h = lm.final_norm(rows) if lm.final_norm is not None else rows
        logits = lm.unembed(h)[:, 0].float()
        hi, lo = logits.topk(lens_top, dim=-1), (-logits).topk(lens_top, dim=-1)
        for j in range(rows.shape[0]):
            f = first + j
            promoted = [lm.tokenizer.decode([i]) for i in hi.indices[j].tolist() if i not in special]
            suppressed = [lm.tokenizer.decode([i]) for i in lo.indices[j].tolist() if i not in special]
            contexts = [context_at(lm.tokenizer, stream, pos, context, special, activation=value)
                        for value, pos in zip(stats.top_values[f].tolist(), stats.top_tokens[f].tolist(), strict=True)
                        if pos >= 0 and int(stream[pos]) not in special]
            where = [p for p in stats.top_tokens[f].tolist() if p >= 0]
            if stats.sample_tokens is not None:
                where += [p for p in stats.sample_tokens[f].tolist() if p >= 0 and p not in where]
            label = separating_label([around.words(p) for p in where if int(stream[p]) not in special],
                                     silent_all[:, f], background, words, promoted=promoted, wordnet=wordnet)
            activating = _most_common([c.token for c in contexts], 5)
            features[str(f)] = {
                "label": label.text or token_label(activating),
                "confidence": round(label.confidence, 3),
                "names": list(label.names),
                "noun": label.noun,
                "common": round(label.common, 4),
                "max_act": round(float(stats.max_act[f]), 4),
                "frequency": float(stats.frequency[f]),
                "activating": activating,
                "promoted": promoted,
                "suppressed": suppressed,
                "contexts": [{"text": c.marked(), "activation": round(c.activation, 3)}
                             for c in contexts[:CONTEXTS_KEPT]],
            }
    return {"version": 3, "hook": sae.hook.name if sae.hook else None, "tokens": stats.tokens,
            "labeller": {"window": [WINDOW_BEFORE, WINDOW_AFTER], "sampled": SAMPLED, "background": len(pool),
                         "wordnet": wordnet is not None},
            "features": features}


def describe_sae(lm: LoadedModel, sae: SAE, stream: torch.Tensor, *, context: int = 128, tokens: int = 100_000,
                 top: int = 32, wordnet: WordNet | None = None) -> dict[str, Any]:
    """One pass of `sae` over `stream`: sets its feature statistics (what ranking and steering need) and returns
    its labels.json."""
    from .stats import feature_statistics

    stats = feature_statistics(lm, sae, stream, context=context, tokens=tokens, top=top, sample=SAMPLED,
                               pool=BACKGROUND)
    sae.set_feature_stats(**stats.tensors())
    return build_labels(lm, sae, stats, stream, context=context, wordnet=wordnet)


@dataclass(frozen=True)
class Described:
    """What `write_stats_and_labels` wrote into an SAE's folder."""

    folder: Path
    tokens: int
    """Corpus tokens read."""
    features: int
    labelled_in_words: int
    """Features whose label was chosen from words that separate (the others say what their tokens are, or nothing)."""
    hintable_labels: int = 0
    """Features whose label separates well enough to be hinted (`ranking.CONFIDENCE_FLOOR`)."""

    def to_dict(self) -> dict[str, Any]:
        return {"sae": str(self.folder), "tokens": self.tokens, "features": self.features,
                "labelled_in_words": self.labelled_in_words, "hintable_labels": self.hintable_labels}


def write_stats_and_labels(lm: LoadedModel, sae: SAE, stream: torch.Tensor, *, tokens: int = 200_000,
                           context: int = 128, wordnet: WordNet | None = None,
                           labels_only: bool = False) -> Described:
    """One pass of `sae` over a corpus' token `stream` (`describe_sae`), written into the SAE's folder: its feature
    statistics (feature_stats.safetensors) and labels.json, each file replaced atomically. That is what `train-sae`
    writes, for an SAE trained elsewhere or on other text; the SAE must have been read from files (any layout: they go
beside its weights, where `load_sae` reads them).
    With `labels_only`, the statistics (and the steering calibrated on them) stay as they are."""
    folder = stats_folder(sae)
    if folder is None:
        raise TinymorphError("sae-stats writes beside an SAE's files; this SAE was not read from files.")
    kept = dict(sae.stats)
    labels = describe_sae(lm, sae, stream, context=context, tokens=tokens, wordnet=wordnet)
    if labels_only:
        sae.stats = kept
    else:
        write_bytes(folder / FEATURE_STATS, sae.stats_bytes())
    write_bytes(folder / LABELS_FILE, json.dumps(labels, ensure_ascii=False).encode())
    entries = labels["features"].values()
    return Described(folder, labels["tokens"], sae.d_sae, sum(e["confidence"] > 0 for e in entries),
                     sum(e["confidence"] >= CONFIDENCE_FLOOR for e in entries))


def token_label(activating: Sequence[str]) -> str:
    """The label of a feature no word separates (confidence 0: never hinted, shown on hover): what its top tokens
    are, in words: numbers, punctuation, or the word itself in quotes (`“of”`)."""
    tokens = [t.strip() for t in activating if t.strip()]
    if not tokens:
        return "spaces and layout" if activating else ""
    if all(t.replace(",", "").replace(".", "").isdigit() for t in tokens[:3]):
        return "numbers"
    if all(not any(ch.isalnum() for ch in t) for t in tokens[:3]):
        return "punctuation"
    return ", ".join(f"“{t}”" for t in tokens[:2])


def _most_common(tokens: list[str], n: int) -> list[str]:
    counts: dict[str, int] = {}
    for t in tokens:
        key = t.strip().lower()
        if key:
            counts[key] = counts.get(key, 0) + 1
    return [t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]


def feature_label(entry: dict[str, Any], lens: LogitLens) -> str:
    """A feature's label: the one labels.json gives (empty when no word names the feature), else the real words
    among the tokens its decoder direction promotes; never token fragments."""
    if "label" in entry:
        return str(entry["label"])
    words = dict.fromkeys(t.token.strip().lower() for t in lens.promoted if is_label_word(t.token.strip()))
    return ", ".join([w for w in words if len(w) >= 3][:2])


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


_WORD = re.compile(r"[A-Za-z]+")


def corpus_words(labels: dict[str, Any] | None) -> frozenset[str]:
    """The whole words (lower case) of the texts labels.json quotes (every feature's contexts): the words of the
    corpus the SAE was described on. Empty without labels."""
    words: set[str] = set()
    for entry in (labels or {}).get("features", {}).values():
        contexts = entry.get("contexts") if isinstance(entry, dict) else None
        for context in contexts if isinstance(contexts, list) else ():
            text = context.get("text") if isinstance(context, dict) else None
            if isinstance(text, str):  # a context is a window of tokens: its first and last words may be cut
                words.update(w.lower() for w in _WORD.findall(text.replace("«", "").replace("»", "").strip())[1:-1])
    return frozenset(words)


def is_word_token(token: str, words: frozenset[str]) -> bool:
    """Whether a promoted token reads as a word to a writer: it starts a word (a leading space), is lower-case
    letters only, 3 or more, and is a whole word of the corpus (`corpus_words`), so no fragments (`sphinct`,
    `incorpor`); without a corpus the first checks only (a start of a word may still slip through)."""
    if token[:1] != " ":
        return False
    word = token[1:]
    if len(word) < 3 or not word.isalpha() or not word.islower():
        return False
    return word in words if words else True


def readable_label(label: str, words: frozenset[str]) -> str:
    """A label as a writer reads it: of a label that quotes the tokens a feature fires on (`“man”, “ar”`), the
    quoted tokens that are whole words of the corpus (`“man”`); "" when none is (`“chers”, “ges”`: a feature
    without words). Labels in words are as they are; without a corpus, too."""
    parts = [p.strip() for p in label.split(",")]
    if not words or not parts or not all(p[:1] == "“" and p[-1:] == "”" for p in parts):
        return label
    return ", ".join(p for p in parts if p[1:-1].lower() in words and p[1:-1].isalpha())


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
