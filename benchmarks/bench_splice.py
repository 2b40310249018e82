"""What splicing over edits costs in quality and saves in time: held-out CE of the continuation after a window was
edited, read through a spliced cache against read again exactly, in one run. One JSON object on stdout.

After an edit inside a continuation's window the fast path reads only the edit's own tokens and moves the cached
keys and values of the text after it (`steering.fast.model.FastModel.splice`); those did not see the edit. For
`--samples` places in each held-out text (`--corpus`, by default the held-out novels, speeches and manuals of
`make default-sae-corpus`): a window of `--window-chars` characters ending at a word, the next `--continuation`
tokens of the text, and `--edits` random edits of the kind the soak makes (a word inserted, up to 12 characters
deleted, a line break; none in the last 100 characters), one read after each:

- `back`: the cache holds the edited text and the edits are undone one by one, so the continuation follows the text
  as it ends, not the one the cache saw (the hard case: the stale tokens describe text that is gone);
- `away`: the cache holds the original text and the edits are made one by one.

For each: `ce_exact` (the edited window read again from scratch), `ce_spliced` (through the cache as a completion
reads it, `FastModel.follow`, with its limit on splices), their mean difference and its spread; and the time of the
reads after each edit, spliced against exact.

    python benchmarks/bench_splice.py [--edits 1 4 8] [--samples 8] [--out FILE]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F
from bench_window import CORPUS, DEFAULT_TEXTS, corpus_or_exit, texts
from harness import emit, latency, logger, machine

from steering.config import EngineConfig
from steering.engine import Engine
from steering.fast.cache import PrefixCache
from steering.fast.model import SPLICE_LIMIT, FastModel, PrefixView

WORDS = ("the", "harbour", "was", "quiet", "and", "she", "walked", "along", "water", "thinking", "of", "letter",
         "rain", "morning", "boats", "slowly", "towards", "old", "house", "light")
KEEP_END = 100
"""No edit in the window's last characters: an edit at the cursor is typing, which reads its tokens anyway."""

log = logger("splice")


def edit(text: str, rng: random.Random) -> str:
    """`text` with one random edit at a word start (not in its last `KEEP_END` characters)."""
    at = text.find(" ", rng.randrange(len(text) - KEEP_END)) + 1
    roll = rng.random()
    if roll < 0.5:
        return text[:at] + rng.choice(WORDS) + " " + text[at:]
    if roll < 0.75:
        return text[:at] + text[at + rng.randint(1, 12):]
    return text[:at] + ("\n\n" if rng.random() < 0.5 else "\n") + text[at:]


def continuation_ce(fast: FastModel, cache: PrefixCache, continuation: list[int]) -> float:
    """Mean cross-entropy of `continuation` after what `cache` holds (read through it; the cache is spent)."""
    with torch.inference_mode():
        first = fast.upper(cache)
        n = len(cache.ids)
        cache.reserve(n + len(continuation))
        cache.ids = cache.ids + continuation
        view = PrefixView(fast, cache, n, n + len(continuation))
        x = fast.blocks(fast.embedding(torch.tensor(continuation, device=fast.device)), view, 0, fast.split)
        h = fast.blocks(fast.unsteered(x), view, fast.split, fast.n_layers)
        logits = torch.cat((first[None], fast.logits(h)[:-1])).float()
        return float(F.cross_entropy(logits, torch.tensor(continuation, device=logits.device)))


def read(fast: FastModel, cache: PrefixCache, ids: list[int], *, exact: bool) -> float:
    """Milliseconds to read `ids` through `cache` as a continuation does (spliced), or from the first change on."""
    start = time.perf_counter()
    with torch.inference_mode():
        if exact:
            cache.sync(ids)
        else:
            fast.follow(cache, ids)
        fast.upper(cache)
    return (time.perf_counter() - start) * 1000


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--corpus", nargs="+", default=[str(CORPUS / t) for t in DEFAULT_TEXTS])
    ap.add_argument("--edits", nargs="+", type=int, default=[1, 4, 8])
    ap.add_argument("--samples", type=int, default=8, help="places per corpus folder or file")
    ap.add_argument("--window-chars", type=int, default=2000)
    ap.add_argument("--continuation", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    corpus_or_exit(args.corpus, "bench_splice")
    engine = Engine.load(EngineConfig(model=args.model, sae="none"))
    fast = engine.fast
    if fast is None:
        raise SystemExit("bench_splice: the model has no fast path")
    tokenizer, rng = engine.lm.tokenizer, random.Random(args.seed)
    width = args.window_chars
    places: list[tuple[str, str]] = []
    for corpus in args.corpus:
        long_enough = [text for _, text in texts([corpus]) if len(text) > 3 * width]
        for _ in range(args.samples if long_enough else 0):
            text = rng.choice(long_enough)
            at = text.rfind(" ", 0, rng.randrange(width + 100, len(text) - width))
            places.append((text[at - width:at], text[at:at + 20 * args.continuation]))
    if not places:
        raise SystemExit(f"bench_splice: no text of the corpus has {3 * width} characters")

    def ids_of(text: str) -> list[int]:
        return list(tokenizer(text)["input_ids"])

    began = time.perf_counter()
    result: dict[str, Any] = {}
    for direction in ("back", "away"):
        for k in args.edits:
            exact_ce, spliced_ce, spliced_ms, exact_ms = [], [], [], []
            for window, after in places:
                continuation = ids_of(after)[:args.continuation]
                versions = [window]
                for _ in range(k):
                    versions.append(edit(versions[-1], rng))
                if direction == "back":
                    versions.reverse()
                spliced, reread = PrefixCache(fast), PrefixCache(fast)
                read(fast, spliced, ids_of(versions[0]), exact=True)
                read(fast, reread, ids_of(versions[0]), exact=True)
                for version in versions[1:]:
                    ids = ids_of(version)
                    spliced_ms.append(read(fast, spliced, ids, exact=False))
                    exact_ms.append(read(fast, reread, ids, exact=True))
                spliced_ce.append(continuation_ce(fast, spliced, continuation))
                exact_ce.append(continuation_ce(fast, reread, continuation))
            diff = [s - e for s, e in zip(spliced_ce, exact_ce, strict=True)]
            result[f"{direction}_{k}"] = {
                "direction": direction, "edits": k, "places": len(places),
                "ce_exact": round(statistics.fmean(exact_ce), 4), "ce_spliced": round(statistics.fmean(spliced_ce), 4),
                "ce_diff_mean": round(statistics.fmean(diff), 4),
                "ce_diff_abs_max": round(max(abs(d) for d in diff), 4),
                "read_after_an_edit_spliced": latency(spliced_ms), "read_after_an_edit_exact": latency(exact_ms)}
            log(f"{direction} {k}: {result[f'{direction}_{k}']}")
    emit({"benchmark": "splice", "model": engine.info().model, **machine(fast.device, fast.dtype),
          "splice_limit": SPLICE_LIMIT, "window_chars": width, "continuation_tokens": args.continuation,
          "runs": result, "seconds": round(time.perf_counter() - began, 1)}, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
