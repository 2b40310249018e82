"""Code actions: amplify / suppress the selection's features, rewrite (resolved lazily, or through a command for
clients without resolve), accept the suggestion, clear steering; stale versions are refused."""

from __future__ import annotations

import pytest
from lsprotocol import types

from .conftest import client_fixture, command, open_doc, typed_with_suggestion, wait_annotated

client = client_fixture()

TEXT = "The rain fell on the quiet harbour.\n\nShe read the letter again and the gulls cried.\n"


def rng(l1: int, c1: int, l2: int, c2: int) -> types.Range:
    return types.Range(start=types.Position(line=l1, character=c1), end=types.Position(line=l2, character=c2))


async def actions(client, uri: str, r: types.Range) -> list[types.CodeAction]:
    return await client.text_document_code_action_async(types.CodeActionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), range=r,
        context=types.CodeActionContext(diagnostics=[]))) or []


def resolves(client) -> bool:
    ca = client.capabilities.text_document.code_action
    return bool(ca and ca.resolve_support and "edit" in ca.resolve_support.properties)


async def test_amplify_and_suppress_steer_the_workspace(client) -> None:
    uri = "file:///actions.md"
    open_doc(client, uri, TEXT)
    await wait_annotated(client, uri, 1)
    await command(client, "tinymorph.steer.clear")
    got = await actions(client, uri, rng(0, 0, 0, 20))
    amplify = [a for a in got if a.title.startswith("Amplify feature")]
    suppress = [a for a in got if a.title.startswith("Suppress feature")]
    assert 1 <= len(amplify) <= 3 and len(suppress) == len(amplify)
    assert not any(a.title == "Clear steering" for a in got)
    cmd = amplify[0].command
    result = await command(client, cmd.command, *cmd.arguments)
    feature = cmd.arguments[0]["feature"]
    assert [e["feature"] for e in result["steering"]] == [feature]
    assert result["steering"][0]["mode"] == "add" and result["steering"][0]["strength"] > 0
    cmd = suppress[0].command
    result = await command(client, cmd.command, *cmd.arguments)
    assert result["steering"][-1]["mode"] == "add" and result["steering"][-1]["strength"] < 0
    got = await actions(client, uri, rng(0, 0, 0, 20))
    clear = [a for a in got if a.title == "Clear steering"]
    assert len(clear) == 1
    result = await command(client, clear[0].command.command, *clear[0].command.arguments)
    assert result["steering"] == []


async def test_rewrite_replaces_the_selection_on_its_version(client) -> None:
    uri = "file:///rewrite.md"
    open_doc(client, uri, TEXT)
    await wait_annotated(client, uri, 1)
    selection = rng(2, 8, 2, 19)  # "the letter "
    got = [a for a in await actions(client, uri, selection) if a.title.startswith("Rewrite selection")]
    assert len(got) == 1
    action = got[0]
    assert action.edit is None
    if resolves(client):
        resolved = await client.code_action_resolve_async(action)
        edit = resolved.edit
    else:
        assert action.command is not None and action.command.command == "tinymorph.rewrite"
        before = len(client.applied)
        result = await command(client, action.command.command, *action.command.arguments)
        assert result == {"applied": True}
        assert len(client.applied) == before + 1
        edit = client.applied[-1].edit
    change = edit.document_changes[0]
    assert change.text_document.uri == uri and change.text_document.version == 1
    assert change.edits[0].range == selection
    assert change.edits[0].new_text.strip()
    # the server did not change its copy of the document: only the client applies edits
    assert (await command(client, "tinymorph.document", {"uri": uri}))["text"] == TEXT


async def test_rewrite_of_a_changed_document_is_refused(client) -> None:
    uri = "file:///stale.md"
    open_doc(client, uri, TEXT)
    action = next(a for a in await actions(client, uri, rng(0, 4, 0, 8)) if a.title.startswith("Rewrite"))
    client.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=2), content_changes=[
            types.TextDocumentContentChangePartial(range=rng(0, 0, 0, 0), text="Yesterday ")]))
    with pytest.raises(Exception, match="changed"):
        if resolves(client):
            await client.code_action_resolve_async(action)
        else:
            await command(client, action.command.command, *action.command.arguments)
    doc = await command(client, "tinymorph.document", {"uri": uri})
    assert doc["text"] == "Yesterday " + TEXT and doc["version"] == 2


async def test_accept_suggestion_inserts_it_at_the_edit(client) -> None:
    uri = "file:///accept.md"
    text = "The rain fell on the quiet harbour and"
    s = await typed_with_suggestion(client, uri, text, " the")
    at = len(text) + 4
    got = [a for a in await actions(client, uri, rng(0, at, 0, at)) if a.title.startswith("Accept suggestion")]
    assert len(got) == 1
    change = got[0].edit.document_changes[0]
    assert change.text_document.version == 2
    assert change.edits[0].range == rng(0, at, 0, at) and change.edits[0].new_text == s["text"]
    result = await command(client, "tinymorph.suggestion.accept", {"uri": uri, "version": 2})
    assert result == {"applied": True}
    with pytest.raises(Exception, match="changed"):
        await command(client, "tinymorph.suggestion.accept", {"uri": uri, "version": 1})
