"""How well SAEs reconstruct each held-out genre of the default corpus, as JSON: FVU on typical tokens and the CE
increase when the SAE is spliced in, per genre (novels, technical notes, the model's everyday text, speeches,
definitions), for one or more SAEs read by the same model in the same run.

    python benchmarks/bench_sae_genres.py [--sae default .cache/candidate] [--heldout .cache/default-sae-corpus/heldout]
        [--tokens 20000] [--out benchmarks/results/sae-genres-cpu.json]

The held-out folders are those `make default-sae-corpus` writes: whole works none of the SAEs was trained on.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from harness import emit, logger, machine

from steering.errors import TinymorphError
from steering.evaluation.reconstruction import evaluate
from steering.runtime.models import load_model
from steering.sae.layouts import load_sae
from steering.training.corpus import load_corpus

GENRES = {
    "prose": ("gutenberg", "lz4"),
    "notes": ("python-docs", "sklearn-docs"),
    "everyday": ("written",),
    "speeches": ("sotu",),
    "definitions": ("wordnet",),
}
"""Each genre and the held-out source folders it reads."""

DEFAULT_SAE = Path(__file__).resolve().parents[1] / "steering" / "data" / "default_sae"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sae", nargs="+", default=["default"], help="SAE folders (`default`: the shipped one)")
    ap.add_argument("--heldout", default=".cache/default-sae-corpus/heldout", type=Path)
    ap.add_argument("--tokens", type=int, default=20_000, help="held-out tokens per genre")
    ap.add_argument("--model", default="default")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--out", help="also write the JSON here")
    return ap


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    say = logger("bench_sae_genres")
    lm = load_model(args.model, "cpu", args.dtype)
    corpora = {}
    for genre, sources in GENRES.items():
        folders = [str(args.heldout / s) for s in sources if (args.heldout / s).is_dir()]
        if not folders:
            raise TinymorphError(f"No held-out {genre} under {args.heldout}: run `make default-sae-corpus` first.")
        corpora[genre] = load_corpus(lm.tokenizer, folders, separator=lm.first_eos_id, max_tokens=args.tokens * 2 + 128)
    results = {}
    for spec in args.sae:
        sae = load_sae(DEFAULT_SAE if spec == "default" else spec, device="cpu")
        rows = {}
        for genre, corpus in corpora.items():
            r = evaluate(lm, sae, corpus, tokens=args.tokens)
            rows[genre] = {"fvu_typical": round(r.fvu_typical, 4), "ce_increase": round(r.ce_sae - r.ce_clean, 4),
                           "ce_clean": round(r.ce_clean, 4), "tokens": r.tokens}
            say(f"{spec} {genre}: FVU {r.fvu_typical:.3f}, CE +{r.ce_sae - r.ce_clean:.3f}")
        cfg = sae.metadata.get("tinymorph", {})
        results[spec] = {"genres": rows, "trained_tokens": cfg.get("tokens_seen"),
                         "corpus_shares": cfg.get("corpus", {}).get("shares")}
    emit({"benchmark": "sae_heldout_genres", "machine": machine("cpu", args.dtype), "tokens_per_genre": args.tokens,
          "goal": {"fvu_typical": 0.15, "ce_increase": 0.15}, "saes": results}, args.out)


if __name__ == "__main__":
    main()
