"""Document sync: the server's text equals the client's after random incremental edits (emoji, CJK, CRLF), and
positions are negotiated (UTF-8 when offered, else UTF-16)."""

from __future__ import annotations

import random

from lsprotocol import types

from .conftest import client_fixture, command, open_doc

client = client_fixture(suggestion=False)

ALPHABET = ["a", "b", " ", "\n", "😋", "汉", "字", "é", "\r\n", "🌧️", "x\n\ny"]


def units(text: str, encoding: str) -> int:
    if encoding == "utf-8":
        return len(text.encode("utf-8"))
    if encoding == "utf-32":
        return len(text)
    return len(text.encode("utf-16-le")) // 2


def position(text: str, offset: int, encoding: str) -> types.Position:
    """The client's view: LSP lines split at \\n, \\r\\n and \\r."""
    before = text[:offset].replace("\r\n", "\n").replace("\r", "\n")
    line = before.count("\n")
    col = before[before.rfind("\n") + 1:] if "\n" in before else before
    return types.Position(line=line, character=units(col, encoding))


async def test_position_encoding_is_negotiated(client) -> None:
    status = await command(client, "tinymorph.status")
    offered = (client.capabilities.general.position_encodings or []) if client.capabilities.general else []
    assert status["positionEncoding"] == ("utf-8" if "utf-8" in offered else "utf-16")


async def test_random_incremental_edits_keep_text_in_sync(client) -> None:
    encoding = (await command(client, "tinymorph.status"))["positionEncoding"]
    rnd = random.Random(7)
    uri = "file:///sync.md"
    text = "Rain 🌧️ over the 港口.\r\nSecond line\n\nThird 😋 para"
    open_doc(client, uri, text)
    version = 1
    for _ in range(60):
        a = rnd.randrange(len(text) + 1)
        b = min(len(text), a + rnd.randrange(4))
        # never split a CRLF or land inside nothing: clients send positions between characters
        if 0 < a < len(text) and text[a - 1:a + 1] == "\r\n":
            a -= 1
        if 0 < b < len(text) and text[b - 1:b + 1] == "\r\n":
            b += 1
        new = "".join(rnd.choice(ALPHABET) for _ in range(rnd.randrange(3)))
        change = types.TextDocumentContentChangePartial(
            range=types.Range(start=position(text, a, encoding), end=position(text, b, encoding)), text=new)
        text = text[:a] + new + text[b:]
        version += 1
        client.text_document_did_change(types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version), content_changes=[change]))
    doc = await command(client, "tinymorph.document", {"uri": uri})
    assert doc["version"] == version
    assert doc["text"] == text


async def test_full_sync_change_and_close(client) -> None:
    uri = "file:///full.txt"
    open_doc(client, uri, "one", language="plaintext")
    client.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=2),
        content_changes=[types.TextDocumentContentChangeWholeDocument(text="two 😋")]))
    assert (await command(client, "tinymorph.document", {"uri": uri}))["text"] == "two 😋"
    client.text_document_did_close(types.DidCloseTextDocumentParams(
        text_document=types.TextDocumentIdentifier(uri=uri)))
    try:
        await command(client, "tinymorph.document", {"uri": uri})
    except Exception as exc:
        assert "Unknown document" in str(exc)
    else:
        raise AssertionError("a closed document is still known")


async def test_position_past_the_end_clamps(client) -> None:
    uri = "file:///clamp.md"
    open_doc(client, uri, "ab\ncd")
    client.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=2), content_changes=[
            types.TextDocumentContentChangePartial(
                range=types.Range(start=types.Position(line=0, character=99), end=types.Position(line=9, character=0)),
                text="!")]))
    assert (await command(client, "tinymorph.document", {"uri": uri}))["text"] == "ab!"
