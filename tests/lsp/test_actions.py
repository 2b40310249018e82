"""Code actions: amplify / suppress the selection's features, rewrite (resolved lazily, or through a command for
clients without resolve), accept the suggestion, clear steering, write more like the selection (style presets and
their commands); stale versions and bad requests are refused and change nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lsprotocol import types

from .conftest import client_fixture, command, open_doc, typed_with_suggestion, wait_annotated, wait_idle

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
    amplify = [a for a in got if a.kind == "refactor.tinymorph.amplify"]
    suppress = [a for a in got if a.kind == "refactor.tinymorph.suppress"]
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


async def test_the_actions_offer_what_the_hint_shows_by_its_words_and_confirm(client) -> None:
    uri = "file:///actions-hint.md"
    open_doc(client, uri, TEXT)
    await wait_annotated(client, uri, 1)
    await command(client, "tinymorph.steer.clear")
    hints = await client.text_document_inlay_hint_async(types.InlayHintParams(
        text_document=types.TextDocumentIdentifier(uri=uri), range=rng(0, 0, 3, 0)))
    first = [h for h in hints if h.position.line == 0]
    assert first, hints
    shown = [(p.command.arguments[0]["feature"], p.value) for p in first[0].label if p.command is not None]
    got = await actions(client, uri, rng(0, 5, 0, 5))  # the cursor in the first paragraph
    amplify = [a for a in got if a.kind == "refactor.tinymorph.amplify"]
    offered = [(a.command.arguments[0]["feature"], a.title) for a in amplify]
    assert [f for f, _ in offered[:len(shown)]] == [f for f, _ in shown]
    for (_, words), (_, title) in zip(shown, offered[:len(shown)], strict=True):
        assert title.startswith(f"Amplify \u201c{words.rstrip('…')}"), (title, words)
    result = await command(client, "tinymorph.steer.add", amplify[0].command.arguments[0])
    assert result["said"].startswith("Amplifying \u201c") and "suggestions now lean toward it" in result["said"]
    suppress = [a for a in got if a.kind == "refactor.tinymorph.suppress"]
    result = await command(client, "tinymorph.steer.add", suppress[0].command.arguments[0])
    assert result["said"].startswith("Suppressing \u201c") and "(-" in result["said"]
    result = await command(client, "tinymorph.steer.remove", {"feature": shown[0][0]})
    assert result["said"].startswith("No longer steering \u201c")


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


async def presets(client) -> list[dict]:
    return (await command(client, "tinymorph.preset.list"))["presets"]


async def completion(client, uri: str) -> types.CompletionItem:
    result = await client.text_document_completion_async(types.CompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(line=0, character=35)))
    return result.items[0]


async def test_write_more_like_this_makes_a_preset_that_steers_completions(client) -> None:
    uri = "file:///presets.md"
    open_doc(client, uri, TEXT)
    await wait_annotated(client, uri, 1)
    await command(client, "tinymorph.steer.clear")
    for p in await presets(client):
        await command(client, "tinymorph.preset.remove", {"name": p["name"]})
    await wait_idle(client)
    plain = await completion(client, uri)
    assert "unsteered" in plain.detail
    got = await actions(client, uri, rng(2, 0, 2, 30))
    (more,) = [a for a in got if a.title.startswith("Write more like this")]
    made = await command(client, more.command.command, *more.command.arguments)
    preset = made["preset"]
    assert preset["name"] == "She read the letter again and" and preset["enabled"]
    assert made["against"] == "document" and made["tokens"] >= 3
    assert Path(preset["file"]).is_file() and Path(preset["file"]).parent.parent == client.workspace_dir / ".tinymorph"
    on_disk = json.loads((client.workspace_dir / ".tinymorph" / "steering.json").read_text(encoding="utf-8"))
    assert [p["name"] for p in on_disk["presets"]] == [preset["name"]]
    assert "like \u201cShe read" in (await completion(client, uri)).detail
    # a strong preset changes the continuation; switched off, the continuation is the unsteered one again
    strong = await command(client, "tinymorph.preset.create", {**more.command.arguments[0], "name": "strong",
                                                                 "strength": 10})
    assert [p["name"] for p in strong["presets"]] == [preset["name"], "strong"]
    assert (await completion(client, uri)).text_edit.new_text != plain.text_edit.new_text
    stop = [a for a in await actions(client, uri, rng(0, 0, 0, 0)) if a.title.startswith("Stop writing like")]
    assert len(stop) == 2
    for action in stop:
        await command(client, action.command.command, *action.command.arguments)
    assert [p["enabled"] for p in await presets(client)] == [False, False]
    await wait_idle(client)
    assert (await completion(client, uri)).text_edit.new_text == plain.text_edit.new_text
    listed = await command(client, "tinymorph.preset.rename", {"name": "strong", "to": "gulls and letters"})
    assert [p["name"] for p in listed["presets"]] == [preset["name"], "gulls and letters"]
    listed = await command(client, "tinymorph.preset.toggle", {"name": "gulls and letters"})
    assert [p["enabled"] for p in listed["presets"]] == [False, True]
    listed = await command(client, "tinymorph.preset.remove", {"name": "gulls and letters"})
    assert [p["name"] for p in listed["presets"]] == [preset["name"]]
    assert len(list(Path(preset["file"]).parent.iterdir())) == 1


@pytest.mark.parametrize("command_name,args,message", [
    ("tinymorph.preset.create", {"name": ""}, "must not be empty"),
    ("tinymorph.preset.create", {"name": "x" * 61}, "at most 60 characters"),
    ("tinymorph.preset.create", {"strength": float("nan")}, "'strength' must be a finite number"),
    ("tinymorph.preset.create", {"strength": "strong"}, "'strength' must be a finite number"),
    ("tinymorph.preset.create", {"version": 99}, "changed"),
    ("tinymorph.preset.create", {"range": {"start": {"line": 0, "character": 4},
                                           "end": {"line": 0, "character": 8}}}, "Select at least 2 words"),
    ("tinymorph.preset.rename", {"name": "kept", "to": " "}, "must not be empty"),
    ("tinymorph.preset.rename", {"name": "nope", "to": "x"}, "no preset is named 'nope'"),
    ("tinymorph.preset.toggle", {"name": "kept", "enabled": "no"}, "'enabled' must be true or false"),
    ("tinymorph.preset.remove", {}, "missing 'name'"),
])
async def test_bad_preset_requests_change_nothing(client, command_name: str, args: dict, message: str) -> None:
    uri = "file:///bad-presets.md"
    open_doc(client, uri, TEXT)
    create = {"uri": uri, "version": 1, "range": {"start": {"line": 0, "character": 0},
                                                  "end": {"line": 0, "character": 30}}}
    for p in await presets(client):
        await command(client, "tinymorph.preset.remove", {"name": p["name"]})
    await command(client, "tinymorph.preset.create", {**create, "name": "kept"})
    on_disk = (client.workspace_dir / ".tinymorph" / "steering.json").read_bytes()
    request = {**create, **args} if command_name.endswith("create") else args
    with pytest.raises(Exception, match=message):
        await command(client, command_name, request)
    assert [(p["name"], p["enabled"]) for p in await presets(client)] == [("kept", True)]
    assert (client.workspace_dir / ".tinymorph" / "steering.json").read_bytes() == on_disk
