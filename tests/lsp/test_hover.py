"""Hover: the features at the token under the cursor; bad positions are JSON-RPC errors."""

from __future__ import annotations

import pytest
from lsprotocol import types

from .conftest import client_fixture, open_doc, wait_annotated

client = client_fixture(suggestion=False)

TEXT = "汉字 and rain 😋 fell on the harbour.\n"


async def hover(client, uri: str, line: int, character: int) -> types.Hover | None:
    return await client.text_document_hover_async(types.HoverParams(
        text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(line=line, character=character)))


async def test_hover_shows_the_token_features(client) -> None:
    uri = "file:///hover.md"
    open_doc(client, uri, TEXT)
    await wait_annotated(client, uri, 1)
    utf8 = bool(client.capabilities.general and "utf-8" in (client.capabilities.general.position_encodings or []))
    prefix = TEXT[:TEXT.index("rain") + 1]
    character = len(prefix.encode("utf-8")) if utf8 else len(prefix.encode("utf-16-le")) // 2
    got = await hover(client, uri, 0, character)
    assert got is not None
    body = got.contents.value
    assert body.startswith("**tinymorph** · `a`") and "|" not in body  # a list, not a table
    rows = [r for r in body.splitlines() if r.startswith("- **")]
    folded = [r for r in body.splitlines() if "without words yet" in r]
    assert rows or folded, body
    activations = [float(r.split("** ")[1].split()[0]) for r in rows]
    assert all(a > 0 for a in activations) and activations == sorted(activations, reverse=True)
    assert len(folded) <= 1
    assert got.range == types.Range(start=types.Position(line=0, character=character),
                                    end=types.Position(line=0, character=character + 1))


async def test_hover_after_an_emoji_uses_the_negotiated_units(client) -> None:
    uri = "file:///hover-emoji.md"
    open_doc(client, uri, TEXT)
    await wait_annotated(client, uri, 1)
    utf8 = bool(client.capabilities.general and "utf-8" in (client.capabilities.general.position_encodings or []))
    prefix = TEXT[:TEXT.index("fell")]
    character = len(prefix.encode("utf-8")) if utf8 else len(prefix.encode("utf-16-le")) // 2
    got = await hover(client, uri, 0, character)
    assert got is not None
    assert "`f`" in got.contents.value
    assert got.range.start.character == character


@pytest.mark.parametrize("line,character", [(5, 0), (0, 1)])
async def test_bad_positions_are_errors(client, line: int, character: int) -> None:
    uri = "file:///hover-bad.md"
    open_doc(client, uri, TEXT)
    utf8 = bool(client.capabilities.general and "utf-8" in (client.capabilities.general.position_encodings or []))
    if (line, character) == (0, 1) and not utf8:
        character = TEXT.index("😋") + 1  # inside the emoji's surrogate pair
    with pytest.raises(Exception, match=r"past the end|falls inside"):
        await hover(client, uri, line, character)
