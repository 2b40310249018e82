"""How much text before the cursor a completion should read: held-out CE of the continuation against the window's
size, and what a window costs to read, in one run. One JSON object on stdout.

A completion's prompt is a window of text ending at the cursor (`lsp_server.generation.prompt_window`). A longer
window lets the model see more of the document; a shorter one is read faster after the cache is lost (an edit
inside it, a new document, a jump elsewhere) and makes every decode step attend over fewer positions. For each
window size in `--windows` (tokens), on `--samples` places in each held-out text (`--corpus`, by default the held-out
novels, speeches and manuals of `make default-sae-corpus`), at least the largest window into the text:

- `ce_nats`: mean cross-entropy of the next `--continuation` tokens given the window (the model's transformers
  forward), and `ce_vs_largest` (nats above the largest window's);
- `cold_ms`: a 16-token completion on the fast path with nothing cached (the window read, then decoded);
- `warm_ms`: the same after the writer typed three more tokens (the cache holds the window; what typing costs).

    python benchmarks/bench_window.py [--windows 128 256 512 1024 2048] [--samples 8] [--out FILE]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from harness import emit, latency, machine

from steering.config import EngineConfig, SamplingConfig
from steering.engine import Engine

CORPUS = Path(__file__).resolve().parents[1] / ".cache" / "default-sae-corpus" / "heldout"
DEFAULT_TEXTS = ("gutenberg", "sotu", "python-docs")


def texts(paths: list[str]) -> list[tuple[str, str]]:
    """(name, text) of every file under `paths` (folders are searched for .txt and .md files)."""
    out = []
    for raw in paths:
        path = Path(raw)
        files = sorted([*path.rglob("*.txt"), *path.rglob("*.md")]) if path.is_dir() else [path]
        out += [(f"{path.name}/{f.name}", f.read_text(encoding="utf-8")) for f in files]
    return out


def corpus_or_exit(paths: list[str], benchmark: str) -> None:
    """Exit with a message naming what builds the corpus where one of `paths` is missing."""
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise SystemExit(f"{benchmark}: {', '.join(missing)} not found (make default-sae-corpus builds it)")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--corpus", nargs="+", default=[str(CORPUS / t) for t in DEFAULT_TEXTS])
    ap.add_argument("--windows", nargs="+", type=int, default=[128, 256, 512, 1024, 2048])
    ap.add_argument("--samples", type=int, default=8, help="places per corpus folder or file")
    ap.add_argument("--continuation", type=int, default=32)
    ap.add_argument("--timed", type=int, default=6, help="places timed per window")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    corpus_or_exit(args.corpus, "bench_window")
    engine = Engine.load(EngineConfig(model=args.model, sae="none", device=args.device))
    lm, rng = engine.lm, random.Random(args.seed)
    largest, n = max(args.windows), args.continuation
    places: list[tuple[str, list[int]]] = []
    for corpus in args.corpus:
        ids_by_file = [(name, lm.tokenizer(text)["input_ids"]) for name, text in texts([corpus])]
        long_enough = [(name, ids) for name, ids in ids_by_file if len(ids) >= largest + n + 1]
        for _ in range(args.samples if long_enough else 0):
            name, ids = rng.choice(long_enough)
            at = rng.randrange(largest, len(ids) - n)
            places.append((name, ids[at - largest : at + n]))
    if not places:
        raise SystemExit(f"bench_window: no text of the corpus has {largest + n} tokens")
    began = time.perf_counter()
    ce: dict[int, list[float]] = {w: [] for w in args.windows}
    with torch.inference_mode():
        for _, ids in places:
            for w in args.windows:
                x = torch.tensor([ids[largest - w :]], device=lm.device)
                logits = lm.model(x).logits[0, w - 1 : -1].float()
                ce[w].append(float(torch.nn.functional.cross_entropy(logits, x[0, w:])))
    sampling = SamplingConfig(max_tokens=16, temperature=0.0, stop=())
    timings: dict[int, dict[str, list[float]]] = {w: {"cold": [], "warm": []} for w in args.windows}
    for i, (_, ids) in enumerate(places[: args.timed]):
        for w in args.windows:
            prompt = lm.tokenizer.decode(ids[largest - w : largest], skip_special_tokens=True)
            session = f"window-{i}-{w}"
            for kind, text in (("cold", prompt[:-12]), ("warm", prompt)):
                start = time.perf_counter()
                "".join(engine.generate(text, (), sampling, session=session))
                timings[w][kind].append((time.perf_counter() - start) * 1000)
            engine.forget(session)
    base = statistics.fmean(ce[largest])
    result: dict[str, Any] = {
        "benchmark": "window", "model": engine.info().model, **machine(lm.device, lm.dtype),
        "fast_path": engine.fast is not None, "places": len(places), "continuation_tokens": n,
        "files": sorted({name for name, _ in places}),
        "windows": {str(w): {"ce_nats": round(statistics.fmean(ce[w]), 4),
                             "ce_vs_largest": round(statistics.fmean(ce[w]) - base, 4),
                             "cold": latency(timings[w]["cold"]), "warm": latency(timings[w]["warm"])}
                    for w in args.windows},
        "seconds": round(time.perf_counter() - began, 1)}
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
