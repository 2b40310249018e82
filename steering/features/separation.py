"""Labels chosen by how well they separate: of the words a feature's contexts offer, the one to `LABEL_WORDS` that
best tell the contexts where it fires from the background text where it is silent.

A context is the words within a window around a position (`WINDOW_BEFORE` tokens before it, `WINDOW_AFTER` after),
each reduced to its base form as the corpus spells it (`Vocabulary.lemma`). A candidate label "detects" a context
when the context holds one of the words it covers: itself, or for a broader WordNet word every word below it
(`livestock` covers `cattle`, `sheep`, ...). Its score is Youden's J on the feature's positive contexts (its top
activations and a sample of where it usually fires) against the background (a pool of positions spread over the
corpus, where the feature is silent): the share of positives detected minus the share of background detected. A
word that is everywhere detects the background as well; a name from one novel detects only that novel's share of
the positives. Words are added while they detect positives the earlier ones missed. The label's confidence is the
balanced accuracy of the chosen words as a detector, 0.5 + J / 2.

Candidates: words in at least `SUPPORT` of the positive contexts, the real words among the tokens the feature's
decoder direction promotes (what steering toward it writes), and WordNet's broader words for the leading nouns
(`steering.features.wordnet`, when its files are at hand). Every label word is one a writer knows: seen at least
`FAMILIAR` times in the corpus.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .wordnet import WordNet

WINDOW_BEFORE = 16
WINDOW_AFTER = 4
"""Tokens around a position whose words make up its context."""
LABEL_WORDS = 3
"""Words at most in a label."""
SUPPORT = 0.1
"""A candidate occurs in at least this share of the positive contexts (and in two of them)."""
GAIN = 0.05
"""A further label word must raise J by at least this much..."""
ALSO = 0.5
"""...and separate at least this share of what the first word does on its own."""
FAMILIAR = 20
"""Occurrences in the corpus a label word needs (rarer words are not ones a writer knows)."""
NAME_SHARE = 0.85
"""A word written with a capital in this share of its occurrences or more is a name."""
BROADER_FROM = 6
"""WordNet's broader words are looked up for this many leading candidates..."""
BROADER_FAMILIAR = 50
"""...and one is a candidate when the corpus has it this often and it covers two of the feature's own words."""

WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")
_VOWEL = re.compile(r"[aeiouy]", re.IGNORECASE)

_STOPWORD_TEXT = """
a about above after again against all am an and any are as at be because been before being below between both but
by can could did do does doing down during each few for from further had has have having he her here hers herself
him himself his how i if in into is it its itself just me might more most must my myself no nor not now of off on
once only or other ought our ours ourselves out over own same shall she should so some such than that the their
theirs them themselves then there these they this those through to too under until up upon very was we were what
when where which while who whom why will with would yet you your yours yourself yourselves also may much many one
two three us said say says like well even still back get got go goes went gone make made let thus though ll ve re
genus etc see example chapter section
"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())
"""Words too common to name what a feature is about, and the reference apparatus of the corpus (WordNet's `genus`,
a manual's `see section`), which names no topic a writer means."""


def label_words(text: str) -> list[str]:
    """The lower-cased words of `text`, in order."""
    return [m.group(0).lower() for m in WORD.finditer(text)]


def is_label_word(word: str) -> bool:
    """A word a writer reads: letters only (inner apostrophes and hyphens allowed), three or more with a vowel, not
    a stopword."""
    return len(word) >= 3 and bool(WORD.fullmatch(word)) and bool(_VOWEL.search(word)) and \
        word.lower() not in STOPWORDS


class Vocabulary:
    """The corpus' words: how often each occurs (lower-cased), how often inside a sentence and how often with a
    capital there (names), and each form's base."""

    def __init__(self, counts: dict[str, int], capitalised: dict[str, int] | None = None,
                 inside: dict[str, int] | None = None) -> None:
        self.counts = counts
        self.capitalised = capitalised or {}
        self.inside = inside if inside is not None else counts
        self._lemma: dict[str, str] = {}

    @classmethod
    def of_text(cls, texts: Iterable[str]) -> Vocabulary:
        counts: Counter[str] = Counter()
        inside: Counter[str] = Counter()
        capitalised: Counter[str] = Counter()
        for text in texts:
            for match in WORD.finditer(text):
                word = match.group(0)
                lower = word.lower()
                counts[lower] += 1
                before = text[:match.start()].rstrip(" \t\"'“‘(")
                if not before or before[-1] in ".!?:;\n":
                    continue  # a sentence's first word has a capital whatever it is
                inside[lower] += 1
                if word[0].isupper():
                    capitalised[lower] += 1
        return cls(dict(counts), dict(capitalised), dict(inside))

    def familiar(self, word: str) -> bool:
        return self.counts.get(word, 0) >= FAMILIAR

    def is_name(self, word: str) -> bool:
        """Written with a capital nearly always (`NAME_SHARE`) inside a sentence, among at least five there."""
        n = self.inside.get(word, 0)
        return n >= 5 and self.capitalised.get(word, 0) >= NAME_SHARE * n

    def lemma(self, word: str) -> str:
        """`word`'s base form, as the corpus spells it: the plural, -ed or -ing form's stem when the corpus has
        that stem as a word (ships -> ship, baked -> bake, stopped -> stop); else `word`."""
        if word not in self._lemma:
            self._lemma[word] = self._base(word)
        return self._lemma[word]

    def _base(self, word: str) -> str:
        tries: list[str] = []
        if word.endswith("ies"):
            tries.append(word[:-3] + "y")
        if word.endswith("es"):
            tries += [word[:-1], word[:-2]]
        elif word.endswith("s") and not word.endswith(("ss", "us", "is")):
            tries.append(word[:-1])
        for ending in ("ed", "ing"):
            if word.endswith(ending) and len(word) > len(ending) + 2:
                stem = word[: -len(ending)]
                tries += [stem, stem + "e"]
                if len(stem) > 2 and stem[-1] == stem[-2]:
                    tries.append(stem[:-1])
        for base in tries:
            if len(base) >= 3 and self.counts.get(base, 0) >= 2:
                return base
        return word


class Contexts:
    """The words around positions of a token stream (`WINDOW_BEFORE`, `WINDOW_AFTER`), never across a sequence of
    `context` tokens or a document separator, as sets of base forms."""

    def __init__(self, tokenizer: Any, stream: torch.Tensor, context: int, separators: set[int],
                 vocabulary: Vocabulary) -> None:
        self.stream = stream.tolist() if isinstance(stream, torch.Tensor) else list(stream)
        self.context, self.separators, self.vocabulary = context, separators, vocabulary
        self._pieces: dict[int, str] = {}
        self._tokenizer = tokenizer

    def _piece(self, token: int) -> str:
        if token not in self._pieces:
            self._pieces[token] = "" if token in self.separators else str(self._tokenizer.decode([token]))
        return self._pieces[token]

    def words(self, position: int) -> frozenset[str]:
        start = position - position % self.context
        lo, hi = max(start, position - WINDOW_BEFORE), min(start + self.context, len(self.stream),
                                                            position + 1 + WINDOW_AFTER)
        ids = self.stream[lo:hi]
        peak = position - lo
        cuts = [i for i, t in enumerate(ids) if t in self.separators]
        before = [i for i in cuts if i < peak]
        after = [i for i in cuts if i > peak]
        ids = ids[(before[-1] + 1 if before else 0):(after[0] if after else len(ids))]
        text = "".join(self._piece(t) for t in ids)
        lemma = self.vocabulary.lemma
        return frozenset(lemma(m.group(0).lower()) for m in WORD.finditer(text) if is_label_word(m.group(0)))


@dataclass(frozen=True)
class Label:
    words: tuple[str, ...]
    confidence: float
    """Balanced accuracy of the words as a detector of the feature's contexts against the background (0.5:
    chance; 0 when there is no label)."""
    names: tuple[str, ...] = ()
    """The label's words that are names (shown only where the text mentions them)."""
    noun: bool | None = None
    """Whether the first word is mostly a noun (WordNet; None: not known). A thing or a category names what a
    paragraph is about more often than a verb, an adjective or an adverb does."""
    common: float = 0.0
    """Share of the background contexts holding the first word: how everyday it is."""

    @property
    def text(self) -> str:
        return ", ".join(self.words)


NO_LABEL = Label((), 0.0)


class Background:
    """The pool of background contexts, indexed by word: which pool contexts hold each word."""

    def __init__(self, contexts: Sequence[frozenset[str]]) -> None:
        self.size = len(contexts)
        index: dict[str, list[int]] = {}
        for i, words in enumerate(contexts):
            for w in words:
                index.setdefault(w, []).append(i)
        self._index = {w: np.asarray(rows, dtype=np.int64) for w, rows in index.items()}
        self._covers: dict[frozenset[str], np.ndarray] = {}

    def holds(self, cover: frozenset[str]) -> np.ndarray:
        """`[size]` bool: the pool contexts holding a word of `cover`."""
        if cover not in self._covers:
            mask = np.zeros(self.size, dtype=bool)
            for w in cover:
                rows = self._index.get(w)
                if rows is not None:
                    mask[rows] = True
            self._covers[cover] = mask
        return self._covers[cover]


def separating_label(positives: Sequence[frozenset[str]], silent: np.ndarray, background: Background,
                     vocabulary: Vocabulary, *, promoted: Iterable[str] = (), wordnet: WordNet | None = None,
                     broader: bool = False) -> Label:
    """The label of one feature: its positive contexts' words against the background contexts where it is silent
    (`silent`: `[background.size]` bool). With `wordnet`, whether the label is a noun; with `broader` too, WordNet's
    broader words are candidates (measured: they name the topic less often, see the module's notes)."""
    if not positives or not silent.any():
        return NO_LABEL
    support: Counter[str] = Counter(w for words in positives for w in words)
    needed = max(2, int(np.ceil(SUPPORT * len(positives))))
    def readable(w: str) -> bool:  # an English word (WordNet knows it) or a name; not `sklearn`, `dev` or `foo`
        return wordnet is None or wordnet.knows(w) or vocabulary.is_name(w)

    candidates: dict[str, frozenset[str]] = {w: frozenset((w,)) for w, n in support.items()
                                             if n >= needed and vocabulary.familiar(w) and readable(w)}
    for token in promoted:
        word = token.strip().lower()
        if is_label_word(word) and vocabulary.familiar(vocabulary.lemma(word)) and readable(vocabulary.lemma(word)):
            candidates.setdefault(vocabulary.lemma(word), frozenset((vocabulary.lemma(word),)))
    if wordnet is not None and broader:
        plain = set(candidates)
        leading = sorted(candidates, key=lambda w: -support.get(w, 0))[:BROADER_FROM]
        for word in leading:
            for wider in wordnet.broader(word):
                if wider in candidates or not is_label_word(wider) or \
                        vocabulary.counts.get(wider, 0) < BROADER_FAMILIAR:
                    continue
                cover = wordnet.covers(wider)
                if len(cover & plain) >= 2:  # it groups words of this feature's own (cattle, sheep -> livestock)
                    candidates[wider] = cover
    if not candidates:
        return NO_LABEL
    n_silent = int(silent.sum())

    def detected(cover: frozenset[str]) -> tuple[np.ndarray, float]:
        hits = np.fromiter((not words.isdisjoint(cover) for words in positives), dtype=bool, count=len(positives))
        return hits, float((background.holds(cover) & silent).sum()) / n_silent

    scored = []
    for word, cover in candidates.items():
        hits, false = detected(cover)
        scored.append((float(hits.mean()) - false, word, cover, hits))
    scored.sort(key=lambda s: (-s[0], s[1]))
    best_j, word, cover, hits = scored[0]
    if best_j <= 0:
        return NO_LABEL
    chosen, union = [word], cover
    for j_alone, word, cover, _ in scored[1: 4 * LABEL_WORDS]:
        if len(chosen) >= LABEL_WORDS or j_alone < ALSO * best_j:
            break
        if any(word in candidates[c] or c in cover for c in chosen):
            continue  # a word under an earlier one (or above it) adds nothing a writer would read
        new_hits, new_false = detected(union | cover)
        j = float(new_hits.mean()) - new_false
        if j >= best_j + GAIN:
            chosen.append(word)
            union, best_j = union | cover, j
    first = chosen[0]
    return Label(tuple(chosen), 0.5 + best_j / 2, tuple(w for w in chosen if vocabulary.is_name(w)),
                 wordnet.is_noun(first) if wordnet is not None else None,
                 float(background.holds(frozenset((first,))).mean()))
