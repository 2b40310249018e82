"""End-to-end server tests: `python -m lsp_server` as a subprocess, driven by pytest-lsp with the capability sets
of the clients we ship configs for, on a tiny model and a tiny SAE trained here."""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_lsp
from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient, client_capabilities

from steering.testing import save_tiny_model

CLIENTS = ["neovim", "visual_studio_code", "emacs"]
WORDS = ["the", "rain", "fell", "on", "quiet", "harbour", "while", "she", "read", "letter", "again", "and",
         "gulls", "cried", "over", "boats", "wind", "waves", "sand", "morning", "night", "storm", "light", "dark"]


@pytest.fixture(scope="session")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A tiny model folder and an SAE (with labels) trained on it by `tinymorph train-sae`."""
    from steering.cli import main

    root = tmp_path_factory.mktemp("lsp-assets")
    save_tiny_model(root / "model")
    rnd = random.Random(0)
    corpus = root / "corpus"
    corpus.mkdir()
    for i in range(2):
        paras = [" ".join(rnd.choice(WORDS) for _ in range(40)) + "." for _ in range(16)]
        (corpus / f"doc{i}.md").write_text("\n\n".join(paras), encoding="utf-8")
    code = main(["train-sae", "--model", str(root / "model"), "--layer", "2", "--corpus", str(corpus),
                 "--tokens", "6000", "--out", str(root / "sae"), "--batch-size", "512", "--buffer-size", "2048",
                 "--stats-tokens", "2000", "--expansion", "2", "--k", "8"])
    assert code == 0
    return {"model": str(root / "model"), "sae": str(root / "sae")}


class Client(LanguageClient):
    """The pytest-lsp client, also answering `workspace/inlayHint/refresh` and `workspace/applyEdit`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.refreshes = 0
        self.applied: list[types.ApplyWorkspaceEditParams] = []
        self.apply_result = True


def converter() -> Any:
    """lsprotocol's converter, except that a code action carrying a command object stays a CodeAction (lsprotocol
    2025.0.0 turns every `Command | CodeAction` with a `command` key into a Command)."""
    from typing import Union

    from pygls.protocol import default_converter

    conv = default_converter()

    def command_or_action(obj: Any, _: type) -> types.Command | types.CodeAction:
        kind = types.Command if isinstance(obj.get("command"), str) else types.CodeAction
        return conv.structure(obj, kind)

    conv.register_structure_hook(Union[types.Command, types.CodeAction], command_or_action)  # noqa: UP007
    return conv


def make_client() -> Client:
    from pytest_lsp.client import register_lsp_features

    client = Client(converter_factory=converter)
    register_lsp_features(client)

    @client.feature(types.WORKSPACE_INLAY_HINT_REFRESH)
    def refresh(ls: Client, params: None) -> None:
        ls.refreshes += 1

    @client.feature(types.WORKSPACE_APPLY_EDIT)
    def apply(ls: Client, params: types.ApplyWorkspaceEditParams) -> types.ApplyWorkspaceEditResult:
        ls.applied.append(params)
        return types.ApplyWorkspaceEditResult(applied=ls.apply_result)

    return client


SERVER = ClientServerConfig(server_command=[sys.executable, "-m", "lsp_server", "-v"], client_factory=make_client)


def init_options(assets: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {"model": assets["model"], "sae": assets["sae"], "device": "cpu", "debounceMs": 50,
            "maxTokens": 8, **extra}


INLINE = "neovim+inline"
"""Neovim's capabilities plus inline completion (Neovim 0.12 shows ghost text; pytest-lsp's set predates it)."""
PULL = "visual_studio_code+pull"
"""VS Code's capabilities plus pulled diagnostics with refresh, as vscode-languageclient 9 and later announce them
(pytest-lsp's set predates them)."""


def capabilities(spec: str) -> types.ClientCapabilities:
    if spec == INLINE:
        caps = client_capabilities("neovim")
        caps.text_document.inline_completion = types.InlineCompletionClientCapabilities()
        return caps
    if spec == PULL:
        caps = client_capabilities("visual_studio_code")
        caps.text_document.diagnostic = types.DiagnosticClientCapabilities(related_document_support=False)
        caps.workspace.diagnostics = types.DiagnosticWorkspaceClientCapabilities(refresh_support=True)
        return caps
    return client_capabilities(spec)


async def start(client: LanguageClient, spec: str, options: dict[str, Any], workspace: Path | None) -> None:
    folders = [types.WorkspaceFolder(uri=workspace.as_uri(), name="ws")] if workspace else None
    client.init_result = await client.initialize_session(types.InitializeParams(  # type: ignore[attr-defined]
        capabilities=capabilities(spec), initialization_options=options, workspace_folders=folders,
        root_uri=workspace.as_uri() if workspace else None))


async def wait_for(check: Callable[[], Awaitable[Any]], timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def command(client: LanguageClient, name: str, *args: Any) -> Any:
    return await client.workspace_execute_command_async(
        types.ExecuteCommandParams(command=name, arguments=list(args) if args else None))


async def wait_ready(client: LanguageClient, *, after_failure: bool = False) -> dict[str, Any]:
    async def ready() -> Any:
        status = await command(client, "tinymorph.status")
        assert after_failure or status["state"] != "failed", status["error"]
        return status if status["state"] == "ready" else None

    return await wait_for(ready, what="the engine to load")


async def wait_annotated(client: LanguageClient, uri: str, version: int) -> dict[str, Any]:
    async def done() -> Any:
        doc = await command(client, "tinymorph.document", {"uri": uri})
        return doc if doc["annotatedVersion"] == version else None

    return await wait_for(done, what=f"annotation of version {version}")


async def wait_idle(client: LanguageClient, quiet: float = 0.3) -> None:
    """Wait until the engine has run no job for `quiet` seconds: background work (suggestions of other documents
    after a steering change, re-reads) is over, so that a completion asked next decodes alone. Decoding together
    with other rows computes attention over another span, which can change a tiny random model's near-tied greedy
    token."""

    async def settled() -> bool:
        since = time.monotonic()
        while time.monotonic() - since < quiet:
            status = await command(client, "tinymorph.status")
            if status["queueDepth"] or status["running"] or status["batched"]:
                return False
            await asyncio.sleep(0.05)
        return True

    await wait_for(settled, what="the engine to be idle")


def open_doc(client: LanguageClient, uri: str, text: str, language: str = "markdown", version: int = 1) -> None:
    client.text_document_did_open(types.DidOpenTextDocumentParams(
        text_document=types.TextDocumentItem(uri=uri, language_id=language, version=version, text=text)))


def insert(client: LanguageClient, uri: str, line: int, character: int, text: str, version: int) -> None:
    """Send an incremental change inserting `text` at line:character (client units), as version `version`."""
    at = types.Position(line=line, character=character)
    client.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
        content_changes=[types.TextDocumentContentChangePartial(range=types.Range(start=at, end=at), text=text)]))


async def typed_with_suggestion(client: LanguageClient, uri: str, text: str, typed: str) -> dict[str, Any]:
    """Open `text` (one line), type `typed` at its end (version 2), and wait for the steered suggestion there."""
    open_doc(client, uri, text)
    insert(client, uri, 0, len(text), typed, version=2)

    async def suggestion() -> Any:
        return (await command(client, "tinymorph.document", {"uri": uri}))["suggestion"]

    return await wait_for(suggestion, what="a suggestion")


def json_of(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def client_fixture(clients: list[str] = CLIENTS, config: ClientServerConfig = SERVER, **options: Any) -> Any:
    """A module-scoped client per capability set, initialised on the tiny model with a workspace folder."""

    @pytest_lsp.fixture(config=config, params=clients, scope="module")
    async def client(lsp_client: Client, request: pytest.FixtureRequest, assets: dict[str, str],
                     tmp_path_factory: pytest.TempPathFactory):
        workspace = tmp_path_factory.mktemp("workspace")
        lsp_client.workspace_dir = workspace  # type: ignore[attr-defined]
        lsp_client.spec = request.param  # type: ignore[attr-defined]
        await start(lsp_client, request.param, init_options(assets, **options), workspace)
        await wait_ready(lsp_client)
        yield
        await lsp_client.shutdown_session()

    return client
