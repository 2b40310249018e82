"""A manuscript longer than the model's context, as an editor opens and scrolls it. One JSON object on stdout.

    python benchmarks/bench_manuscript.py [--model default] [--sae default] [--doc-tokens 30000] [--documents 3]
                                          [--visible-lines 40] [--out FILE] [--tiny]

A real LSP client (Neovim 0.12's capabilities) opens `--documents` manuscripts of `--doc-tokens` tokens one after
the other; for each it asks for the inlay hints of its first `--visible-lines` lines (what the editor shows on
opening) every 20 ms until hints come, then scrolls to the middle and to the end and waits the same way there.
Then it waits until the server has read the whole manuscript (in pieces, `lsp_server.whole`) and scrolls to a
quarter of it, a place it has not shown yet. Reported: seconds from opening to the first hints at the top
(`first_hints_s`), from each scroll to the hints there (`scroll_hints_s`), from opening to the whole read
(`whole_s`), and the server's resident memory after each manuscript (`memory_mb`).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from harness import emit
from lsp_client import document, execute, options, start_editor, tiny_assets
from lsprotocol import types


async def hints_at(client: Any, uri: str, first: int, last: int, timeout: float = 300.0) -> float:
    """Seconds until the server answers the inlay hints of lines `first` to `last` with at least one hint."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        got = await client.text_document_inlay_hint_async(types.InlayHintParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            range=types.Range(start=types.Position(line=first, character=0),
                              end=types.Position(line=last, character=0))))
        if got:
            return time.perf_counter() - t0
        await asyncio.sleep(0.02)
    raise TimeoutError(f"no hints in lines {first}-{last} of {uri} after {timeout:.0f} s")


async def whole_read(client: Any, uri: str, timeout: float = 900.0) -> float:
    """When (perf_counter) the server has read all of the document at its first version."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        doc = await execute(client, "tinymorph.document", {"uri": uri})
        at_once = doc["annotatedVersion"] == 1 and doc["annotatedRange"] == [0, len(doc["text"])]
        if doc["wholeVersion"] == 1 or at_once:
            return time.perf_counter()  # read whole in pieces, or at once (not longer than `maxChars`)
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{uri} was not read whole after {timeout:.0f} s")


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    if args.tiny:
        args.model, args.sae = tiny_assets()
    text, n_tokens = document(args.model, args.doc_tokens)
    lines = text.count("\n") + 1
    client, status = await start_editor(args, 16)
    runs = []
    for i in range(args.documents):
        uri = f"file:///bench/manuscript{i}.md"
        t0 = time.perf_counter()
        client.text_document_did_open(types.DidOpenTextDocumentParams(text_document=types.TextDocumentItem(
            uri=uri, language_id="markdown", version=1, text=text)))
        await hints_at(client, uri, 0, args.visible_lines, timeout=600.0)
        opened = time.perf_counter() - t0
        scrolls = {}
        for name, top in (("middle", lines // 2), ("end", max(0, lines - args.visible_lines))):
            scrolls[name] = round(await hints_at(client, uri, top, min(lines, top + args.visible_lines)), 3)
        whole = await whole_read(client, uri) - t0
        top = lines // 4  # a part not scrolled to yet: its hints come from the whole's reading
        scrolls["quarter_after_whole"] = round(await hints_at(client, uri, top, top + args.visible_lines), 3)
        memory = (await execute(client, "tinymorph.status"))["memoryMb"]
        runs.append({"first_hints_s": round(opened, 3), "scroll_hints_s": scrolls, "whole_s": round(whole, 3),
                     "memory_mb": memory})
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()
    engine = status["engine"]
    return {
        "benchmark": "lsp_manuscript", "model": engine["model"], "sae": engine["sae"], "device": engine["device"],
        "dtype": engine["dtype"], "fast_path": engine.get("fast_path"), "document_tokens": n_tokens,
        "document_chars": len(text), "lines": lines, "visible_lines": args.visible_lines, "documents": runs,
        "first_hints_s_median": round(statistics.median(r["first_hints_s"] for r in runs), 3),
        "whole_s_median": round(statistics.median(r["whole_s"] for r in runs), 3),
        "memory_mb_with_all_open": runs[-1]["memory_mb"],
    }


def parser() -> argparse.ArgumentParser:
    ap = options(__doc__)
    ap.set_defaults(doc_tokens=30_000)
    ap.add_argument("--documents", type=int, default=3)
    ap.add_argument("--visible-lines", type=int, default=40)
    return ap


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    emit(asyncio.run(bench(args)), args.out)


if __name__ == "__main__":
    raise SystemExit(main())
