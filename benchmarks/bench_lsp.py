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
import statistics
import sys
import time
from typing import Any

from harness import emit, latency
from lsp_client import Client, document, execute, make_client, options, tiny_assets, wait, wait_ready
from lsprotocol import types


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
        "edit_to_refreshed_hints": latency(edit_ms),
        "completion": {**latency(completion_ms), "max_tokens": args.max_tokens},
        "hint_idle": latency(idle["hint"]), "hover_idle": latency(idle["hover"]),
        "hint_during_generation": latency(busy["hint"]), "hover_during_generation": latency(busy["hover"]),
        "busy_requests_answered_before_the_generation_ended": overlapped,
        "ratio_hover_busy_over_idle": round(statistics.median(busy["hover"]) / statistics.median(idle["hover"]), 2),
        "ratio_hint_busy_over_idle": round(statistics.median(busy["hint"]) / statistics.median(idle["hint"]), 2),
    }


def parser() -> argparse.ArgumentParser:
    ap = options(__doc__)
    ap.add_argument("--edits", type=int, default=5)
    ap.add_argument("--completions", type=int, default=10)
    ap.add_argument("--max-tokens", type=int, default=24, help="tokens per measured completion")
    ap.add_argument("--busy-tokens", type=int, default=128, help="tokens of the generation that keeps the worker busy")
    ap.add_argument("--requests", type=int, default=40, help="hint and hover requests per phase")
    return ap


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.tiny:
        args.model, args.sae = tiny_assets()
        args.busy_tokens = max(args.busy_tokens, 400)
    emit(asyncio.run(bench(args)), args.out)


if __name__ == "__main__":
    main()
