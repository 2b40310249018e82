"""Huge documents: only a bounded window around the visible range is annotated, and scrolling moves it."""

from __future__ import annotations

from lsprotocol import types

from .conftest import client_fixture, command, open_doc, wait_for

client = client_fixture(suggestion=False, maxChars=2000)

PARAGRAPH = "The rain fell on the quiet harbour and the gulls cried over the boats."
TEXT = "\n\n".join(f"{i}. {PARAGRAPH}" for i in range(300))  # about 22,000 characters


async def test_only_a_window_is_annotated_and_it_follows_the_view(client) -> None:
    uri = "file:///huge.md"
    open_doc(client, uri, TEXT)

    async def annotated():
        doc = await command(client, "tinymorph.document", {"uri": uri})
        return doc["annotatedRange"]

    lo, hi = await wait_for(annotated, what="a first annotation")
    assert 0 < hi - lo <= 2000 and lo == 0
    last_line = TEXT.count("\n")
    view = types.Range(start=types.Position(line=last_line - 20, character=0),
                       end=types.Position(line=last_line, character=0))
    first = await client.text_document_inlay_hint_async(types.InlayHintParams(
        text_document=types.TextDocumentIdentifier(uri=uri), range=view))
    assert not first  # not annotated there yet; the request does not wait

    async def moved():
        got = await annotated()
        return got if got[1] == len(TEXT) else None

    lo, hi = await wait_for(moved, what="the window to follow the view")
    assert hi - lo <= 2000
    assert TEXT[lo - 2:lo] == "\n\n"  # cut at a paragraph break
    hints = await client.text_document_inlay_hint_async(types.InlayHintParams(
        text_document=types.TextDocumentIdentifier(uri=uri), range=view))
    assert hints and all(last_line - 20 <= h.position.line <= last_line for h in hints)
