"""The document pipeline: debounce → read the document (only the edited spans when it can) → refresh the hints →
compute the suggestion → once the writer pauses, read the whole document again, a few spans per engine job.

Every step checks that the document is still open and at the version it started with; an outdated result is
dropped, never shown.

A steering change makes only the suggestion out of date (`resuggest`); a watch change needs the annotation again, as
an annotation keeps the watched features wherever they fire.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import TYPE_CHECKING

from . import findings
from .config import Settings
from .generation import (
    OutOfMemory,
    Superseded,
    at_window_end,
    elsewhere_session,
    generate,
    prompt_at,
    prompt_session,
)
from .incremental import plan, rereads
from .reading import read_job
from .state import Annotated, DocState, Suggestion
from .whole import read_whole
from .worker import ANNOTATE, READ_SECONDS, SUGGEST, WHOLE, EngineAPI, EngineUnavailable

if TYPE_CHECKING:
    from .server import TinymorphServer

log = logging.getLogger(__name__)

FULL_REREAD_DELAY = 2.0
"""Seconds of quiet after an incremental annotation before the whole document is read again."""
TYPING_GAP = 2.0
"""Changes further apart than this many seconds are pauses, not typing."""


def typed(state: DocState, now: float) -> None:
    """Note a change at `now` in the document's typing rhythm."""
    if state.last_change is not None and (gap := now - state.last_change) < TYPING_GAP:
        state.typing_interval = gap if state.typing_interval is None else 0.7 * state.typing_interval + 0.3 * gap
    state.last_change = now


def debounce(settings: Settings, state: DocState) -> float:
    """Seconds to wait after a change: 1.5 times the writer's typing interval (a pause that long means they
    stopped), between half and twice `debounceMs`; `debounceMs` until the rhythm is known."""
    base = settings.debounce_ms / 1000
    if state.typing_interval is None:
        return base
    return min(2 * base, max(base / 2, 1.5 * state.typing_interval))


def schedule(server: TinymorphServer, state: DocState, delay: float | None = None) -> None:
    """(Re)start the document's debounce timer (`debounce`); the older pending run is cancelled."""
    if state.pending is not None and not state.pending.done():
        state.pending.cancel()
    if not server.handles(state.doc.language_id):
        return
    wait = debounce(server.settings, state) if delay is None else delay
    state.reading = window(server.settings, state)
    state.pending = server.spawn(_annotate_later(server, state, wait), f"annotate {state.doc.uri}")


FIRST_SCREEN = 3000
"""Characters a long document's first reading covers when the editor has not said what it shows yet: a screen."""


def window(settings: Settings, state: DocState, until: int | None = None) -> tuple[int, int]:
    """The part of the document to annotate: all of it, or for long documents a window of `maxChars` from a little
    before the visible range (or the last edit), cut at paragraph breaks. With `until`, the window ends at the
    first paragraph break after that offset instead (the visible part, read first)."""
    text, limit = state.doc.text, settings.max_chars
    if len(text) <= limit:
        return 0, len(text)
    focus = state.visible[0] if state.visible is not None else state.last_edit or 0
    lo = max(0, focus - limit // 4)  # near the end too: the visible part is read first from here
    hi = min(len(text), lo + limit)
    cut = text.find("\n\n", lo, focus)
    if lo > 0 and cut != -1:
        lo = cut + 2
    if until is not None and until < hi:
        cut = text.find("\n\n", until, hi)
        return lo, hi if cut == -1 else cut
    cut = text.rfind("\n\n", max(focus, lo), hi)
    if hi < len(text) and cut != -1:
        hi = cut
    return lo, hi


def visible_first(settings: Settings, state: DocState) -> int | None:
    """Where a first, shorter reading of a long document should end so that the visible range gets its hints
    before the rest of the window is read (`window`'s `until`); None when the document is read whole or the last
    annotation already covers the visible range."""
    text = state.doc.text
    if len(text) <= settings.max_chars:
        return None
    lo, hi = state.visible if state.visible is not None else (0, FIRST_SCREEN)
    annotated = state.annotated
    if annotated is not None and annotated.base <= lo and hi <= annotated.base + len(annotated.annotation.text):
        return None
    return hi


async def _annotate_later(server: TinymorphServer, state: DocState, wait: float) -> None:
    await asyncio.sleep(wait)
    seen = state.visible
    if server.on_fast_path() and (until := visible_first(server.settings, state)) is not None:
        await annotate(server, state, until=until)  # the visible part first; the window's rest reuses its cache
    partial = await annotate(server, state)
    if state.visible != seen and server.docs.get(state.doc.uri) is state and state.visible is not None and \
            state.visible[1] - state.visible[0] <= server.settings.max_chars and \
            visible_first(server.settings, state) is not None:
        state.pending = None  # the editor scrolled out of the window while it was read: follow it
        schedule(server, state, 0)
        return
    if server.settings.suggestion and state.last_edit is not None and state.annotated is not None:
        await suggest(server, state)
    if server.on_fast_path() and not state.window_text and state.annotated is not None and \
            len(state.doc.text) <= server.settings.max_chars:
        await prefetch(server, state)
    if partial and server.on_fast_path():
        await annotate(server, state, whole=True)
    elif partial:
        await asyncio.sleep(FULL_REREAD_DELAY)
        await reread(server, state)
    if server.on_fast_path() and len(state.doc.text) > server.settings.max_chars:
        await read_whole(server, state)


async def annotate(server: TinymorphServer, state: DocState, *, whole: bool = False, until: int | None = None,
                   ) -> bool:
    """Annotate the document's current version, reading only the edited spans where the previous annotation
    allows it; True when it did (the rest is read later). On the fast path the document's cache makes a whole
    read exact and cheap after an edit near the end; after an edit further up, the text up to the edited spans is
    read first (exact, the later spans kept from before) unless `whole`. `until`: read a long document's window
    only to the paragraph break after that offset (`visible_first`)."""
    doc = state.doc
    if server.docs.get(doc.uri) is not state or server.worker.engine is None:
        return False
    version, (base, end) = doc.version, window(server.settings, state, until)
    text, doc_length = doc.text[base:end], len(doc.text)
    granularity = server.settings.hint_granularity
    watch = findings.watched_features(server, doc.uri)
    previous, step = state.annotated, None
    fast = server.on_fast_path()
    if previous is not None and previous.base == 0 and base == 0 and end == doc_length and \
            previous.doc_length == len(previous.annotation.text) and previous.granularity == granularity and \
            previous.watch == watch:
        step = plan(previous.annotation, text, granularity)
    if fast and step is not None and not whole and step.dirty and step.end < len(text.rstrip()):
        step = dataclasses.replace(step, start=0)  # the prefix through the edited spans, on the cache
    elif fast:
        step = None
    old = previous.annotation if step is not None and previous is not None else None
    try:
        if fast and not await read_ahead(server, state, version, text if step is None else text[:step.end]):
            return False
        annotation, cards = await server.run_engine(
            "annotate", read_job(server.settings, text, step, old, granularity, set(server.cards), doc.uri, watch),
            ANNOTATE)
    except EngineUnavailable:
        return False
    except Exception as exc:
        log.warning("annotating %s failed: %s", doc.uri, exc)
        return False
    server.cards.update(cards)
    if server.docs.get(doc.uri) is not state or doc.version != version:
        return False  # outdated: a newer run is scheduled
    state.annotated = Annotated(version, base, doc_length, annotation, granularity, watch, partial=step is not None)
    state.annotations += 1
    findings.update(server, state)
    server.refresh_hints()
    return step is not None


async def read_ahead(server: TinymorphServer, state: DocState, version: int, text: str) -> bool:
    """Read `text` into the fast path's cache of the document, in long passes that stop between two blocks (each
    about `READ_SECONDS`) when a more urgent job waits, or after `READ_SECONDS` when one as urgent does
    (`EngineWorker.urgent`), so that a completion never waits long behind it; False when a newer version made it
    pointless."""
    uri, pause = state.doc.uri, server.worker.urgent(ANNOTATE)
    while not await server.run_engine("read", lambda e: e.read_ahead(text, uri, seconds=READ_SECONDS, pause=pause),
                                      ANNOTATE):
        if server.docs.get(uri) is not state or state.doc.version != version:
            return False
    return True


async def prefetch(server: TinymorphServer, state: DocState) -> None:
    """Read the continuation window at the end of a document no completion has read yet (a writer goes on at the
    end), `READ_SECONDS` per engine job after every other job: the first completion there then reads only what was
    typed since, not its whole window cold (0.5-0.8 s on a 2-core CPU). Not for a document longer than `maxChars`:
    where it ends is a guess there, and a manuscript's caches already fill the budget (three manuscripts' scrolls
    were slower with it, their caches pushed out)."""
    uri, version = state.doc.uri, state.doc.version
    prompt = prompt_at(server, state, len(state.doc.text))

    def piece(engine: EngineAPI) -> bool:
        return engine.prefetch(prompt, prompt_session(uri), seconds=READ_SECONDS)

    while not await server.run_engine("prefetch", piece, WHOLE):
        if server.docs.get(uri) is not state or state.doc.version != version:
            return


async def reread(server: TinymorphServer, state: DocState) -> None:
    """Read an incrementally annotated document again, a few spans per engine job."""
    annotated = state.annotated
    if annotated is None:
        return
    version, text = annotated.version, annotated.annotation.text
    for step in rereads(annotated.annotation):
        current = state.annotated
        if current is None or state.doc.version != version or server.docs.get(state.doc.uri) is not state:
            return
        job = read_job(server.settings, text, step, current.annotation, current.granularity, set(server.cards),
                       watch=current.watch)
        try:
            merged, cards = await server.run_engine("reread", job, ANNOTATE)
        except Exception as exc:
            log.debug("re-reading %s stopped: %s", state.doc.uri, exc)
            return
        server.cards.update(cards)
        if state.doc.version != version or state.annotated is not current:
            return
        state.annotated = dataclasses.replace(current, annotation=merged)
    if state.annotated is not None and state.doc.version == version:
        state.annotated = dataclasses.replace(state.annotated, partial=False)
        findings.update(server, state)
        server.refresh_hints()


def resuggest(server: TinymorphServer, state: DocState) -> None:
    """Compute the document's suggestion again and leave its annotation as it is (after a steering change: the
    annotation reads the text unsteered), when suggestions are on and the document was edited."""
    if server.settings.suggestion and state.last_edit is not None and server.handles(state.doc.language_id):
        server.spawn(suggest(server, state), f"suggest {state.doc.uri}")


async def suggest(server: TinymorphServer, state: DocState) -> None:
    """The steered continuation after the last edit, shown as a hint there (an inline completion asked for at the
    same place shares it)."""
    doc = state.doc
    version, offset = doc.version, state.last_edit
    if offset is None:
        return
    ahead = at_window_end(state, offset)  # typing on there: the window moves on; an edit above leaves it as it is
    prompt = prompt_at(server, state, offset, keep=ahead)
    if not prompt.strip():
        return
    try:
        text = await generate(server, doc.uri, prompt, kind="suggest", stop=("\n\n",), priority=SUGGEST,
                              session=None if ahead else elsewhere_session(doc.uri))
    except (Superseded, EngineUnavailable, OutOfMemory):
        return
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.warning("suggestion for %s failed: %s", doc.uri, exc)
        return
    if doc.version == version and text.strip() and server.docs.get(doc.uri) is state:
        state.suggestion = Suggestion(version, offset, text)
        server.refresh_hints()
