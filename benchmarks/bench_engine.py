"""Engine latency and decode throughput against plain transformers, as one JSON object on stdout.

All figures come from one run on the same model and device:

- annotation latency of a document of `--doc-tokens` tokens (`Engine.annotate`), median and min over the repeats;
- decode tokens/s of the project's loop (`Engine.generate`, greedy, no EOS stop), unsteered and steered with one
  intervention (a random vector scaled to the residual norm, or a feature `add` when a real SAE is loaded);
- the same model through transformers' `model.generate` (greedy, exactly T new tokens), unsteered and steered with
  a plain forward hook on the same block adding the same vector, the way most steering libraries do it;
- the ratios ours / transformers of tokens/s (medians).

Without an SAE (`--sae none`) annotation runs on a random TopK SAE (8x, k=32) built in memory: speed only.
Progress goes to stderr.

    python benchmarks/bench_engine.py [--model default] [--sae none] [--device auto] [--dtype auto] [--tokens 64]
                                      [--repeats 3] [--doc-tokens 2048] [--out FILE] [--tiny]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
from harness import PROMPT, block_hook, build_document, emit, logger, machine, throughput, timed

from steering.config import EngineConfig, SamplingConfig
from steering.engine import Engine
from steering.features.annotate import encode_document
from steering.runtime.decode import decode_token_ids, prompt_ids
from steering.runtime.interventions import Intervention
from steering.testing import random_topk_sae, save_tiny_model

log = logger("bench_engine")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--sae", default="none", help="`none` builds a random TopK SAE in memory (speed only)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    ap.add_argument("--tokens", type=int, default=64, help="new tokens per decode run (T)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--doc-tokens", type=int, default=2048)
    ap.add_argument("--out", help="also write the JSON here (atomically)")
    ap.add_argument("--tiny", action="store_true", help="a tiny random Llama instead of a real model (smoke test)")
    return ap


def main(argv: list[str] | None = None) -> None:
    ap = parser()
    args = ap.parse_args(argv)
    if args.tokens < 1 or args.repeats < 1 or args.doc_tokens < 2:
        ap.error("--tokens and --repeats must be >= 1, --doc-tokens >= 2")

    t_start = time.perf_counter()
    model_spec = str(save_tiny_model(tempfile.mkdtemp(prefix="bench-engine-tiny-"))) if args.tiny else args.model
    log(f"loading {'a tiny random Llama' if args.tiny else model_spec}")
    engine = Engine.load(EngineConfig(model=model_spec, sae=args.sae, device=args.device, dtype=args.dtype),
                         progress=log)
    lm = engine.lm
    device = lm.device
    torch.manual_seed(0)

    # ------------------------------------------------------------------------------------------- annotation
    if engine.sae is None:
        ann_engine = Engine(lm, random_topk_sae(lm.d_model, engine.hook))
        sae_desc = "random topk 8x (speed only)"
    else:
        ann_engine = engine
        sae_desc = engine.sae.source or "loaded"
    sae = ann_engine.sae
    assert sae is not None
    doc, doc_count = build_document(lm.tokenizer, args.doc_tokens)
    log(f"annotating a {doc_count}-token document ({len(doc)} chars): 1 warm-up + {args.repeats} repeats")
    ann_engine.annotate(doc)
    ann_times, enc_times = [], []
    n_annotated = 0
    for _ in range(args.repeats):
        seconds, ann = timed(lambda: ann_engine.annotate(doc), device)
        ann_times.append(seconds)
        n_annotated = len(ann.tokens)
        seconds, _ = timed(lambda: encode_document(lm, sae, doc), device)
        enc_times.append(seconds)
    ann_med, enc_med = statistics.median(ann_times), statistics.median(enc_times)

    # ------------------------------------------------------------------------------------------- steering
    scale = engine.fallback_scale()  # mean residual norm at the hook point
    steer_desc = f"vector: random direction, norm {scale:.3g} (mean residual norm at {engine.hook}), strength 1.0"
    steering = None
    if engine.sae is not None:
        feature_steering = [Intervention("add", feature=0, strength=1.0)]
        plan = engine.plan(feature_steering)
        if plan is not None and plan.scaled is None and not plan.clamps:
            steering, vec = feature_steering, plan.vector.clone()
            steer_desc = f"add: feature 0, strength 1.0 (vector norm {float(vec.norm()):.3g})"
    if steering is None:
        g = torch.Generator().manual_seed(1)
        v = torch.randn(lm.d_model, generator=g)
        vec = v / v.norm() * scale
        steering = [Intervention("vector", vector=vec, strength=1.0)]
    hf_vec = vec.to(device, lm.dtype)
    block = lm.blocks[engine.hook.layer]

    # ------------------------------------------------------------------------------------------- decoding
    T = args.tokens
    ids = prompt_ids(lm, PROMPT).to(device)
    mask = torch.ones_like(ids)
    pad = lm.tokenizer.pad_token_id
    if pad is None:
        pad = next(iter(sorted(lm.eos_token_ids)), 0)
    sampling = SamplingConfig(max_tokens=T, stop_at_eos=False)

    def ours(steer: list[Intervention]) -> str:
        return "".join(engine.generate(PROMPT, steer, sampling))

    def ours_ids_only() -> list[int]:
        return list(decode_token_ids(lm, ids, sampling))

    def hf(steered: bool) -> str:
        handle = block_hook(block, engine.hook.site, hf_vec) if steered else None
        try:
            with torch.inference_mode():
                out = lm.model.generate(ids, attention_mask=mask, max_new_tokens=T, min_new_tokens=T,
                                        do_sample=False, pad_token_id=pad)
        finally:
            if handle is not None:
                handle.remove()
        new = out[0, ids.shape[1]:]
        if len(new) != T:
            raise RuntimeError(f"transformers generated {len(new)} tokens, not {T}")
        return str(lm.tokenizer.decode(new.tolist(), skip_special_tokens=True))

    runs: dict[str, Callable[[], Any]] = {
        "ours_unsteered": lambda: ours([]),
        "ours_steered": lambda: ours(steering),
        "transformers_unsteered": lambda: hf(False),
        "transformers_steered": lambda: hf(True),
        "ours_token_ids_only_unsteered": ours_ids_only,
    }
    log(f"decoding {T} tokens from a {ids.shape[1]}-token prompt: 1 warm-up + {args.repeats} repeats of "
        f"{len(runs)} variants, interleaved")
    texts = {name: fn() for name, fn in runs.items()}  # warm-up
    times: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(args.repeats):
        for name, fn in runs.items():
            seconds, _ = timed(fn, device)
            times[name].append(seconds)
        log(f"repeat {r + 1}/{args.repeats}: " + ", ".join(f"{n} {T / t[-1]:.1f} tok/s" for n, t in times.items()))
    decode = {name: throughput(t, T) for name, t in times.items()}

    def ratio(a: str, b: str) -> float:
        return round(decode[a]["tokens_per_s_median"] / decode[b]["tokens_per_s_median"], 3)

    result: dict[str, Any] = {
        "benchmark": "engine_annotate_and_decode",
        "model": "tiny random Llama" if args.tiny else lm.name,
        "model_source": "steering.testing.save_tiny_model (--tiny)" if args.tiny else lm.source.location,
        **machine(device, lm.dtype),
        "hook": engine.hook.name,
        "layers": lm.n_layers,
        "d_model": lm.d_model,
        "sae": sae_desc,
        "sae_d_sae": sae.d_sae,
        "sae_architecture": sae.architecture,
        "prompt_tokens": int(ids.shape[1]),
        "tokens": T,
        "repeats": args.repeats,
        "annotate": {
            "doc_tokens": n_annotated,
            "doc_chars": len(doc),
            "median_s": round(ann_med, 4),
            "min_s": round(min(ann_times), 4),
            "tokens_per_s_median": round(n_annotated / ann_med, 1),
            "encode_document_median_s": round(enc_med, 4),
            "postprocess_share": round(max(0.0, ann_med - enc_med) / ann_med, 3),
        },
        "steering": steer_desc,
        "decode": decode,
        "ratio_unsteered": ratio("ours_unsteered", "transformers_unsteered"),
        "ratio_steered": ratio("ours_steered", "transformers_steered"),
        "steering_overhead": {
            "ours": round(decode["ours_steered"]["median_s"] / decode["ours_unsteered"]["median_s"], 3),
            "transformers": round(decode["transformers_steered"]["median_s"]
                                  / decode["transformers_unsteered"]["median_s"], 3),
        },
        "greedy_text_match": {
            "unsteered": texts["ours_unsteered"] == texts["transformers_unsteered"],
            "steered": texts["ours_steered"] == texts["transformers_steered"],
        },
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    for kind in ("unsteered", "steered"):
        if not result["greedy_text_match"][kind]:
            log(f"{kind} texts differ:\n  ours: {texts['ours_' + kind]!r}\n  hf:   {texts['transformers_' + kind]!r}")

    if args.tiny:
        shutil.rmtree(model_spec, ignore_errors=True)

    emit(result, args.out)


if __name__ == "__main__":
    main()
