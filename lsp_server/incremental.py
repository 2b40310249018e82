"""Incremental annotation: after an edit, re-read only the spans (paragraphs, sentences, lines) the edit touched.

The model reads the edited spans with up to `CONTEXT_CHARS` of the text before them; the other spans keep their
features from the previous annotation (moved by the edit's length change). Spans after the edit were computed with
the old text before them, so once the writer pauses the server reads the whole document again, a few spans per job
(`rereads`), so that completions wait behind at most one short job.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from steering.features.annotate import Annotation, SpanFeatures, TokenFeatures
from steering.spans import split_spans

from .text import common_prefix, common_suffix

CONTEXT_CHARS = 1500
"""Text before the first edited span that the model reads again with it (about 350 tokens of English)."""


@dataclass(frozen=True)
class Plan:
    """What to read again: `text[start:end]`, keeping results from `keep_from` on, for the spans in `dirty`."""

    start: int
    keep_from: int
    end: int
    dirty: tuple[tuple[int, int], ...]
    reused: tuple[tuple[int, int, int], ...]
    """(new start, new end, shift) of the spans taken from the old annotation; old offsets are new - shift."""


def plan(old: Annotation, new_text: str, granularity: str) -> Plan | None:
    """How to update `old` (an annotation of a whole document) to `new_text`; None when there is nothing to reuse
    or nothing changed."""
    old_text = old.text
    if old_text == new_text or not old.paragraphs:
        return None
    prefix = common_prefix(old_text, new_text)
    suffix = common_suffix(old_text[prefix:], new_text[prefix:])
    change_end = len(new_text) - suffix  # the changed region in the new text is [prefix, change_end)
    shift = len(new_text) - len(old_text)
    old_spans = {(p.start, p.end) for p in old.paragraphs}
    dirty, reused = [], []
    for start, end in split_spans(new_text, granularity):
        if start <= change_end and end >= prefix:
            dirty.append((start, end))
        elif end < prefix and (start, end) in old_spans:
            reused.append((start, end, 0))
        elif start > change_end and (start - shift, end - shift) in old_spans:
            reused.append((start, end, shift))
        else:
            dirty.append((start, end))
    if not reused:
        return None
    if not dirty:
        return Plan(0, 0, 0, (), tuple(reused))
    first, last = dirty[0][0], dirty[-1][1]
    # spans between edited ones are read again too, so that the fresh run's tokens never overlap reused ones
    dirty += [(s, e) for s, e, _ in reused if first <= s <= last]
    dirty.sort()
    reused = [r for r in reused if not first <= r[0] <= last]
    return Plan(context_start(new_text, first), first, dirty[-1][1], tuple(dirty), tuple(reused))


def context_start(text: str, first: int) -> int:
    """Where the context read with a span starting at `first` begins: up to `CONTEXT_CHARS` before it, at the
    start of a line, so the tokenizer sees a clean boundary."""
    context = max(0, first - CONTEXT_CHARS)
    if context > 0:
        line = text.rfind("\n", 0, context)
        context = line + 1 if line != -1 else 0
    return context


def rereads(old: Annotation, budget: int = 4000) -> list[Plan]:
    """Plans that read all of `old`'s spans again, about `budget` characters at a time (each a short job, so that
    a completion never waits long behind a full re-read)."""
    spans = [(p.start, p.end) for p in old.paragraphs]
    plans, i = [], 0
    while i < len(spans):
        j = i + 1
        while j < len(spans) and spans[j][1] - spans[i][0] <= budget:
            j += 1
        first, last = spans[i][0], spans[j - 1][1]
        dirty = tuple(spans[i:j])
        reused = tuple((s, e, 0) for s, e in spans[:i] + spans[j:])
        plans.append(Plan(context_start(old.text, first), first, last, dirty, reused))
        i = j
    return plans


def merge(old: Annotation, new_text: str, the_plan: Plan, fresh: Annotation | None) -> Annotation:
    """The annotation of `new_text`: spans in `the_plan.dirty` from `fresh` (an annotation of
    `new_text[the_plan.start:the_plan.end]`), the others from `old`, moved."""
    tokens: list[TokenFeatures] = []
    spans: list[SpanFeatures] = []
    old_by_span = {(p.start, p.end): p for p in old.paragraphs}
    for start, end, shift in the_plan.reused:
        span = old_by_span[(start - shift, end - shift)]
        spans.append(dataclasses.replace(span, start=start, end=end))
        tokens += [dataclasses.replace(t, start=t.start + shift, end=t.end + shift) for t in old.tokens
                   if start - shift <= t.start < end - shift]
    if fresh is not None:
        base = the_plan.start
        wanted = set(the_plan.dirty)
        for span in fresh.paragraphs:
            placed = (span.start + base, span.end + base)
            if placed in wanted:
                spans.append(dataclasses.replace(span, start=placed[0], end=placed[1]))
        tokens += [dataclasses.replace(t, start=t.start + base, end=t.end + base) for t in fresh.tokens
                   if t.start + base >= the_plan.keep_from]
    tokens.sort(key=lambda t: (t.start, t.end))
    tokens = [dataclasses.replace(t, index=i) for i, t in enumerate(tokens)]
    spans.sort(key=lambda s: s.start)
    weights = {**old.weights, **(fresh.weights if fresh is not None else {})}
    return Annotation(new_text, old.hook, tuple(tokens), tuple(spans), weights)
