"""Document sync under many random edit sequences: does the server's text always follow the client's?

    python benchmarks/fuzz_edits.py [--sequences 10000] [--seed 0] [--out FILE]

Each sequence (a seeded `tests.test_edit_fuzz.generate`: full and incremental `didChange`s over emoji, ZWJ
sequences, combining marks, CJK and CR / LF / CRLF, with empty edits, edits at the end, deletions across line
breaks, positions past a line's end) goes through the server's own `didOpen` / `didChange` handlers in process,
once with UTF-16 positions and once with UTF-8, and is checked after every `didChange` against the client's model.
One JSON object: sequences, edits, failures (and the first few, with their seeds), seconds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from harness import emit

ROOT = Path(__file__).resolve().parents[1]


def run(sequences: int, seed: int) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from tests.test_edit_fuzz import ENCODINGS, InProcess, Seeded, generate

    replay = InProcess()
    edits = notifications = failures = 0
    failed: list[dict[str, Any]] = []
    start = time.perf_counter()
    try:
        for n in range(seed, seed + sequences):
            seq = generate(Seeded(n))
            edits += seq.edits
            notifications += len(seq.changes)
            for encoding in ENCODINGS:
                try:
                    replay.check(seq, encoding)
                except AssertionError as exc:
                    failures += 1
                    if len(failed) < 5:
                        failed.append({"seed": n, "encoding": encoding, "error": str(exc)[:500]})
    finally:
        replay.close()
    return {"sequences": sequences, "encodings": list(ENCODINGS), "edits": edits, "didChanges": notifications,
            "checks": sequences * len(ENCODINGS), "failures": failures, "failed": failed,
            "seconds": round(time.perf_counter() - start, 2)}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sequences", type=int, default=10_000, help="edit sequences to run (default 10000)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the first sequence (the others follow)")
    ap.add_argument("--out", help="also write the JSON result here")
    return ap


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    result = run(args.sequences, args.seed)
    emit(result, args.out)
    raise SystemExit(1 if result["failures"] else 0)


if __name__ == "__main__":
    main()
