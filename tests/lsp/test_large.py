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
    assert first is not None  # answered at once (from the whole, once it is read), never waited for

    async def moved():
        got = await annotated()
        return got if got[1] == len(TEXT) else None

    lo, hi = await wait_for(moved, what="the window to follow the view")
    assert hi - lo <= 2000
    assert TEXT[lo - 2:lo] == "\n\n"  # cut at a paragraph break
    hints = await client.text_document_inlay_hint_async(types.InlayHintParams(
        text_document=types.TextDocumentIdentifier(uri=uri), range=view))
    assert hints and all(last_line - 20 <= h.position.line <= last_line for h in hints)


async def test_the_whole_is_read_in_pieces_so_hints_and_watches_reach_everywhere(client) -> None:
    uri = "file:///whole.md"
    open_doc(client, uri, TEXT)

    def whole_read(version: int):
        async def check():
            doc = await command(client, "tinymorph.document", {"uri": uri})
            return doc if doc["wholeVersion"] == version and doc["annotatedVersion"] == version else None

        return check

    doc = await wait_for(whole_read(1), what="the whole document read")
    hi = doc["annotatedRange"][1]
    assert hi < len(TEXT) // 2, "the window covers the start only"
    first_pieces = doc["piecesRead"]
    assert first_pieces >= len(TEXT) // 9000, first_pieces

    # far below the window, hints are there at once, from the whole's reading
    middle = TEXT.count("\n") * 3 // 4
    view = types.Range(start=types.Position(line=middle, character=0),
                       end=types.Position(line=middle + 20, character=0))
    hints = await client.text_document_inlay_hint_async(types.InlayHintParams(
        text_document=types.TextDocumentIdentifier(uri=uri), range=view))
    assert hints and all(middle <= h.position.line <= middle + 20 for h in hints)
    feature = next(part.command.arguments[0]["feature"] for h in hints for part in h.label if part.command)

    # a watched feature is found in sentences outside the window too
    await command(client, "tinymorph.watch.add", {"feature": feature, "uri": uri, "threshold": 0.001})

    async def flagged_below_the_window():
        lines = [d.range.start.line for d in client.diagnostics.get(uri, [])]
        return lines if any(line > TEXT[:hi].count("\n") + 10 for line in lines) else None

    await wait_for(flagged_below_the_window, what="findings outside the window")

    # an edit near the end reads again only the pieces it touched, not the whole
    async def read_again():  # the pieces keep the watched feature wherever it fires: all are read again
        doc = await whole_read(1)()
        return doc if doc is not None and doc["piecesRead"] == 2 * first_pieces else None

    before = (await wait_for(read_again, what="the whole read with the watch"))["piecesRead"]
    last_line = TEXT.count("\n")
    client.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=2),
        content_changes=[types.TextDocumentContentChangePartial(
            range=types.Range(start=types.Position(line=last_line, character=0),
                              end=types.Position(line=last_line, character=0)),
            text="Storm clouds gathered. ")]))
    doc = await wait_for(whole_read(2), what="the whole read after an edit")
    assert 1 <= doc["piecesRead"] - before <= 2, (before, doc["piecesRead"])
