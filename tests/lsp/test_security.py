"""Security: settings cannot run a model's own code without the writer's yes, and no request reads or writes a file
outside the workspace's `.tinymorph/` (links there are refused, URIs outside the workspace change nothing outside
it). TCP binds loopback only: `test_transport.py`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest_lsp
from lsprotocol import types
from pytest_lsp import ClientServerConfig

from .conftest import SERVER, Client, command, init_options, make_client, start, wait_for, wait_ready

NOT_RUN = "was not run"


def make_asking_client() -> Client:
    """The tests' client, answering `window/showMessageRequest` with `client.answer` (a title, or None)."""
    client = make_client()
    client.answer = None  # type: ignore[attr-defined]
    client.asked = []  # type: ignore[attr-defined]

    @client.feature(types.WINDOW_SHOW_MESSAGE_REQUEST)
    def ask(ls: Client, params: types.ShowMessageRequestParams) -> types.MessageActionItem | None:
        ls.asked.append(params)  # type: ignore[attr-defined]
        answer = ls.answer  # type: ignore[attr-defined]
        return None if answer is None else types.MessageActionItem(title=answer)

    return client


ASKING = ClientServerConfig(server_command=SERVER.server_command, client_factory=make_asking_client)


@pytest_lsp.fixture(config=ASKING)
async def asking(lsp_client: Client):
    yield lsp_client
    await lsp_client.shutdown_session()


async def test_settings_cannot_run_a_models_code_without_a_yes(asking: Client, assets, tmp_path) -> None:
    asking.answer = "Don't"  # type: ignore[attr-defined]
    await start(asking, "neovim", init_options(assets, trustRemoteCode=True), tmp_path)
    status = await wait_ready(asking)
    assert status["settings"]["trustRemoteCode"] is True and status["remoteCode"] is False
    [asked] = asking.asked  # type: ignore[attr-defined]
    assert assets["model"] in asked.message and asked.type == types.MessageType.Warning
    assert [a.title for a in asked.actions or []] == ["Run its code", "Don't"]
    assert any(NOT_RUN in m.message for m in asking.messages)


async def test_a_yes_is_asked_once_per_model(asking: Client, assets, tmp_path) -> None:
    asking.answer = "Run its code"  # type: ignore[attr-defined]
    await start(asking, "neovim", init_options(assets, trustRemoteCode=True), tmp_path)
    assert (await wait_ready(asking))["remoteCode"] is True
    asking.workspace_did_change_configuration(types.DidChangeConfigurationParams(
        settings={"tinymorph": {**init_options(assets), "trustRemoteCode": True, "cacheMb": 64}}))

    async def reloaded() -> Any:
        status = await command(asking, "tinymorph.status")
        return status if status["state"] == "ready" and status["settings"]["cacheMb"] == 64 else None

    assert (await wait_for(reloaded, what="the reload"))["remoteCode"] is True
    assert len(asking.asked) == 1  # type: ignore[attr-defined]
    assert not any(NOT_RUN in m.message for m in asking.messages)


async def test_a_dismissed_question_is_a_no(asking: Client, assets, tmp_path) -> None:
    await start(asking, "emacs", init_options(assets, trustRemoteCode=True), tmp_path)
    assert (await wait_ready(asking))["remoteCode"] is False
    assert len(asking.asked) == 1  # type: ignore[attr-defined]


def steer(uri: str | None = None) -> dict[str, Any]:
    return {"feature": 3, "strength": 2, "mode": "add", **({"uri": uri} if uri else {})}


async def test_links_in_the_store_are_neither_read_nor_written(asking: Client, assets, tmp_path) -> None:
    workspace, elsewhere = tmp_path / "ws", tmp_path / "elsewhere"
    workspace.mkdir()
    elsewhere.mkdir()
    secret = elsewhere / "secret.json"
    secret.write_text(json.dumps({"version": 3, "steering": [steer()]}))
    (workspace / ".tinymorph").symlink_to(elsewhere)  # a cloned project pointing the store at the writer's files
    await start(asking, "neovim", init_options(assets), workspace)
    await wait_ready(asking)
    listed = await command(asking, "tinymorph.steer.list")
    assert listed["steering"] == []  # nothing read through the link
    await command(asking, "tinymorph.steer.add", steer())
    assert len((await command(asking, "tinymorph.steer.list"))["steering"]) == 1  # kept in memory
    assert sorted(p.name for p in elsewhere.iterdir()) == ["secret.json"]  # nothing written through it
    assert any("link" in m.message and "in memory" in m.message for m in asking.messages)


async def test_a_store_that_becomes_a_link_is_not_written(asking: Client, assets, tmp_path) -> None:
    workspace, elsewhere = tmp_path / "ws", tmp_path / "elsewhere"
    (workspace / ".tinymorph").mkdir(parents=True)
    elsewhere.mkdir()
    await start(asking, "neovim", init_options(assets), workspace)
    await wait_ready(asking)
    await command(asking, "tinymorph.steer.add", steer())
    saved = (workspace / ".tinymorph" / "steering.json").read_text()
    (workspace / ".tinymorph" / "steering.json").unlink()
    (workspace / ".tinymorph" / "steering.json").symlink_to(elsewhere / "target.json")
    try:
        await command(asking, "tinymorph.steer.add", {**steer(), "feature": 4})
        raise AssertionError("the save through a link was not refused")
    except Exception as exc:  # pygls' JsonRpcException for the InvalidParams answer
        assert "link" in str(exc), exc
    assert list(elsewhere.iterdir()) == []
    assert [s["feature"] for s in (await command(asking, "tinymorph.steer.list"))["steering"]] == [3]
    assert json.loads(saved)["steering"][0]["feature"] == 3


async def test_uris_outside_the_workspace_write_nothing_outside_it(asking: Client, assets, tmp_path) -> None:
    workspace, elsewhere = tmp_path / "ws", tmp_path / "elsewhere"
    workspace.mkdir()
    elsewhere.mkdir()
    await start(asking, "neovim", init_options(assets), workspace)
    await wait_ready(asking)
    for uri in (elsewhere.as_uri() + "/x.md", (workspace / ".." / "elsewhere" / "y.md").as_uri(),
                "file:///etc/passwd", "untitled:Untitled-1"):
        await command(asking, "tinymorph.steer.add", steer(uri))
    assert list(elsewhere.iterdir()) == []
    assert sorted(p.name for p in (workspace / ".tinymorph").iterdir()) == ["steering.json"]
    files = [p for p in Path(tmp_path).rglob("*") if p.is_file()]
    assert files == [workspace / ".tinymorph" / "steering.json"]
