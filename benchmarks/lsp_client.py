"""The editor's side of the language-server benchmarks: a pygls client over stdio, the server's start-up and
commands, the options every LSP benchmark takes, and the document they open.

`--tiny` runs a server on `steering.testing`'s tiny model and random SAE (a smoke test; the figures mean little).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lsprotocol import types
from pygls.lsp.client import LanguageClient

SAMPLE = Path(__file__).resolve().parent.parent / "steering" / "data" / "sample.md"
"""The prose `document` repeats."""


def tiny_assets() -> tuple[str, str]:
    """A tiny random model and a random TopK SAE on its layer 2, in a new temporary folder."""
    from steering.testing import save_tiny_assets

    model, sae = save_tiny_assets(tempfile.mkdtemp(prefix="bench-lsp-tiny-"))
    return str(model), str(sae)


@functools.cache
def tokenizer_of(model: str) -> Any:
    """The tokenizer of `model` (loaded once)."""
    from steering.runtime.models import load_model

    return load_model(model, "cpu").tokenizer


def document(model: str, n_tokens: int) -> tuple[str, int]:
    """Paragraphs of the sample text (one line each) repeated until the model's tokenizer counts `n_tokens`."""
    tokenizer = tokenizer_of(model)
    paragraphs = [" ".join(p.split()) for p in SAMPLE.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    out: list[str] = []
    i = 0
    while len(tokenizer("\n\n".join(out))["input_ids"]) < n_tokens:
        out.append(f"{i}. {paragraphs[i % len(paragraphs)]}")
        i += 1
    text = "\n\n".join(out)
    return text, len(tokenizer(text)["input_ids"])


class Client(LanguageClient):
    """A pygls client that notes the server's `workspace/inlayHint/refresh` requests (`refreshed`)."""

    def __init__(self) -> None:
        super().__init__("tinymorph-bench", "0")
        self.refreshed = asyncio.Event()


def make_client() -> Client:
    """A Client answering `workspace/inlayHint/refresh`."""
    client = Client()

    @client.feature(types.WORKSPACE_INLAY_HINT_REFRESH)
    def refresh(ls: Client, params: None) -> None:
        ls.refreshed.set()

    return client


async def execute(client: LanguageClient, command: str, arg: dict[str, Any] | None = None) -> Any:
    """The result of the server's `command` with `arg`."""
    return await client.workspace_execute_command_async(
        types.ExecuteCommandParams(command=command, arguments=[arg or {}]))


async def wait(check: Any, timeout: float = 900.0) -> Any:
    """Await `check()` every 10 ms until it returns something true, and return that (TimeoutError after
    `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = await check()
        if result:
            return result
        await asyncio.sleep(0.01)
    raise TimeoutError("the server did not get there in time")


async def wait_ready(client: LanguageClient) -> dict[str, Any]:
    """The server's status once its engine is loaded (a failed load raises)."""

    async def ready() -> Any:
        status = await execute(client, "tinymorph.status")
        if status["state"] == "failed":
            raise RuntimeError(status["error"])
        return status if status["state"] == "ready" else None

    return dict(await wait(ready))


async def start_editor(args: argparse.Namespace, max_tokens: int,
                       server: Sequence[str] = (sys.executable, "-m", "lsp_server")) -> tuple[Client, dict[str, Any]]:
    """A client announcing inlay-hint refresh and inline completion (as Neovim 0.12 does), on a server started with
    `args`' model, SAE and device; with the server's status once its engine is loaded."""
    client = make_client()
    await client.start_io(*server)
    await client.initialize_async(types.InitializeParams(
        capabilities=types.ClientCapabilities(
            workspace=types.WorkspaceClientCapabilities(
                inlay_hint=types.InlayHintWorkspaceClientCapabilities(refresh_support=True)),
            text_document=types.TextDocumentClientCapabilities(
                inline_completion=types.InlineCompletionClientCapabilities())),
        process_id=None, root_uri=None,
        initialization_options={"model": args.model, "sae": args.sae, "device": args.device,
                                "maxTokens": max_tokens}))
    client.initialized(types.InitializedParams())
    return client, await wait_ready(client)


def options(doc: str) -> argparse.ArgumentParser:
    """The options every LSP benchmark takes (model, SAE, device, document size, --tiny, --out)."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--sae", default="default")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--doc-tokens", type=int, default=2000)
    ap.add_argument("--tiny", action="store_true", help="a tiny random model and SAE (smoke test)")
    ap.add_argument("--out", help="also write the JSON here")
    return ap
