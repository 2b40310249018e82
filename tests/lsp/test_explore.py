"""Features by example and the feature map through the server: `tinymorph.features.byExample` (and its code action,
which asks the writer through `window/showMessageRequest`), `tinymorph.map` (a page in the workspace's
`.tinymorph/maps/`, opened with `window/showDocument`), and bad requests refused with nothing written."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from lsprotocol import types
from pytest_lsp import ClientServerConfig

from .conftest import SERVER, Client, client_fixture, command, make_client, open_doc, wait_annotated

TEXT = "The rain fell on the quiet harbour.\n\nShe read the letter again and the gulls cried over the sand.\n"
SECOND = types.Range(start=types.Position(line=2, character=0), end=types.Position(line=2, character=30))


def make_choosing_client() -> Client:
    """The tests' client, answering each `window/showMessageRequest` with the first action whose title starts with
    the next prefix in `client.choices` (no prefix left: dismissed)."""
    client = make_client()
    client.choices = []  # type: ignore[attr-defined]
    client.asked = []  # type: ignore[attr-defined]

    @client.feature(types.WINDOW_SHOW_MESSAGE_REQUEST)
    def ask(ls: Client, params: types.ShowMessageRequestParams) -> types.MessageActionItem | None:
        ls.asked.append(params)  # type: ignore[attr-defined]
        if not ls.choices:  # type: ignore[attr-defined]
            return None
        prefix = ls.choices.pop(0)  # type: ignore[attr-defined]
        return next((a for a in params.actions or [] if a.title.startswith(prefix)), None)

    return client


client = client_fixture(config=ClientServerConfig(server_command=SERVER.server_command,
                                                  client_factory=make_choosing_client))


def page_data(path: Path) -> dict[str, Any]:
    page = path.read_text(encoding="utf-8")
    return json.loads(re.search(r'id="tm-data">(.*?)</script>', page, re.S).group(1).replace("<\\/", "</"))


async def opened(client, uri: str) -> None:
    open_doc(client, uri, TEXT)
    await wait_annotated(client, uri, 1)


def selection(uri: str, **extra: Any) -> dict[str, Any]:
    return {"uri": uri, "version": 1, "range": {"start": {"line": 2, "character": 0},
                                                "end": {"line": 2, "character": 30}}, **extra}


async def test_features_by_example_come_labelled_with_examples_and_actions(client) -> None:
    uri = "file:///example.md"
    await opened(client, uri)
    result = await command(client, "tinymorph.features.byExample", selection(uri, limit=4))
    found = result["features"]
    assert 1 <= len(found) <= 4 and result["version"] == 1
    assert [f["score"] for f in found] == sorted((f["score"] for f in found), reverse=True)
    for f in found:
        assert f["label"] and f["examples"] and 0 < f["share"] <= 1 and f["watched"] is False
        titles = [a["title"] for a in f["actions"]]
        assert [t.split(" \u201c")[0] for t in titles] == ["Steer toward", "Suppress", "Watch"]
        assert [a["command"] for a in f["actions"]] == ["tinymorph.steer.add", "tinymorph.steer.add",
                                                        "tinymorph.watch.add"]
        assert all(a["arguments"][0]["feature"] == f["feature"] for a in f["actions"])
    assert "asked" not in result and not client.asked


async def test_the_code_action_asks_which_feature_and_what_to_do(client) -> None:
    uri = "file:///example-action.md"
    await opened(client, uri)
    actions = await client.text_document_code_action_async(types.CodeActionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), range=SECOND,
        context=types.CodeActionContext(diagnostics=[]))) or []
    [action] = [a for a in actions if a.title.startswith("Features most specific to the selection")]
    assert action.command.command == "tinymorph.features.byExample" and action.command.arguments[0]["show"] is True
    client.asked.clear()
    client.choices[:] = ["1. ", "Watch"]
    result = await command(client, action.command.command, *action.command.arguments)
    first, second = client.asked
    assert first.message.startswith("tinymorph: most specific to the selection:\n1. ")
    assert [a.title[:3] for a in first.actions] == [f"{i + 1}. " for i in range(len(first.actions))]
    assert [a.title.split(" \u201c")[0] for a in second.actions] == ["Steer toward", "Suppress", "Watch"]
    top = result["features"][0]
    assert result["asked"]["chosen"].startswith("Watch")
    assert [w["feature"] for w in result["asked"]["result"]["watch"]] == [top["feature"]]
    assert [w["feature"] for w in (await command(client, "tinymorph.watch.list"))["watch"]] == [top["feature"]]
    await command(client, "tinymorph.watch.remove", {"feature": top["feature"]})
    client.asked.clear()
    client.choices[:] = []  # dismissed: nothing happens
    result = await command(client, action.command.command, *action.command.arguments)
    assert result["asked"] is None and len(client.asked) == 1
    assert (await command(client, "tinymorph.watch.list"))["watch"] == []


async def test_the_feature_map_is_written_in_the_workspace_and_opened(client) -> None:
    uri = (client.workspace_dir / "notes.md").as_uri()
    await opened(client, uri)
    before = len(client.shown_documents)
    result = await command(client, "tinymorph.map", {"uri": uri})
    path = Path(result["path"])
    assert path.parent == client.workspace_dir / ".tinymorph" / "maps" and path.name.startswith("notes-")
    data = page_data(path)
    assert data["title"] == "notes.md" and data["text"] == TEXT and len(data["paragraphs"]) == 2
    assert result["paragraphs"] == 2 and result["features"] == len(data["features"]) > 0
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")], "no temporary file is left"
    supports = client.capabilities.window and client.capabilities.window.show_document
    if supports:
        shown = client.shown_documents[before]
        assert shown.uri == path.as_uri() and shown.external is True and result["opened"] is True
    else:
        assert len(client.shown_documents) == before and result["opened"] is False
    feature = int(next(iter(data["features"])))
    again = await command(client, "tinymorph.map", {"uri": uri, "feature": feature, "open": False})
    assert again["path"] == result["path"] and again["uri"].endswith(f"#f={feature}")
    assert len(client.shown_documents) == before + (1 if supports else 0)


@pytest.mark.parametrize(("name", "argument", "message"), [
    ("tinymorph.features.byExample", {"version": 7}, "changed"),
    ("tinymorph.features.byExample", {"range": {"start": {"line": 1, "character": 0},
                                                "end": {"line": 1, "character": 0}}}, "select some text"),
    ("tinymorph.features.byExample", {"range": {"start": {"line": 9, "character": 0},
                                                "end": {"line": 9, "character": 1}}}, "past the end"),
    ("tinymorph.features.byExample", {"limit": 0}, "between 1 and 50"),
    ("tinymorph.features.byExample", {"uri": "file:///never-opened.md"}, "open it first"),
    ("tinymorph.map", {"uri": "file:///never-opened.md"}, "open it first"),
    ("tinymorph.map", {"feature": 10**6}, "not in this document's map"),
    ("tinymorph.map", {"uri": 3}, "must be a string"),
])
async def test_bad_requests_are_refused_and_write_nothing(client, name, argument, message) -> None:
    from pygls.exceptions import JsonRpcException

    uri = (client.workspace_dir / "bad.md").as_uri()
    await opened(client, uri)
    maps = client.workspace_dir / ".tinymorph" / "maps"
    before = sorted(p.name for p in maps.iterdir()) if maps.exists() else []
    with pytest.raises(JsonRpcException, match=message):
        await command(client, name, {**selection(uri), **argument})
    assert (sorted(p.name for p in maps.iterdir()) if maps.exists() else []) == before
