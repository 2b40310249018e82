"""A writer typing at the end of a long document, as an editor with ghost text sees the server.

    python benchmarks/bench_typing.py [--model default] [--sae default] [--doc-tokens 2000] [--rounds 20]
                                      [--word-interval 0.15] [--max-tokens 16] [--places middle paste]
                                      [--amplify F] [--out FILE] [--tiny]

The client announces inline completion and inlay-hint refresh (as Neovim 0.12 does), opens a document of
`--doc-tokens` tokens and waits for its first annotation. Then, `--rounds` times: it types 1 to 4 words (seeded)
at the end, one every `--word-interval` seconds, asking for an inline completion after each word (the requests a
newer word makes stale come back empty), and pauses until the last request is answered. The server's default
debounce applies. One JSON object:
- `inline_completion_at_pause`: request → answer of the last request of each round (what the writer waits for);
- `stale_requests`: requests answered empty because a newer word arrived, and how soon after they were sent;
- `hint_refresh_after_pause`: from the round's last change to the server's `workspace/inlayHint/refresh` for a
  finished annotation of that version;
- `server_memory_mb` at the start and the end (the server's own resident memory).
Then (`--places`) the same rounds, with the same figures, at the end of a line in the middle of the document
(`middle`: everything after the cursor stays, as when a writer revises) and at the end again after 500 words were
pasted at the top (`after_paste`: an edit far above the cursor).
With `--amplify F`, the rounds run again after Amplify on feature F (`tinymorph.steer.add`, the editor's strength),
typing on from where they stopped, and `amplified` holds the same figures, with `amplified_vs_unsteered`, the ratio
of the inline completions' median latencies (the goal is at most 1.5).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from typing import Any

from harness import emit, latency
from lsp_client import document, execute, options, start_editor, tiny_assets, wait
from lsprotocol import types

WORDS = ("the", "harbour", "was", "quiet", "and", "she", "walked", "along", "water", "thinking", "of", "letter",
         "rain", "morning", "boats", "slowly", "towards", "old", "house", "light")


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    if args.tiny:
        args.model, args.sae = tiny_assets()
    text, n_tokens = document(args.model, args.doc_tokens)
    client, status = await start_editor(args, args.max_tokens)
    uri = "file:///bench/typing.md"
    client.text_document_did_open(types.DidOpenTextDocumentParams(text_document=types.TextDocumentItem(
        uri=uri, language_id="markdown", version=1, text=text)))

    async def annotated(v: int) -> Any:
        return (await execute(client, "tinymorph.document", {"uri": uri}))["annotatedVersion"] == v

    t0 = time.perf_counter()
    await wait(lambda: annotated(1))
    first_annotation_s = time.perf_counter() - t0
    memory_start = (await execute(client, "tinymorph.status"))["memoryMb"]

    rng = random.Random(0)
    lines = text.split("\n")
    where = {"version": 1, "line": len(lines) - 1, "column": len(lines[-1])}

    def change(at: types.Position, new_text: str) -> None:
        where["version"] += 1
        client.text_document_did_change(types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=where["version"]),
            content_changes=[types.TextDocumentContentChangePartial(range=types.Range(start=at, end=at),
                                                                    text=new_text)]))

    async def rounds() -> dict[str, Any]:
        at_pause, stale, refresh = [], [], []
        answered_at: dict[asyncio.Future[Any], tuple[float, float]] = {}
        for _ in range(args.rounds):
            pending: list[tuple[float, asyncio.Future[Any]]] = []
            for _ in range(rng.randint(1, 4)):
                word = " " + rng.choice(WORDS)
                client.refreshed.clear()
                change(types.Position(line=where["line"], character=where["column"]), word)
                changed = time.perf_counter()
                where["column"] += len(word)
                request = asyncio.ensure_future(client.text_document_inline_completion_async(
                    types.InlineCompletionParams(
                        text_document=types.TextDocumentIdentifier(uri=uri),
                        position=types.Position(line=where["line"], character=where["column"]),
                        context=types.InlineCompletionContext(
                            trigger_kind=types.InlineCompletionTriggerKind.Automatic))))
                started = time.perf_counter()
                request.add_done_callback(lambda r, t=started: answered_at.setdefault(r, (t, time.perf_counter())))
                pending.append((started, request))
                await asyncio.sleep(args.word_interval)
            sent, last = pending[-1]
            answer = await last
            at_pause.append((time.perf_counter() - sent) * 1000 if answer and answer.items else float("nan"))
            for _started, request in pending[:-1]:
                got = await request
                if not (got and got.items):
                    began, ended = answered_at.pop(request)
                    stale.append((ended - began) * 1000)

            async def refreshed(v: int = where["version"]) -> Any:
                return await annotated(v)

            await wait(refreshed, timeout=120)
            refresh.append((time.perf_counter() - changed) * 1000)
        answered = [ms for ms in at_pause if ms == ms]
        return {"inline_completion_at_pause": {**latency(answered), "empty": len(at_pause) - len(answered)},
                "stale_requests": latency(stale), "hint_refresh_after_pause": latency(refresh)}

    plain = await rounds()
    elsewhere: dict[str, Any] = {}
    end = {"line": where["line"], "column": where["column"]}
    if "middle" in args.places:  # the end of a line in the middle of the document
        middle = min((i for i, line in enumerate(lines) if line.strip()), key=lambda i: abs(i - len(lines) // 2))
        where.update(line=middle, column=len(lines[middle]))
        elsewhere["middle"] = await rounds()
        where.update(end)
    if "paste" in args.places:  # 500 words pasted at the top, then typing on at the end
        pasted = " ".join(rng.choice(WORDS) for _ in range(500)) + ".\n\n"
        change(types.Position(line=0, character=0), pasted)
        where["line"] += pasted.count("\n")
        elsewhere["after_paste"] = await rounds()
    amplified = None
    if args.amplify is not None:
        added = await execute(client, "tinymorph.steer.add", {"feature": args.amplify})
        if added.get("refused"):
            raise SystemExit(f"Amplify refused feature {args.amplify}: {added['refused']}")
        amplified = await rounds()
        amplified["feature"] = args.amplify
    status_end = await execute(client, "tinymorph.status")
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()
    engine = status["engine"]
    return {
        "benchmark": "lsp_typing", "model": engine["model"], "sae": engine["sae"], "device": engine["device"],
        "dtype": engine["dtype"], "fast_path": engine.get("fast_path"), "int8_decode": engine.get("int8_decode"),
        "document_tokens": n_tokens, "rounds": args.rounds, "word_interval_s": args.word_interval,
        "max_tokens": args.max_tokens, "first_annotation_s": round(first_annotation_s, 3),
        **plain,
        **elsewhere,
        "amplified": amplified,
        "amplified_vs_unsteered": None if amplified is None else round(
            amplified["inline_completion_at_pause"]["p50_ms"] / plain["inline_completion_at_pause"]["p50_ms"], 3),
        "generations": status_end["generations"],
        "server_memory_mb": {"start": memory_start, "end": status_end["memoryMb"]},
    }


def parser() -> argparse.ArgumentParser:
    ap = options(__doc__)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--word-interval", type=float, default=0.15)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--places", nargs="*", default=["middle", "paste"], choices=["middle", "paste"],
                    help="after the rounds at the end, the same rounds at the end of a line in the middle, and at the "
                         "end again after 500 words were pasted at the top")
    ap.add_argument("--amplify", type=int, default=None, metavar="F",
                    help="then the same rounds again with feature F amplified (e.g. 367, the sea in the default SAE)")
    return ap


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    emit(asyncio.run(bench(args)), args.out)


if __name__ == "__main__":
    main()
