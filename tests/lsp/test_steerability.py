"""Steerability in the editor: hover, code actions and explain say how well Amplify carries a feature (measured by
`tinymorph calibrate`), and Amplify on a feature it cannot carry fluently says so and changes nothing."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest
import pytest_lsp
from lsprotocol import types

from steering.evaluation.calibrate import Choice, store
from steering.sae.layouts import load_sae

from .conftest import (
    CLIENTS,
    SERVER,
    Client,
    command,
    init_options,
    open_doc,
    start,
    wait_annotated,
    wait_ready,
)

TEXT = "the rain fell on the quiet harbour while she read the letter again\n\ngulls cried over the boats\n"
CANNOT = 5
"""The feature Amplify cannot carry; every other one carries well."""


@pytest.fixture(scope="module")
def measured_sae(assets: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tests' SAE with a steerability for every feature: 0 for `CANNOT`, 1 for the rest."""
    folder = tmp_path_factory.mktemp("measured") / "sae"
    shutil.copytree(assets["sae"], folder)
    sae = load_sae(folder)
    store(sae, folder, [Choice(f, 0.0, 0.0 if f == CANNOT else 1.0, 2.0) for f in range(sae.d_sae)])
    assert load_sae(folder).steerability(CANNOT) == 0.0
    return folder


@pytest_lsp.fixture(config=SERVER, params=CLIENTS, scope="module")
async def client(lsp_client: Client, request: pytest.FixtureRequest, assets: dict[str, str], measured_sae: Path,
                 tmp_path_factory: pytest.TempPathFactory):
    workspace = tmp_path_factory.mktemp("workspace")
    lsp_client.workspace_dir = workspace  # type: ignore[attr-defined]
    await start(lsp_client, request.param, {**init_options(assets), "sae": str(measured_sae)}, workspace)
    await wait_ready(lsp_client)
    yield
    await lsp_client.shutdown_session()


async def test_amplify_on_a_feature_it_cannot_carry_says_so_and_changes_nothing(client: Client) -> None:
    await command(client, "tinymorph.steer.clear")
    before = len(client.messages)
    refused = await command(client, "tinymorph.steer.add", {"feature": CANNOT})
    assert "cannot carry" in refused["refused"] and refused["steering"] == []
    for _ in range(50):
        if len(client.messages) > before:
            break
        await asyncio.sleep(0.05)
    assert any("cannot carry" in m.message for m in client.messages[before:])
    # suppressing it is fine, and so is amplifying a feature that carries
    assert [e["feature"] for e in (await command(client, "tinymorph.steer.add",
                                                 {"feature": CANNOT, "strength": -1}))["steering"]] == [CANNOT]
    added = await command(client, "tinymorph.steer.add", {"feature": CANNOT + 1})
    assert "refused" not in added and [e["feature"] for e in added["steering"]] == [CANNOT, CANNOT + 1]
    await command(client, "tinymorph.steer.clear")


async def test_explain_hover_and_actions_say_how_amplify_does(client: Client) -> None:
    explained = await command(client, "tinymorph.features.explain", {"feature": CANNOT + 2})
    assert explained["steerability"] == 1.0 and explained["amplify"] == "carries it well"
    uri = "file:///steerability.md"
    open_doc(client, uri, TEXT)
    await wait_annotated(client, uri, 1)
    hovers: list[Any] = []
    for character in range(0, 40, 3):
        hover = await client.text_document_hover_async(types.HoverParams(
            text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(line=0, character=character)))
        if hover is not None:
            hovers.append(hover.contents.value)
    assert any("amplify carries it well" in h for h in hovers), hovers
    actions = await client.text_document_code_action_async(types.CodeActionParams(
        text_document=types.TextDocumentIdentifier(uri=uri),
        range=types.Range(start=types.Position(line=0, character=0), end=types.Position(line=0, character=40)),
        context=types.CodeActionContext(diagnostics=[])))
    amplify = [a.title for a in actions or [] if a.title.startswith("Amplify")]
    assert amplify and all(t.endswith(("carries it well", "cannot carry it fluently")) for t in amplify), amplify
