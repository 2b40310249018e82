"""Document sync: open, change (full or incremental), close. Each change restarts the document's debounce timer."""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING

from lsprotocol import types

from . import findings
from .generation import drop_stale, elsewhere_session, heal_session, prompt_session
from .pipeline import schedule, typed
from .state import DocState
from .text import Document
from .worker import ANNOTATE, EngineAPI

if TYPE_CHECKING:
    from .server import TinymorphServer


def register(server: TinymorphServer) -> None:
    @server.feature(types.TEXT_DOCUMENT_DID_OPEN)
    def did_open(ls: TinymorphServer, params: types.DidOpenTextDocumentParams) -> None:
        item = params.text_document
        old = ls.docs.pop(item.uri, None)
        if old is not None and old.pending is not None:
            old.pending.cancel()
        doc = Document(item.uri, item.language_id, item.version, item.text, ls.encoding)
        state = ls.docs[item.uri] = DocState(doc)
        schedule(ls, state, 0)

    @server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(ls: TinymorphServer, params: types.DidChangeTextDocumentParams) -> None:
        state = ls.docs.get(params.text_document.uri)
        if state is None:
            return  # a change to a document never opened: nothing to apply it to
        moved = state.findings
        for change in params.content_changes:
            before = len(state.doc.text)
            start, state.last_edit = state.doc.apply(change)
            moved = findings.moved(moved, start, state.last_edit - (len(state.doc.text) - before), state.last_edit)
        state.doc.version = params.text_document.version
        findings.changed(ls, state, moved)
        state.suggestion = None
        drop_stale(state)
        typed(state, time.monotonic())
        schedule(ls, state)

    @server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls: TinymorphServer, params: types.DidCloseTextDocumentParams) -> None:
        state = ls.docs.pop(params.text_document.uri, None)
        if state is None:
            return
        if state.pending is not None:
            state.pending.cancel()
        drop_stale(state)
        findings.closed(ls, state)
        ls.spawn(forget(ls, params.text_document.uri), "forget")


async def forget(server: TinymorphServer, uri: str) -> None:
    """Free what the engine keeps for a closed document."""
    if server.worker.engine is not None:
        with contextlib.suppress(Exception):
            await server.run_engine("forget", lambda e: _forget_all(e, uri), ANNOTATE)


def _forget_all(engine: EngineAPI, uri: str) -> None:
    """The document's own cache, its continuations' (`generation.prompt_session`, `generation.elsewhere_session`)
    and its healing's."""
    engine.forget(uri)
    engine.forget(prompt_session(uri))
    engine.forget(elsewhere_session(uri))
    engine.forget(heal_session(uri))
