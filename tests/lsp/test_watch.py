"""Watched features through the server: `tinymorph.watch.*`, diagnostics on the sentences where a watched feature
fires (published, or pulled by a client that pulls and takes refreshes), ranges that follow edits before the model
reads again, the code actions on them, and bad watches refused with nothing changed."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from lsprotocol import types
from pygls.exceptions import JsonRpcException, JsonRpcInvalidRequest

from .conftest import CLIENTS, PULL, client_fixture, command, insert, open_doc, wait_annotated, wait_for

client = client_fixture([*CLIENTS, PULL], debounceMs=3000)
"""A long debounce: after an edit the model waits, so what the diagnostics do meanwhile is the server's own."""

TEXT = "The rain fell on the quiet harbour. The boats knocked together.\n\nShe read the letter again and cried.\n"
SENTENCES = ["The rain fell on the quiet harbour.", "The boats knocked together.", "She read the letter again and cried."]


def rng(l1: int, c1: int, l2: int, c2: int) -> types.Range:
    return types.Range(start=types.Position(line=l1, character=c1), end=types.Position(line=l2, character=c2))


def pulls(client) -> bool:
    return client.spec == PULL


async def diagnostics(client, uri: str) -> list[types.Diagnostic]:
    if not pulls(client):
        return list(client.diagnostics.get(uri, []))
    report = await client.text_document_diagnostic_async(types.DocumentDiagnosticParams(
        text_document=types.TextDocumentIdentifier(uri=uri)))
    return list(report.items)


def text_of(text: str, r: types.Range) -> str:
    lines = text.split("\n")
    assert r.start.line == r.end.line  # every sentence here is on one line
    return lines[r.start.line][r.start.character:r.end.character]


async def code_actions(client, uri: str, r: types.Range, context: list[types.Diagnostic] | None = None):
    return await client.text_document_code_action_async(types.CodeActionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), range=r,
        context=types.CodeActionContext(diagnostics=context or []))) or []


async def watch_first_feature(client, uri: str, **extra: Any) -> dict[str, Any]:
    """Watch the top feature of the first sentence (as its "Watch" code action offers it)."""
    got = await code_actions(client, uri, rng(0, 0, 0, 10))
    watch = [a for a in got if a.kind == "refactor.tinymorph.watch"]
    assert watch, [a.title for a in got]
    argument = {**watch[0].command.arguments[0], **extra}
    assert watch[0].command.command == "tinymorph.watch.add" and set(argument) >= {"feature", "uri"}
    return await command(client, "tinymorph.watch.add", argument)


async def test_only_clients_that_pull_with_refresh_are_offered_pulling(client) -> None:
    provider = client.init_result.capabilities.diagnostic_provider
    assert (provider is not None) == pulls(client)


async def test_a_watched_feature_flags_its_sentences_and_follows_edits(client) -> None:
    uri = f"file:///watch-{client.spec}.md"
    open_doc(client, uri, TEXT)
    annotations = (await wait_annotated(client, uri, 1))["annotations"]
    refreshes = client.diagnostic_refresh_count
    listed = await watch_first_feature(client, uri, threshold=0.001, severity="warning", message="too much weather")

    async def read_with_the_watch() -> Any:  # the watch makes the server read the text again, keeping the feature
        got = await command(client, "tinymorph.document", {"uri": uri})
        return got if got["annotations"] > annotations else None

    await wait_for(read_with_the_watch, what="the text read with the watch")
    [entry] = listed["watch"]
    feature = entry["feature"]
    assert entry["threshold"] == 0.001 and entry["severity"] == "warning" and entry["label"]
    saved = json.loads((client.workspace_dir / ".tinymorph" / "steering.json").read_text(encoding="utf-8"))
    assert saved["watch"] == listed["watch"]

    async def flagged() -> Any:
        got = await diagnostics(client, uri)
        return got if got else None

    got = await wait_for(flagged, what="diagnostics")
    assert text_of(TEXT, got[0].range) == SENTENCES[0]
    for d in got:
        assert text_of(TEXT, d.range) in SENTENCES
        assert d.source == "tinymorph" and d.severity == types.DiagnosticSeverity.Warning
        assert d.message.startswith(f"too much weather \u2014 \u201c{entry['label']}\u201d: peak ")
        assert "above 0.001" in d.message and d.data["feature"] == feature
    if pulls(client):
        assert client.diagnostic_refresh_count > refreshes
        report = await client.text_document_diagnostic_async(types.DocumentDiagnosticParams(
            text_document=types.TextDocumentIdentifier(uri=uri), previous_result_id="0.0"))
        assert report.result_id and len(report.items) == len(got)

    # hover says which of a token's features is watched, wherever the feature is among them
    marked = []
    for character in range(len(SENTENCES[0])):
        got_hover = await client.text_document_hover_async(types.HoverParams(
            text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(line=0, character=character)))
        if got_hover is None or "No feature fires here" in got_hover.contents.value:
            continue
        assert "Code actions here amplify, suppress or watch" in got_hover.contents.value
        marked += [row for row in got_hover.contents.value.splitlines() if "watched above 0.001" in row]
    assert marked and all(row.startswith(f"- **{entry['label']}** ") for row in marked)
    assert listed["said"] == f"Watching \u201c{entry['label']}\u201d: sentences where it is strong are flagged."

    # on a flagged sentence: rewrite it without the feature, or stop watching
    target = got[-1]
    actions = await code_actions(client, uri, target.range, [target])
    rewrite = [a for a in actions if a.title.startswith("Rewrite this sentence without")]
    stop = [a for a in actions if a.title.startswith("Stop watching")]
    assert len(rewrite) == 1 and len(stop) == 1 and entry["label"] in rewrite[0].title
    assert rewrite[0].kind == types.CodeActionKind.QuickFix and rewrite[0].diagnostics
    # the tiny random model never ends a sentence within the rewrite's budget: the rewrite is refused with the
    # reason, and nothing changes (tests/test_server_parts.py checks the sentences a real rewrite is cut to)
    before = len(client.applied)
    with pytest.raises(JsonRpcInvalidRequest, match=r"^No rewrite: the model did not finish a sentence, .* Nothing "
                                                    r"was changed\.$"):
        if rewrite[0].command is not None:  # no resolve support: the command applies it
            assert rewrite[0].command.arguments[0]["suppress"] == feature
            await command(client, rewrite[0].command.command, *rewrite[0].command.arguments)
        else:
            assert rewrite[0].data["suppress"] == feature
            await client.code_action_resolve_async(rewrite[0])
    assert len(client.applied) == before

    # an edit before the first sentence: the ranges move at once, before the model reads the text again
    insert(client, uri, 0, 0, "Yesterday. ", version=2)
    edited = "Yesterday. " + TEXT

    async def moved() -> Any:
        now = await diagnostics(client, uri)
        return now if now and now[0].range.start.character == len("Yesterday. ") else None

    now = await wait_for(moved, timeout=1.0, what="the diagnostics to move")
    assert (await command(client, "tinymorph.document", {"uri": uri}))["annotatedVersion"] == 1
    assert [text_of(edited, d.range) for d in now] == [text_of(TEXT, d.range) for d in got]
    # once the model has read the new text, the diagnostics are its findings (the tiny model's features move
    # with the positions, so which sentences they flag may change): still whole sentences of the new text
    await wait_annotated(client, uri, 2)
    await wait_for(lambda: asyncio.sleep(0.2, True), timeout=1.0)
    assert all(text_of(edited, d.range) in ["Yesterday.", *SENTENCES] for d in await diagnostics(client, uri))
    listed = await command(client, stop[0].command.command, *stop[0].command.arguments)
    assert listed["watch"] == []

    async def cleared() -> Any:
        return not await diagnostics(client, uri)

    await wait_for(cleared, what="the diagnostics to go")


BAD = [
    ({"feature": 10**6}, "does not exist"),
    ({"feature": -3}, "feature number"),
    ({"feature": 1, "threshold": 0}, "positive finite"),
    ({"feature": 1, "threshold": -2.5}, "positive finite"),
    ({"feature": 1, "threshold": "high"}, "positive finite"),
    ({"feature": 1, "threshold": True}, "positive finite"),
    ({"feature": 1, "severity": "fatal"}, "severity"),
    ({"feature": 1, "message": "two\nlines"}, "one line"),
    ({"threshold": 1}, "missing 'feature'"),
]


async def test_bad_watches_are_refused_and_change_nothing(client) -> None:
    path = client.workspace_dir / ".tinymorph" / "steering.json"
    before = path.read_bytes() if path.exists() else None
    for argument, message in BAD:
        with pytest.raises(JsonRpcException, match=message):
            await command(client, "tinymorph.watch.add", argument)
    with pytest.raises(JsonRpcException, match="not watched"):
        await command(client, "tinymorph.watch.remove", {"feature": 4})
    assert (path.read_bytes() if path.exists() else None) == before
    assert (await command(client, "tinymorph.watch.list"))["watch"] == []
