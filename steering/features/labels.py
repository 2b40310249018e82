"""Feature labels a writer reads: a few words from the feature's top activating contexts (the words at and around
the peak tokens, weighted against how common they are), cross-checked with the logit lens of its decoder row."""

from __future__ import annotations

import json
import math
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
from steering.sae.layouts import FEATURE_STATS, saelens_folder

from .stats import FeatureStats, is_filler


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
LABEL_WORDS = 3
"""Words at most in a label."""
SUPPORT = 0.25
"""A label word occurs in at least this share of the feature's top contexts (and in two of them)."""
CONTEXTS_KEPT = 8
"""Top activating contexts kept per feature in labels.json (the examples a tooltip shows)."""

_STOPWORD_TEXT = """
a about above after again against all am an and any are as at be because been before being below between both but
by can could did do does doing down during each few for from further had has have having he her here hers herself
him himself his how i if in into is it its itself just me might more most must my myself no nor not now of off on
once only or other ought our ours ourselves out over own same shall she should so some such than that the their
theirs them themselves then there these they this those through to too under until up upon very was we were what
when where which while who whom why will with would yet you your yours yourself yourselves also may much many one
two three us said say says like well even still back get got go goes went gone make made let thus though ll ve re
"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())
"""Words too common to name what a feature is about."""

_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")
_VOWEL = re.compile(r"[aeiouyàâäéèêëíîïóôöúùûü]", re.IGNORECASE)
_NEAR = {0: 1.0, 1: 0.5, 2: 0.25, 3: 0.25}
"""Weight of a word by its distance in words from the peak token."""


def label_words(text: str) -> list[str]:
    """The lower-cased words of `text`, in order."""
    return [m.group(0).lower() for m in _WORD.finditer(text)]


def is_label_word(word: str) -> bool:
    """A word a writer reads: letters only (inner apostrophes and hyphens allowed), three or more with a vowel, not
    a stopword."""
    return len(word) >= 3 and bool(_WORD.fullmatch(word)) and bool(_VOWEL.search(word)) and \
        word.lower() not in STOPWORDS


@dataclass(frozen=True)
class Context:
    """A top activating context: the text around the peak token (never across a document or sequence boundary)."""

    left: str
    token: str
    right: str
    activation: float

    def marked(self) -> str:
        return f"{self.left}«{self.token}»{self.right}".replace("\n", "⏎")

    def words(self) -> list[tuple[str, int]]:
        """(lower-cased word, distance in words from the peak token) for every word of the context."""
        text = self.left + self.token + self.right
        lo, hi = len(self.left), len(self.left) + len(self.token)
        spans = [(m.start(), m.end(), m.group(0).lower()) for m in _WORD.finditer(text)]
        before = [w for a, b, w in spans if b <= lo]
        after = [w for a, b, w in spans if a >= hi]
        out = [(w, 0) for a, b, w in spans if a < hi and b > lo]
        out += [(w, len(before) - i) for i, w in enumerate(before)]
        out += [(w, i + 1) for i, w in enumerate(after)]
        return out


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


def word_counts(tokenizer: Any, stream: torch.Tensor, chunk: int = 4096) -> dict[str, int]:
    """How often each (lower-cased) word occurs in the text of `stream`."""
    counts: dict[str, int] = {}
    for start in range(0, len(stream), chunk):
        text = tokenizer.decode(stream[start:start + chunk].tolist(), skip_special_tokens=True)
        for match in _WORD.finditer(text):
            word = match.group(0).lower()
            counts[word] = counts.get(word, 0) + 1
    return counts


def word_label(contexts: Sequence[Context], counts: dict[str, int], promoted: Sequence[str] = ()) -> str:
    """One to `LABEL_WORDS` words naming what the contexts share: the words at and near the peak tokens, weighted
    by activation and by how rare they are in the corpus, cross-checked with the logit lens (a word the feature also
    promotes counts more). Empty when no real word stands out."""
    if not contexts:
        return ""
    if sum(is_filler(c.token) for c in contexts) > len(contexts) / 2:
        return ""  # the feature fires on punctuation or symbols: its neighbours' words do not name it
    total = sum(counts.values()) or 1
    top = max(c.activation for c in contexts) or 1.0
    lens = {p.strip().lower() for p in promoted}
    score: dict[str, float] = {}
    support: dict[str, int] = {}
    for c in contexts:
        seen = set()
        for word, distance in c.words():
            if distance not in _NEAR or not is_label_word(word):
                continue
            rarity = math.log((total + 1) / (counts.get(word, 0) + 1))
            score[word] = score.get(word, 0.0) + max(c.activation, 0.0) / top * _NEAR[distance] * rarity
            if word not in seen:
                support[word] = support.get(word, 0) + 1
                seen.add(word)
    needed = max(2, math.ceil(SUPPORT * len(contexts))) if len(contexts) >= 4 else 1
    ranked = sorted(((value * (1.5 if word in lens else 1.0), word) for word, value in score.items()
                     if support[word] >= needed), reverse=True)
    if not ranked or ranked[0][0] <= 0:
        return ""
    best = ranked[0][0]
    return ", ".join(word for value, word in ranked[:LABEL_WORDS] if value >= 0.4 * best)


@torch.inference_mode()
def build_labels(lm: LoadedModel, sae: SAE, stats: FeatureStats, stream: torch.Tensor, *, context: int = 128,
                 lens_top: int = 8) -> dict[str, Any]:
    """labels.json: per feature a label in words, its top contexts, activating tokens and logit-lens tokens."""
    special = set(getattr(lm.tokenizer, "all_special_ids", None) or []) | lm.eos_token_ids
    counts = word_counts(lm.tokenizer, stream)
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
            features[str(f)] = {
                "label": word_label(contexts, counts, promoted),
                "max_act": round(float(stats.max_act[f]), 4),
                "frequency": float(stats.frequency[f]),
                "activating": _most_common([c.token for c in contexts], 5),
                "promoted": promoted,
                "suppressed": suppressed,
                "contexts": [{"text": c.marked(), "activation": round(c.activation, 3)}
                             for c in contexts[:CONTEXTS_KEPT]],
            }
    return {"version": 2, "hook": sae.hook.name if sae.hook else None, "tokens": stats.tokens, "features": features}


def describe_sae(lm: LoadedModel, sae: SAE, stream: torch.Tensor, *, context: int = 128, tokens: int = 100_000,
                 top: int = 32) -> dict[str, Any]:
    """One pass of `sae` over `stream`: sets its feature statistics (what ranking and steering need) and returns
    its labels.json."""
    from .stats import feature_statistics

    stats = feature_statistics(lm, sae, stream, context=context, tokens=tokens, top=top)
    sae.set_feature_stats(**stats.tensors())
    return build_labels(lm, sae, stats, stream, context=context)


@dataclass(frozen=True)
class Described:
    """What `write_stats_and_labels` wrote into an SAE's folder."""

    folder: Path
    tokens: int
    """Corpus tokens read."""
    features: int
    labelled_in_words: int
    """Features whose label has words (the others' label is empty)."""

    def to_dict(self) -> dict[str, Any]:
        return {"sae": str(self.folder), "tokens": self.tokens, "features": self.features,
                "labelled_in_words": self.labelled_in_words}


def write_stats_and_labels(lm: LoadedModel, sae: SAE, stream: torch.Tensor, *, tokens: int = 200_000,
                           context: int = 128) -> Described:
    """One pass of `sae` over a corpus' token `stream` (`describe_sae`), written into the SAE's folder: its feature
    statistics (feature_stats.safetensors) and labels.json, each file replaced atomically. That is what `train-sae`
    writes, for an SAE trained elsewhere or on other text; the SAE must have been read from the SAELens layout."""
    folder = saelens_folder(sae)
    if folder is None:
        raise TinymorphError("sae-stats writes into an SAE folder in the SAELens layout (cfg.json + "
                             "sae_weights.safetensors); this SAE is not one.")
    labels = describe_sae(lm, sae, stream, context=context, tokens=tokens)
    write_bytes(folder / FEATURE_STATS, sae.stats_bytes())
    write_bytes(folder / LABELS_FILE, json.dumps(labels, ensure_ascii=False).encode())
    named = sum(bool(e["label"]) for e in labels["features"].values())
    return Described(folder, labels["tokens"], sae.d_sae, named)


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
