"""Language-server latency, through a real LSP client over stdio, as an editor sees it.

    python benchmarks/bench_lsp.py [--model default] [--sae default] [--doc-tokens 2000] [--edits 5]
                                   [--completions 10] [--requests 40] [--out FILE] [--tiny]

Prints one JSON object:
- `edit_to_refreshed_hints`: from a `didChange` in a document of `--doc-tokens` tokens to the server's
  `workspace/inlayHint/refresh` and the answer to the editor's next `inlayHint` request holding a hint for the edited
  paragraph (median / p95 ms over `--edits` edits; debounce set to 0, so add `debounceMs` for the user's view);
- `completion`: `textDocument/completion` latency (p50 / p95 ms over `--completions` requests, `maxTokens` tokens);
- `hover_idle` and `hover_during_generation` (and the same for inlay hints): request latency from the cache while
  the worker is idle and while a long generation runs, with their ratio (busy / idle);
- `load_s`, `first_annotation_s`.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lsprotocol import types
from pygls.lsp.client import LanguageClient

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "steering" / "data" / "sample.md"


def tiny_assets() -> tuple[str, str]:
    """A tiny random model and a random TopK SAE on its layer 2 (smoke test; the figures mean little)."""
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import save_tiny_model

    from steering.sae.autoencoder import SAE, HookPoint

    folder = Path(tempfile.mkdtemp())
    save_tiny_model(folder / "model")
    d = 64
    sae = SAE(d, d_sae=8 * d, architecture="topk", k=16, hook=HookPoint(2, "resid_post"))
    w = torch.randn(8 * d, d, generator=torch.Generator().manual_seed(0))
    w /= w.norm(dim=-1, keepdim=True)
    sae.W_dec.data.copy_(w)
    sae.W_enc.data.copy_(w.T.contiguous())
    sae.save(folder / "sae")
    return str(folder / "model"), str(folder / "sae")


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


def stats(ms: list[float]) -> dict[str, float]:
    ordered = sorted(ms)
    return {"p50_ms": round(statistics.median(ordered), 2),
            "p95_ms": round(ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))], 2), "n": len(ordered)}


class Client(LanguageClient):
    def __init__(self) -> None:
        super().__init__("tinymorph-bench", "0")
        self.refreshed = asyncio.Event()


def make_client() -> Client:
    client = Client()

    @client.feature(types.WORKSPACE_INLAY_HINT_REFRESH)
    def refresh(ls: Client, params: None) -> None:
        ls.refreshed.set()

    return client


async def execute(client: LanguageClient, command: str, arg: dict[str, Any] | None = None) -> Any:
    return await client.workspace_execute_command_async(
        types.ExecuteCommandParams(command=command, arguments=[arg or {}]))


async def wait(check: Any, timeout: float = 900.0) -> Any:
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


def whole(text: str) -> types.Range:
    return types.Range(start=types.Position(line=0, character=0),
                       end=types.Position(line=text.count("\n") + 1, character=0))


async def hints(client: Client, uri: str, rng: types.Range) -> list[types.InlayHint]:
    return list(await client.text_document_inlay_hint_async(types.InlayHintParams(
        text_document=types.TextDocumentIdentifier(uri=uri), range=rng)) or [])


async def cached_latency(client: Client, uri: str, text: str, n: int) -> dict[str, list[float]]:
    lines = text.count("\n") + 1
    hint_ms, hover_ms = [], []
    for i in range(n):
        start = time.perf_counter()
        await hints(client, uri, whole(text))
        hint_ms.append((time.perf_counter() - start) * 1000)
        start = time.perf_counter()
        await client.text_document_hover_async(types.HoverParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            position=types.Position(line=(2 * i) % lines, character=4)))
        hover_ms.append((time.perf_counter() - start) * 1000)
    return {"hint": hint_ms, "hover": hover_ms}


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    text, n_tokens = document(args.model, args.doc_tokens)
    client = make_client()
    await client.start_io(sys.executable, "-m", "lsp_server")
    t0 = time.perf_counter()
    await client.initialize_async(types.InitializeParams(
        capabilities=types.ClientCapabilities(workspace=types.WorkspaceClientCapabilities(
            inlay_hint=types.InlayHintWorkspaceClientCapabilities(refresh_support=True))),
        process_id=None, root_uri=None,
        initialization_options={"model": args.model, "sae": args.sae, "device": args.device, "suggestion": False,
                                "debounceMs": 0, "maxTokens": args.max_tokens}))
    client.initialized(types.InitializedParams())

    status = await wait_ready(client)
    load_s = time.perf_counter() - t0
    uri = "file:///bench/doc.md"
    version = 1
    t0 = time.perf_counter()
    client.text_document_did_open(types.DidOpenTextDocumentParams(text_document=types.TextDocumentItem(
        uri=uri, language_id="markdown", version=version, text=text)))

    async def annotated(v: int) -> Any:
        return (await execute(client, "tinymorph.document", {"uri": uri}))["annotatedVersion"] == v

    await wait(lambda: annotated(1))
    first_s = time.perf_counter() - t0

    # edit the middle paragraph, then wait for the refresh and a hint for that paragraph's end
    edit_ms = []
    lines = text.splitlines()
    middle = len(lines) // 2 - (len(lines) // 2) % 2  # a paragraph line (paragraphs sit on even lines)
    for _ in range(args.edits):
        client.refreshed.clear()
        version += 1
        start = time.perf_counter()
        at = types.Position(line=middle, character=0)
        client.text_document_did_change(types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
            content_changes=[types.TextDocumentContentChangePartial(range=types.Range(start=at, end=at),
                                                                    text="Then ")]))
        lines[middle] = "Then " + lines[middle]
        text = "\n".join(lines)
        while True:
            await asyncio.wait_for(client.refreshed.wait(), timeout=120)
            client.refreshed.clear()
            got = await hints(client, uri, types.Range(start=types.Position(line=middle, character=0),
                                                       end=types.Position(line=middle + 1, character=0)))
            if any(h.position.line == middle for h in got):
                break
        edit_ms.append((time.perf_counter() - start) * 1000)

    completion_ms = []
    end = types.Position(line=len(lines) - 1, character=len(lines[-1]))
    for _ in range(args.completions):
        start = time.perf_counter()
        await client.text_document_completion_async(types.CompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri), position=end))
        completion_ms.append((time.perf_counter() - start) * 1000)

    idle = await cached_latency(client, uri, text, args.requests)
    await execute(client, "tinymorph.steer.clear")
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
        settings={"tinymorph": {"maxTokens": args.busy_tokens}}))
    await asyncio.sleep(0.2)
    long_run = asyncio.ensure_future(client.text_document_completion_async(types.CompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), position=end)))

    async def running() -> Any:
        return (await execute(client, "tinymorph.status"))["running"] == "completion"

    await wait(running)
    busy = await cached_latency(client, uri, text, args.requests)
    overlapped = not long_run.done()
    await long_run
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()
    engine = status["engine"]
    return {
        "benchmark": "lsp", "model": engine["model"], "sae": engine["sae"], "device": engine["device"],
        "document_tokens": n_tokens, "document_chars": len(text), "load_s": round(load_s, 2),
        "first_annotation_s": round(first_s, 3),
        "edit_to_refreshed_hints": stats(edit_ms),
        "completion": {**stats(completion_ms), "max_tokens": args.max_tokens},
        "hint_idle": stats(idle["hint"]), "hover_idle": stats(idle["hover"]),
        "hint_during_generation": stats(busy["hint"]), "hover_during_generation": stats(busy["hover"]),
        "busy_requests_answered_before_the_generation_ended": overlapped,
        "ratio_hover_busy_over_idle": round(statistics.median(busy["hover"]) / statistics.median(idle["hover"]), 2),
        "ratio_hint_busy_over_idle": round(statistics.median(busy["hint"]) / statistics.median(idle["hint"]), 2),
    }


def parser(doc: str) -> argparse.ArgumentParser:
    """The options every LSP benchmark takes (model, SAE, device, document size, --tiny, --out)."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--sae", default="default")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--doc-tokens", type=int, default=2000)
    ap.add_argument("--tiny", action="store_true", help="a tiny random model and SAE (smoke test)")
    ap.add_argument("--out", help="also write the JSON here")
    return ap


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--edits", type=int, default=5)
    ap.add_argument("--completions", type=int, default=10)
    ap.add_argument("--max-tokens", type=int, default=24, help="tokens per measured completion")
    ap.add_argument("--busy-tokens", type=int, default=128, help="tokens of the generation that keeps the worker busy")
    ap.add_argument("--requests", type=int, default=40, help="hint and hover requests per phase")
    args = ap.parse_args()
    if args.tiny:
        args.model, args.sae = tiny_assets()
        args.busy_tokens = max(args.busy_tokens, 400)
    result = asyncio.run(bench(args))
    out = json.dumps(result, indent=2)
    print(out)
    if args.out:
        Path(args.out).write_text(out + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
