"""Per-document state: what the server keeps for each open document besides its text (`DocState`), and the plain
data it holds: the last annotation, the suggestion, the running generation and the findings of watched features.

The modules that compute them (`pipeline`, `generation`, `findings`) import these types; this module imports none
of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from steering.features.annotate import Annotation, SpanFeatures
from steering.runtime.decode import CancelToken

from .text import Document


@dataclass(frozen=True)
class Finding:
    """A watched feature firing above its threshold in one sentence: `[start, end)` in the current text
    (`findings.find`)."""

    feature: int
    start: int
    end: int
    peak: float


@dataclass
class Running:
    """A document's generation (`generation.generate`): what it continues (`key`), its result and its cancel
    token."""

    key: tuple[Any, ...]
    task: asyncio.Task[str]
    cancel: CancelToken
    waiters: int = 0


@dataclass(frozen=True)
class Suggestion:
    """A steered continuation computed for one document version, to insert at `offset`."""

    version: int
    offset: int
    text: str


@dataclass(frozen=True)
class Annotated:
    """An annotation of `doc_text[base : base + len(annotation.text)]` made at document version `version`."""

    version: int
    base: int
    doc_length: int
    annotation: Annotation
    granularity: str = "paragraph"
    watch: tuple[int, ...] = ()
    """The watched features it kept on every token where they fire (`findings`)."""
    partial: bool = False
    """Only the edited spans were read again; the others keep features computed before the edit."""

    def spans(self, current: str) -> Iterator[tuple[int, SpanFeatures]]:
        """(where it starts in `current`, span) for each annotated span whose text is still there."""
        for span in self.annotation.paragraphs:
            at = self.locate(current, span.start, span.end)
            if at is not None:
                yield at, span

    def locate(self, current: str, start: int, end: int) -> int | None:
        """Where the annotated span `[start, end)` (annotation coordinates) now starts in `current`, if that text is
        unchanged there or shifted by the edits since; None if it changed."""
        piece = self.annotation.text[start:end]
        for shift in (0, len(current) - self.doc_length):
            at = self.base + start + shift
            if at >= 0 and current[at:at + len(piece)] == piece:
                return at
        return None


@dataclass
class DocState:
    """What the server keeps per open document besides its text."""

    doc: Document
    annotated: Annotated | None = None
    suggestion: Suggestion | None = None
    last_edit: int | None = None
    """String offset just after the last edit, where a suggestion goes."""
    visible: tuple[int, int] | None = None
    """The range the editor last asked hints for (string offsets)."""
    pending: asyncio.Task[Any] | None = None
    """The debounced annotation task."""
    reading: tuple[int, int] | None = None
    """The part of the document the annotation task reads (`pipeline.window` when it was scheduled)."""
    last_change: float | None = None
    """When the last change arrived (monotonic seconds)."""
    typing_interval: float | None = None
    """Smoothed time between changes while the writer types (pauses longer than 2 s left out)."""
    window_head: str = ""
    """The first characters of the last continuation's prompt window (`generation.prompt_window`)."""
    window_text: str = ""
    """That prompt: what the continuation cache holds, as far as the next prompt shares it (`generation.prompt_at`)."""
    asked: str = ""
    """The prompt of the latest completion request (an older one still completing a word gives way to it)."""
    running: Running | None = None
    """The document's generation (running or last): a request for another continuation cancels it."""
    answering: set[asyncio.Task[Any]] = field(default_factory=set)
    """What the document's completion requests wait for (`completion.continuation`): an edit cancels it, and they
    answer at once with nothing instead of waiting for the engine to reach a continuation no one can use."""
    refreshing: bool = False
    """Whether the continuation caches' spliced tokens are being read again (`generation.refresh`)."""
    findings: list[Finding] = field(default_factory=list)
    """Where watched features fire above their thresholds, in the current text (`findings`)."""
    findings_id: int = 0
    """Bumped whenever `findings` change: the result id of pulled diagnostics."""
    annotations: int = 0
    """Annotations made of the document (read whole or its edited spans; the re-read of the rest after an
    incremental one completes it and is not counted)."""
    whole: Annotated | None = None
    """A long document's annotation as a whole, read in pieces after its window (`whole`); None for a short one."""
    pieces: dict[str, Annotation] = field(default_factory=dict)
    """The whole's pieces by their text (with their overlap): an unchanged piece is not read again."""
    whole_key: tuple[str, tuple[int, ...]] | None = None
    """The granularity and watched features the pieces were read with."""
    pieces_read: int = 0
    """Pieces of the whole read so far (those kept from the pass before are not counted)."""

    def readings(self) -> Iterator[tuple[Annotated, int, SpanFeatures]]:
        """(reading, where the span starts in the current text, span) for every span read and still there: the
        window's (`annotated`), then the whole's outside the window."""
        current = self.doc.text
        lo = hi = -1
        if self.annotated is not None:
            for at, span in self.annotated.spans(current):
                lo, hi = (at, at + span.end - span.start) if lo < 0 else (lo, at + span.end - span.start)
                yield self.annotated, at, span
        if self.whole is not None:
            for at, span in self.whole.spans(current):
                if not lo <= at < hi:
                    yield self.whole, at, span

    def reading_at(self, offset: int) -> tuple[Annotated, int, SpanFeatures] | None:
        """The span read that covers `offset` (its end included), from the window first."""
        for reading, at, span in self.readings():
            if at <= offset <= at + span.end - span.start:
                return reading, at, span
        return None
