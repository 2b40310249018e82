"""Document sync: open, change (full or incremental), close. Each change restarts the document's debounce timer."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lsprotocol import types

from .pipeline import schedule
from .state import DocState
from .text import Document

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
        for change in params.content_changes:
            _, state.last_edit = state.doc.apply(change)
        state.doc.version = params.text_document.version
        state.suggestion = None
        schedule(ls, state)

    @server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls: TinymorphServer, params: types.DidCloseTextDocumentParams) -> None:
        state = ls.docs.pop(params.text_document.uri, None)
        if state is None:
            return
        if state.pending is not None:
            state.pending.cancel()
        if state.generation is not None:
            state.generation.cancel()
