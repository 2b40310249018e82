"""SAE training throughput, as JSON on stdout.

Two figures from one run on the same device: tokens/s of activations through the SAE training step alone (random
activations already in memory) and end to end, with the model producing the activations from a text corpus; their
ratio says how much of training time the model takes.

    python benchmarks/bench_train.py [--model default] [--layer 12] [--tokens 65536] [--device auto] [--tiny]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from harness import emit, machine, timed

from steering.config import TrainConfig
from steering.runtime.models import load_model
from steering.sae.autoencoder import HookPoint
from steering.testing import save_tiny_model
from steering.training.corpus import load_corpus
from steering.training.train import train
from steering.training.trainer import train_on_activations

PROSE = (
    "The harbour was quiet in the grey morning, and the boats knocked softly against the pier. She walked along "
    "the water with the letter in her pocket, thinking of her brother and of the bank that would not wait. "
    "Gulls argued over the nets; a ferry left for the islands; by noon the sun broke through and children ran "
    "across the wet sand while a dog chased the waves. In the evening the wind rose, the lamps came on one by one, "
    "and the town settled into the long blue dusk of late summer."
)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--layer", type=int, default=12)
    ap.add_argument("--tokens", type=int, default=65_536)
    ap.add_argument("--expansion", type=int, default=8)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--tiny", action="store_true", help="a tiny random model (smoke test)")
    ap.add_argument("--out", help="also write the JSON here")
    return ap


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.tiny:
        args.model, args.layer = str(save_tiny_model(tempfile.mkdtemp())), min(args.layer, 2)
    lm = load_model(args.model, args.device)
    device = lm.device
    cfg = TrainConfig(layer=args.layer, k=args.k, expansion=args.expansion, tokens=args.tokens,
                      batch_size=args.batch_size, buffer_size=max(args.batch_size * 4, 16_384), log_every=10**9)
    hook = HookPoint(args.layer)
    d = lm.d_model

    def random_source(start: int):
        g = torch.Generator().manual_seed(start)
        i = start
        while True:
            i += 1
            yield i, torch.randn(args.batch_size, d, generator=g) * 3

    # warm-up, then the SAE step alone
    train_on_activations(random_source, d, hook, TrainConfig(**{**cfg.__dict__, "tokens": args.batch_size * 2}),
                         device=device)
    sae_seconds, sae_only = timed(lambda: train_on_activations(random_source, d, hook, cfg, device=device), device)

    with tempfile.TemporaryDirectory() as tmp:
        text = "\n\n".join(f"{i}. {PROSE}" for i in range(1 + args.tokens // 80))
        (Path(tmp) / "corpus.md").write_text(text, encoding="utf-8")
        corpus = load_corpus(lm.tokenizer, [tmp], separator=next(iter(lm.eos_token_ids), None))
        full_seconds, full = timed(lambda: train(lm, corpus, cfg), device)

    result = {
        "benchmark": "sae_training_throughput",
        "model": lm.name,
        "hook": hook.name,
        "d_in": d,
        "d_sae": d * args.expansion,
        "k": args.k,
        "batch_size": args.batch_size,
        **machine(device),
        "sae_only": {"tokens": sae_only.tokens_seen, "seconds": round(sae_seconds, 3),
                     "tokens_per_second": round(sae_only.tokens_seen / sae_seconds, 1)},
        "end_to_end": {"tokens": full.tokens_seen, "seconds": round(full_seconds, 3),
                       "tokens_per_second": round(full.tokens_seen / full_seconds, 1)},
    }
    result["end_to_end_over_sae_only"] = round(
        result["end_to_end"]["tokens_per_second"] / result["sae_only"]["tokens_per_second"], 3)
    emit(result, args.out)


if __name__ == "__main__":
    main()
