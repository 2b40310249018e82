"""A long session against the language server: does it stay fast, small and error-free?

    python benchmarks/soak_lsp.py [--minutes 10] [--edits-per-s 20] [--doc-tokens 2000] [--documents 3]
                                  [--model default] [--sae default] [--tiny] [--out FILE]

A real LSP client (stdio, a `python -m lsp_server` child) opens `--documents` documents and, for `--minutes`,
edits them at `--edits-per-s` (a seeded mix: a word typed at the end, a word inserted or deleted in the middle, a
line break, an undo of the last insert; once a document has 5 % more tokens than at the start, typing at the end
becomes deleting there, so every minute does the same work: the limit is in tokens, not characters, because the
words typed in the middle (emoji, CJK) take more tokens per character than the English they replace at the end),
and between edits asks for hover, inlay hints, inline completions and completions (about one request per four
edits). Every answer is checked for shape; a request that fails or times out (30 s) counts as an error. Per minute:
p50 / p95 of each request kind's latency and of all of them, errors, the server's resident memory (`memoryMb` of
`tinymorph.status`) and the documents' token counts. At the end the client's text of each document is
compared with the server's (`tinymorph.document`: text and version).

Goals (from the reliability issue): no error; p95 of the last minute within 20 % of the first; memory after
warm-up (the end of the first minute) grows less than 10 %. One JSON object with `goals_met`.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections.abc import Callable
from typing import Any

from harness import emit, latency, logger
from lsp_client import Client, document, execute, options, start_editor, tiny_assets, tokenizer_of, wait
from lsprotocol import types

WORDS = ("the", "harbour", "was", "quiet", "and", "she", "walked", "along", "water", "thinking", "of", "letter",
         "rain", "morning", "boats", "slowly", "towards", "old", "house", "light", "🌧️", "港口", "café")
TIMEOUT = 30.0
SERVER = [sys.executable, "-m", "lsp_server"]
"""The server's command line."""

log = logger("soak")


class Doc:
    """The client's copy of a document, edited by UTF-16 positions as an editor sends them."""

    RECOUNT = 8
    """Edits between two token counts."""

    def __init__(self, uri: str, text: str, count: Callable[[str], int]) -> None:
        self.uri, self.text, self.version = uri, text, 1
        self.count = count
        self.tokens = count(text)
        self.limit = self.tokens * 21 // 20
        """Past this many tokens typing at the end turns into deleting there: the documents keep their size in
        tokens, so the last minute's work is the first one's (typed words would otherwise grow them by about 60 % in
        10 minutes, and a limit in characters still let them grow by a third in tokens)."""

    @property
    def over(self) -> bool:
        return self.tokens > self.limit

    def position(self, offset: int) -> types.Position:
        before = self.text[:offset]
        line = before.count("\n")
        column = before[before.rfind("\n") + 1:]
        return types.Position(line=line, character=len(column.encode("utf-16-le")) // 2)

    def change(self, start: int, end: int, new: str) -> types.DidChangeTextDocumentParams:
        rng = types.Range(start=self.position(start), end=self.position(end))
        self.text = self.text[:start] + new + self.text[end:]
        self.version += 1
        if self.version % self.RECOUNT == 0:
            self.tokens = self.count(self.text)
        return types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=self.uri, version=self.version),
            content_changes=[types.TextDocumentContentChangePartial(range=rng, text=new)])


def word_start(text: str, offset: int) -> int:
    """The start of the word at or after `offset` (a place an edit in the middle lands)."""
    space = text.find(" ", offset)
    return offset if space < 0 else space + 1


def random_edit(doc: Doc, rng: random.Random, undo: list[tuple[int, int]]) -> types.DidChangeTextDocumentParams:
    roll = rng.random()
    n = len(doc.text)
    if roll < 0.5 and doc.over:  # deleting the last word
        undo.clear()
        return doc.change(doc.text.rstrip().rfind(" ") + 1 if " " in doc.text else n, n, "")
    if roll < 0.5:  # typing at the end
        word = " " + rng.choice(WORDS)
        undo.append((n, n + len(word)))
        return doc.change(n, n, word)
    if roll < 0.7:  # a word in the middle
        at = word_start(doc.text, rng.randrange(max(1, n)))
        word = rng.choice(WORDS) + " "
        undo.append((at, at + len(word)))
        return doc.change(at, at, word)
    if roll < 0.8 and undo:  # undo the last insert
        start, end = undo.pop()
        if end <= len(doc.text):
            return doc.change(start, end, "")
    if roll < 0.9:  # a deletion in the middle (never below half the document)
        at = word_start(doc.text, rng.randrange(max(1, n)))
        end = min(n, at + rng.randint(1, 12))
        if n > 2000:
            undo.clear()
            return doc.change(at, end, "")
    at = word_start(doc.text, rng.randrange(max(1, n)))
    undo.clear()
    return doc.change(at, at, "\n\n" if rng.random() < 0.5 else "\n")


async def request(kind: str, client: Client, doc: Doc, rng: random.Random) -> Any:
    ident = types.TextDocumentIdentifier(uri=doc.uri)
    if kind == "hints":
        end = doc.position(len(doc.text))
        return await client.text_document_inlay_hint_async(types.InlayHintParams(
            text_document=ident, range=types.Range(start=types.Position(line=0, character=0), end=end)))
    if kind == "hover":
        at = doc.position(rng.randrange(max(1, len(doc.text))))
        return await client.text_document_hover_async(types.HoverParams(text_document=ident, position=at))
    at = doc.position(len(doc.text))
    if kind == "inline":
        return await client.text_document_inline_completion_async(types.InlineCompletionParams(
            text_document=ident, position=at,
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic)))
    return await client.text_document_completion_async(types.CompletionParams(text_document=ident, position=at))


class Minute:
    """One minute's latencies by request kind (ms) and its error count."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.latency: dict[str, list[float]] = {"hints": [], "hover": [], "inline": [], "completion": []}
        self.asked: dict[str, list[float]] = {kind: [] for kind in self.latency}
        """When each request was sent, seconds after the first edit (`slowest`)."""
        self.texts: dict[str, list[float]] = {"inline": [], "completion": []}
        """Latencies of the completions that came with text: a request whose document was edited before its
        continuation was ready is answered at once with none (the editor asks again), and counts in `latency` too."""
        self.errors = 0

    def slowest(self, kind: str, count: int = 3) -> list[list[float]]:
        """The `count` slowest requests of `kind`: `[ms, seconds after the first edit]` each (is the tail the start's
        cold reads, or spread?)."""
        pairs = sorted(zip(self.latency[kind], self.asked[kind], strict=True), reverse=True)[:count]
        return [[round(ms, 1), round(at, 1)] for ms, at in pairs]


def summary(ms: list[float]) -> dict[str, float]:
    """p50 / p95 (ms, one decimal) and n of one minute's latencies."""
    return latency(ms, suffix="", digits=1)


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    if args.tiny:
        args.model, args.sae = tiny_assets()
    text, n_tokens = document(args.model, args.doc_tokens)
    client, status = await start_editor(args, 16, SERVER)
    tokenizer = tokenizer_of(args.model)
    docs = [Doc(f"file:///soak/doc{i}.md", text, lambda t: len(tokenizer(t)["input_ids"]))
            for i in range(args.documents)]
    for doc in docs:
        client.text_document_did_open(types.DidOpenTextDocumentParams(text_document=types.TextDocumentItem(
            uri=doc.uri, language_id="markdown", version=1, text=doc.text)))

    async def annotated() -> bool:
        for doc in docs:
            if (await execute(client, "tinymorph.document", {"uri": doc.uri}))["annotatedVersion"] != 1:
                return False
        return True

    await wait(annotated)
    rng = random.Random(0)
    undo: dict[str, list[tuple[int, int]]] = {d.uri: [] for d in docs}
    minutes: list[dict[str, Any]] = []
    errors: list[str] = []
    pending: set[asyncio.Task[None]] = set()
    interval = 1.0 / args.edits_per_s
    edits = 0

    async def timed(kind: str, doc: Doc, seed: int, minute: Minute) -> None:
        t0 = time.perf_counter()
        try:
            answer = await asyncio.wait_for(request(kind, client, doc, random.Random(seed)), TIMEOUT)
        except Exception as exc:
            minute.errors += 1
            errors.append(f"minute {minute.number}: {kind}: {type(exc).__name__}: {exc}"[:300])
            return
        minute.latency[kind].append((time.perf_counter() - t0) * 1000)
        minute.asked[kind].append(t0 - started)
        if kind in minute.texts and answer is not None and answer.items:
            minute.texts[kind].append(minute.latency[kind][-1])

    started, clock = time.perf_counter(), time.monotonic()
    for number in range(1, args.minutes + 1):
        current = Minute(number)
        end = time.perf_counter() + 60.0 * args.minute_scale
        next_at = time.perf_counter()
        while time.perf_counter() < end:
            doc = rng.choice(docs)
            client.text_document_did_change(random_edit(doc, rng, undo[doc.uri]))
            edits += 1
            if rng.random() < 0.25:
                kind = rng.choice(("hints", "hints", "hover", "inline", "completion"))
                task = asyncio.ensure_future(timed(kind, doc, rng.randrange(1 << 30), current))
                pending.add(task)
                task.add_done_callback(pending.discard)
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        if pending:
            await asyncio.wait(pending, timeout=TIMEOUT + 5)
        memory = (await execute(client, "tinymorph.status"))["memoryMb"]
        every = [ms for values in current.latency.values() for ms in values]
        minutes.append({"minute": number, "all": summary(every),
                        **{k: summary(v) for k, v in current.latency.items()},
                        "slowest": {k: current.slowest(k) for k in ("inline", "completion")},
                        "with_text": {k: summary(v) for k, v in current.texts.items()},
                        "errors": current.errors, "memory_mb": memory,
                        "document_tokens": [doc.count(doc.text) for doc in docs]})
        log(f"minute {number}: {minutes[-1]['all']} errors {current.errors} memory {memory} MB")

    mismatched = []
    for doc in docs:
        state = await execute(client, "tinymorph.document", {"uri": doc.uri})
        if state["version"] != doc.version or state["text"] != doc.text:
            mismatched.append(doc.uri)
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()

    first, last = minutes[0]["all"], minutes[-1]["all"]
    growth = (last.get("p95", 0) / first["p95"] - 1) if first.get("p95") else 0.0
    warm, final = minutes[0]["memory_mb"], minutes[-1]["memory_mb"]
    memory_growth = final / warm - 1 if warm else 0.0
    engine = status["engine"]
    return {
        "benchmark": "lsp_soak", "model": engine["model"], "device": engine["device"], "dtype": engine["dtype"],
        "minutes": args.minutes, "minute_s": 60.0 * args.minute_scale, "edits": edits,
        "edits_per_s": round(edits / (len(minutes) * 60.0 * args.minute_scale), 1),
        "documents": args.documents, "document_tokens": n_tokens,
        "per_minute": minutes, "errors": len(errors), "error_samples": errors[:20],
        "documents_out_of_sync": mismatched,
        "started_monotonic": round(clock, 4),
        "p95_growth_first_to_last": round(growth, 3), "memory_growth_after_warmup": round(memory_growth, 3),
        "goals_met": not errors and not mismatched and growth <= 0.2 and memory_growth < 0.1,
    }


def parser() -> argparse.ArgumentParser:
    ap = options(__doc__)
    ap.add_argument("--minutes", type=int, default=10)
    ap.add_argument("--edits-per-s", type=float, default=20.0)
    ap.add_argument("--documents", type=int, default=3)
    ap.add_argument("--minute-scale", type=float, default=1.0, help="seconds per 'minute' / 60 (short smoke runs)")
    return ap


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    emit(asyncio.run(soak(args)), args.out)


if __name__ == "__main__":
    main()
