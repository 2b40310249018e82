"""Inlay hints: features at the end of each paragraph with steering commands, refresh after annotation, the
suggestion hint (computed again, alone, after a steering change), and no waiting for the model."""

from __future__ import annotations

import re
from typing import Any

from lsprotocol import types

from .conftest import client_fixture, command, open_doc, typed_with_suggestion, wait_annotated, wait_for

client = client_fixture(hintCount=2)

TEXT = "The rain fell on the quiet harbour.\n\nShe read the letter again 😋 and the gulls cried.\n"


def whole(text: str) -> types.Range:
    return types.Range(start=types.Position(line=0, character=0),
                       end=types.Position(line=text.count("\n") + 1, character=0))


async def hints(client, uri: str, text: str) -> list[types.InlayHint]:
    return await client.text_document_inlay_hint_async(types.InlayHintParams(
        text_document=types.TextDocumentIdentifier(uri=uri), range=whole(text))) or []


async def test_feature_hints_at_paragraph_ends(client) -> None:
    uri = "file:///hints.md"
    open_doc(client, uri, TEXT)
    await wait_annotated(client, uri, 1)
    got = await hints(client, uri, TEXT)
    ends = {(h.position.line, h.position.character) for h in got}
    encoding = (await command(client, "tinymorph.status"))["positionEncoding"]
    line2 = "She read the letter again 😋 and the gulls cried."
    expect_2 = len(line2) - 1 + (4 if encoding == "utf-8" else 2)  # the emoji: 4 UTF-8 bytes, 2 UTF-16 units
    assert ends == {(0, len("The rain fell on the quiet harbour.")), (2, expect_2)}
    for hint in got:
        parts = hint.label
        assert isinstance(parts, list) and parts[0].value == "⟨" and parts[-1].value == "⟩"
        features = [p for p in parts if p.command is not None]
        assert 1 <= len(features) <= 2
        for part in features:
            assert part.command.command == "tinymorph.steer.add"
            assert isinstance(part.command.arguments[0]["feature"], int)
            words = part.value.split(", ")  # a label in words, never token fragments or numbers
            assert 1 <= len(words) <= 3 and all(re.fullmatch(r"[^\W\d_]+(?:['’-][^\W\d_]+)*…?", w) for w in words)
        assert "| feature | label |" in hint.tooltip.value
    if client.capabilities.workspace.inlay_hint and client.capabilities.workspace.inlay_hint.refresh_support:
        assert client.refreshes >= 1
    else:
        assert client.refreshes == 0


async def test_changed_paragraph_loses_its_hint_until_reannotated(client) -> None:
    uri = "file:///edit.md"
    open_doc(client, uri, TEXT)
    await wait_annotated(client, uri, 1)
    client.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=2), content_changes=[
            types.TextDocumentContentChangePartial(range=types.Range(
                start=types.Position(line=0, character=4), end=types.Position(line=0, character=4)), text="cold ")]))
    got = [h for h in await hints(client, uri, TEXT) if h.label[0].value == "⟨"]
    # the first paragraph changed; the second only moved, so it keeps its hint at its new place
    assert [h.position.line for h in got] == [2]
    await wait_annotated(client, uri, 2)
    got = [h for h in await hints(client, uri, TEXT) if h.label[0].value == "⟨"]
    assert sorted(h.position.line for h in got) == [0, 2]


async def test_the_hint_steps_aside_while_the_writer_types_past_it(client) -> None:
    uri = "file:///typing-past.md"
    open_doc(client, uri, TEXT)
    await wait_annotated(client, uri, 1)
    end = len("The rain fell on the quiet harbour.")
    client.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=2), content_changes=[
            types.TextDocumentContentChangePartial(range=types.Range(
                start=types.Position(line=0, character=end), end=types.Position(line=0, character=end)),
                text=" The boats")]))
    got = [h for h in await hints(client, uri, TEXT) if h.label[0].value == "⟨"]
    # no hint left between "harbour." and the words typed after it; the other paragraph keeps its own
    assert [h.position.line for h in got] == [2]
    await wait_annotated(client, uri, 2)
    got = [h for h in await hints(client, uri, TEXT) if h.label[0].value == "⟨"]
    # read again, it still stays out of the way at the cursor, where the ghost text of a suggestion would start
    assert [h.position.line for h in got] == [2]
    typed = end + len(" The boats")
    client.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=3), content_changes=[
            types.TextDocumentContentChangePartial(range=types.Range(
                start=types.Position(line=0, character=typed), end=types.Position(line=0, character=typed)),
                text="\n\nNight")]))
    await wait_annotated(client, uri, 3)
    got = [h for h in await hints(client, uri, TEXT) if h.label[0].value == "⟨"]
    # the writer went on to a new paragraph: the finished one shows its hint at its end again
    assert (0, typed) in {(h.position.line, h.position.character) for h in got}


async def test_suggestion_hint_after_the_last_edit(client) -> None:
    uri = "file:///suggest.md"
    text = "The rain fell on the quiet harbour and"
    s = await typed_with_suggestion(client, uri, text, " the")
    assert s["version"] == 2 and s["offset"] == len(text) + 4 and s["text"]
    got = await hints(client, uri, text + " the")
    arrows = [h for h in got if h.label[0].value.startswith("⟶")]
    assert len(arrows) == 1
    assert arrows[0].position == types.Position(line=0, character=len(text) + 4)
    assert arrows[0].label[0].command.command == "tinymorph.suggestion.accept"


async def test_a_steering_change_computes_the_suggestion_again_but_not_the_annotation(client) -> None:
    """Annotation reads the text unsteered: new steering makes only the suggestion out of date."""
    uri = "file:///resteered.md"
    text = "The rain fell on the quiet harbour and"
    await typed_with_suggestion(client, uri, text, " the")  # typed at its end: no later annotation follows
    before = await wait_annotated(client, uri, 2)
    generations = (await command(client, "tinymorph.status"))["generations"]
    await command(client, "tinymorph.steer.add", {"feature": 3, "strength": 1.0, "uri": uri})
    try:
        async def suggested() -> Any:
            doc = await command(client, "tinymorph.document", {"uri": uri})
            return doc if doc["suggestion"] else None

        after = await wait_for(suggested, what="the suggestion under the new steering")
        assert after["suggestion"]["version"] == 2 and after["suggestion"]["offset"] == len(text) + 4
        assert (await command(client, "tinymorph.status"))["generations"] > generations
        assert after["annotations"] == before["annotations"], "the document was annotated again"
    finally:
        await command(client, "tinymorph.steer.clear", {"uri": uri})


async def test_unknown_document_is_an_error(client) -> None:
    try:
        await hints(client, "file:///never-opened.md", "x")
    except Exception as exc:
        assert "Unknown document" in str(exc)
    else:
        raise AssertionError("expected an error")
