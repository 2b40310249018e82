"""The whole of a long document: a document longer than `maxChars` has its hints read in a window around the view
(`pipeline.window`); once that is done and the writer pauses, the rest is read too, in overlapping pieces, so that
watched features are found anywhere in it and a scroll shows hints at once.

Each piece is about `PIECE_CHARS` of text from a paragraph break to a paragraph break, read after up to
`CONTEXT_CHARS` of the text before it (the overlap: the model never starts cold in the middle of the story). Where
a piece ends depends on the text around it (`pieces`), not on the length of what comes before, so an edit changes
only the piece it falls in (and the next one's overlap): the other pieces' annotations are kept, keyed by their
text, and only changed pieces are read again. Reading goes through its own session of the fast path's cache,
`READ_SECONDS` of reading per engine job at the lowest priority, and that cache is dropped when the pass ends.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lsprotocol import types

from steering.features.annotate import Annotation, SpanFeatures, TokenFeatures
from steering.features.ranking import Weight

from . import findings
from .incremental import context_start
from .progress import begin
from .reading import read_job
from .state import Annotated, DocState
from .worker import READ_SECONDS, WHOLE, EngineAPI, EngineUnavailable

if TYPE_CHECKING:
    from .server import TinymorphServer

log = logging.getLogger(__name__)

PIECE_CHARS = 3000
"""Characters a piece aims at (about 700 tokens): a cut comes at a paragraph break from half of this on."""
LONGEST_PIECE = 3 * PIECE_CHARS
"""A piece with no paragraph break is cut at a line or sentence end (or a space) at this length."""


@dataclass(frozen=True)
class Piece:
    """`text[start:end]` of the document, read after `text[context:start]`."""

    context: int
    start: int
    end: int


def whole_session(uri: str) -> str:
    """The fast path's cache session the whole document's pieces are read through."""
    return uri + "#whole"


_BREAK = re.compile(r"\n[ \t]*\n\s*")


def _cut_here(text: str, at: int) -> bool:
    """A content-defined cut: about one paragraph break in three qualifies, by the text that follows it."""
    return zlib.crc32(text[at:at + 48].encode("utf-8", "replace")) % 3 == 0


def _hard_cut(text: str, start: int, limit: int) -> int:
    """Where to cut a piece with no paragraph break before `limit`: the last line end, sentence end or space."""
    lo = start + PIECE_CHARS
    for mark in ("\n", ". ", " "):
        at = text.rfind(mark, lo, limit)
        if at != -1:
            return at + len(mark)
    return limit


def pieces(text: str, size: int = PIECE_CHARS) -> list[Piece]:
    """The document cut into pieces of about `size` characters, each with its overlap (see the module's note)."""
    longest = 3 * size
    breaks = [m.end() for m in _BREAK.finditer(text) if m.end() < len(text)]
    cuts, start, i = [], 0, 0
    while start < len(text):
        while i < len(breaks) and breaks[i] <= start:
            i += 1
        cut = None
        j = i
        while j < len(breaks) and breaks[j] - start <= longest:
            if breaks[j] - start >= size // 2 and (_cut_here(text, breaks[j]) or (
                    j + 1 < len(breaks) and breaks[j + 1] - start > 2 * size) or (
                    j + 1 == len(breaks) and len(text) - start > 2 * size)):
                cut = breaks[j]
                break
            j += 1
        if cut is None:
            cut = len(text) if len(text) - start <= longest else _hard_cut(text, start, start + longest)
        cuts.append((start, cut))
        start = cut
    return [Piece(context_start(text, s), s, e) for s, e in cuts]


def compose(text: str, parts: list[tuple[Piece, Annotation]]) -> Annotation:
    """The annotation of the whole `text` from its pieces' (each of `text[piece.context:piece.end]`): every piece
    gives its own part's tokens and spans, moved to document offsets."""
    tokens: list[TokenFeatures] = []
    spans: list[SpanFeatures] = []
    weights: dict[int, Weight] = {}
    hook = ""
    for piece, annotation in parts:
        base, keep = piece.context, piece.start - piece.context
        hook = hook or annotation.hook
        tokens += [dataclasses.replace(t, start=t.start + base, end=t.end + base) for t in annotation.tokens
                   if t.start >= keep]
        spans += [dataclasses.replace(s, start=s.start + base, end=s.end + base) for s in annotation.paragraphs
                  if s.start >= keep]
        weights.update(annotation.weights)
    tokens = [dataclasses.replace(t, index=i) for i, t in enumerate(tokens)]
    return Annotation(text, hook, tuple(tokens), tuple(spans), weights)


async def read_whole(server: TinymorphServer, state: DocState) -> bool:
    """Read the pieces of the document that changed since the last pass, then publish the whole's annotation (and
    the findings of watched features in all of it); False when an edit or a close made the pass pointless."""
    doc = state.doc
    version, text, uri = doc.version, doc.text, doc.uri
    granularity = server.settings.hint_granularity
    watch = findings.watched_features(server, uri)
    key_of = (granularity, watch)
    if state.whole_key != key_of:
        state.pieces, state.whole_key = {}, key_of
    every = pieces(text)
    todo = [p for p in every if text[p.context:p.end] not in state.pieces]
    if not todo and state.whole is not None and state.whole.version == version:
        return True
    known: dict[str, Annotation] = {}
    progress = await begin(server, f"reading the whole document ({len(todo)} parts)", 0) if len(todo) > 2 else None
    session, read = whole_session(uri), 0

    def current() -> bool:
        return server.docs.get(uri) is state and doc.version == version

    try:
        for piece in every:
            window = text[piece.context:piece.end]
            if window in state.pieces:
                known[window] = state.pieces[window]
                continue
            while not await server.run_engine("read whole", _reader(window, session, server.worker.urgent(WHOLE)),
                                              WHOLE):
                if not current():
                    return False
            if not current():
                return False
            annotation, cards = await server.run_engine(
                "annotate whole", read_job(server.settings, window, None, None, granularity, set(server.cards),
                                           session, watch), WHOLE)
            server.cards.update(cards)
            known[window] = state.pieces[window] = annotation  # kept should an edit stop this pass
            read += 1
            state.pieces_read += 1
            if progress is not None:
                server.work_done_progress.report(progress, types.WorkDoneProgressReport(
                    message=f"{read} of {len(todo)} parts read", percentage=round(100 * read / len(todo))))
        if not current():
            return False
        parts = [(p, known[text[p.context:p.end]]) for p in every]
        state.pieces = known  # the pieces of this text only
        state.whole = Annotated(version, 0, len(text), compose(text, parts), granularity, watch)
        findings.update(server, state)
        server.refresh_hints()
        return True
    except EngineUnavailable:
        return False
    except Exception as exc:
        log.warning("reading %s whole failed: %s", uri, exc)
        return False
    finally:
        if progress is not None:
            server.work_done_progress.end(progress, types.WorkDoneProgressEnd(message="done"))
        server.spawn(_forget(server, session), "forget whole")


def _reader(text: str, session: str, pause: Callable[[], bool]) -> Callable[[EngineAPI], bool]:
    """The engine job that reads a pass more of `text` into `session`'s cache, stopping between two blocks (about
    `READ_SECONDS` each) when `pause()` says more urgent work waits."""
    return lambda engine: engine.read_ahead(text, session, seconds=READ_SECONDS, pause=pause)


async def _forget(server: TinymorphServer, session: str) -> None:
    try:
        await server.run_engine("forget", lambda e: e.forget(session), WHOLE)
    except Exception as exc:  # the worker stopped: nothing is kept
        log.debug("forgetting %s: %s", session, exc)
