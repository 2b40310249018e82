"""Decode speed side by side, in one run on one machine: tinymorph's fast path (steered and unsteered), its
transformers-forward loop, `transformers.generate`, and llama.cpp on the same GGUF file (llama-cpp-python, when
installed; its control vectors as the steered peer). One JSON object on stdout.

    python benchmarks/bench_decode.py [--model default] [--sae default] [--contexts 512 2048] [--tokens 64] [--repeats 3]
                                      [--ce-tokens 600] [--out FILE]

For each context length C (a prompt of exactly C tokens of prose):
- `decode_tok_s`: tokens/s of `--tokens` greedy tokens after the prompt, the prompt's reading left out (tinymorph:
  a session whose cache already holds the prompt; transformers.generate: total minus a 1-token run; llama.cpp:
  the timed loop of `eval([token])` after `eval(prompt)`); median of `--repeats`, the fast path's runs and
  llama.cpp's taken in turn round by round (`interleaved`: a slow stretch of the host falls on all alike);
- `prefill_s`: reading the prompt into an empty cache;
- ratios against llama.cpp unsteered and steered / unsteered.
Steering: a random direction of the mean residual norm at the SAE's hook, added at every position (tinymorph: a
`vector` intervention; transformers: a forward hook; llama.cpp: `llama_set_adapter_cvec` on the same layer).

`quality`: cross-entropy of held-out prose (benchmarks/hint_topics.json) token by token through the fast path's
decode step, in float32, bfloat16, bfloat16 with int8 decode weights, and bfloat16 with 4-bit decode weights where
the model stored them so, int8 elsewhere (the default on CPUs with native bf16). `tinymorph_steered_int8_only`:
steered decoding with int8 weights only, in the same run.
`annotate`: a 2,048-token document read cold, then again after a word is typed at its end (the session's cache).
Install llama.cpp for the comparison: `pip install llama-cpp-python` (builds from source where no wheel fits).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from harness import block_hook, build_document, emit, held_out_text, logger, machine, median_of, timed

from steering.config import EngineConfig, SamplingConfig
from steering.engine import Engine
from steering.fast.cache import PrefixCache
from steering.fast.model import FastModel
from steering.runtime.interventions import Intervention
from steering.runtime.models import load_model

log = logger("bench_decode")


def cross_entropy(model: str, dtype: str, int8: bool, text: str, n_tokens: int, int4: bool = False,
                  ) -> dict[str, Any]:
    """Mean next-token CE over `text` through the fast path's one-token step (what decoding runs)."""
    lm = load_model(model, "cpu", dtype)
    fast = FastModel(lm.model, Engine(lm, fast=False).hook, int8=int8, int4=int4)
    ids = list(lm.tokenizer(text)["input_ids"])[:n_tokens]
    cache = PrefixCache(fast)
    nll = []
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(len(ids) - 1):
            cache.push(ids[i])
            logits = fast.upper(cache, keep=True)
            nll.append(float(F.cross_entropy(logits[None], torch.tensor([ids[i + 1]]))))
    seconds = time.perf_counter() - t0
    scored = nll[1:]  # the first position has no context
    return {"ce": round(sum(scored) / len(scored), 5), "tokens": len(scored), "int8_decode": fast.int8,
            "int4_weights": fast.int4,
            "ms_per_step": round(1000 * seconds / len(nll), 2)}


class LlamaCpp:
    """llama.cpp through llama-cpp-python's low-level calls: prompt, then one token per `eval`."""

    def __init__(self, gguf: str, n_ctx: int) -> None:
        import llama_cpp

        self.lib = llama_cpp
        self.llm = llama_cpp.Llama(model_path=gguf, n_ctx=n_ctx, n_threads=os.cpu_count() or 1, verbose=False)
        self.n_embd = llama_cpp.llama_model_n_embd(self.llm.model)
        self.n_layer = llama_cpp.llama_model_n_layer(self.llm.model)
        self.version = llama_cpp.__version__

    def tokens(self, text: str, n: int) -> list[int]:
        out = self.llm.tokenize(text.encode("utf-8"), add_bos=False)
        if len(out) < n:
            raise ValueError(f"llama.cpp counts {len(out)} tokens in the prompt text, fewer than {n}")
        return out[:n]

    def steer(self, vector: torch.Tensor | None, layer: int) -> None:
        """Add `vector` to the output of block `layer` (0-based, as tinymorph's resid_post), or stop steering."""
        setter = getattr(self.lib, "llama_set_adapter_cvec", None) or self.lib.llama_apply_adapter_cvec
        if vector is None:
            setter(self.llm.ctx, None, 0, self.n_embd, -1, -1)
            return
        import numpy as np

        data = np.zeros((self.n_layer - 1) * self.n_embd, dtype=np.float32)  # layers 1 .. n_layer-1
        data[(layer - 1) * self.n_embd:layer * self.n_embd] = vector.float().numpy()
        self._data = data
        rc = setter(self.llm.ctx, data.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), data.size, self.n_embd,
                    layer, layer)
        if rc != 0:
            raise RuntimeError("llama_set_adapter_cvec failed")

    def run(self, prompt: list[int], new: int) -> tuple[float, float]:
        """(prefill seconds, decode seconds for `new` greedy tokens)."""
        import numpy as np

        self.llm.reset()
        t0 = time.perf_counter()
        self.llm.eval(prompt)
        t1 = time.perf_counter()
        for _ in range(new):
            logits = np.ctypeslib.as_array(self.lib.llama_get_logits_ith(self.llm.ctx, -1),
                                           shape=(self.llm.n_vocab(),))
            self.llm.eval([int(logits.argmax())])
        return t1 - t0, time.perf_counter() - t1


def interleaved(runs: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """Median seconds of each of `runs` (each returns the seconds it measured): one warm-up call each, then
    `repeats` rounds that call every run once, each round starting one run later, so that a slow stretch of a shared
    host falls on all of them alike rather than on whichever ran then."""
    names = list(runs)
    for name in names:
        runs[name]()
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            seconds[name].append(runs[name]())
    return {name: statistics.median(values) for name, values in seconds.items()}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--contexts", type=int, nargs="+", default=[512, 2048])
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ce-tokens", type=int, default=600, help="held-out tokens for the quality check (0: skip)")
    ap.add_argument("--no-llama-cpp", action="store_true")
    ap.add_argument("--sae", default="default",
                    help="the SAE of the annotation timing (`none` skips it: another model's shape, random weights)")
    ap.add_argument("--out")
    return ap


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    t_start = time.perf_counter()

    engine = Engine.load(EngineConfig(model=args.model, sae="none"), progress=log)
    slow = Engine(engine.lm, fast=False)
    int8_only = Engine(engine.lm, int4=False)  # what decoding was before 4-bit copies, in the same run
    lm, T = engine.lm, args.tokens
    assert engine.caches is not None, f"no fast path for this model: {engine.slow_reason}"
    scale = engine.fallback_scale()
    vector = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(1))
    vector = vector / vector.norm() * scale
    steering = [Intervention("vector", vector=vector, strength=1.0)]
    hook_vec = vector.to(lm.dtype)
    sampling = SamplingConfig(max_tokens=T, stop_at_eos=False)
    llama = None
    if not args.no_llama_cpp and lm.source.kind == "gguf":
        try:
            llama = LlamaCpp(lm.source.location, max(args.contexts) + T + 16)
        except ImportError:
            log("llama-cpp-python is not installed: no llama.cpp figures (pip install llama-cpp-python)")

    results: dict[str, Any] = {}
    for context in args.contexts:
        doc, _count = build_document(lm.tokenizer, context + 64)
        ids = list(lm.tokenizer(doc)["input_ids"])[:context]
        prompt = lm.tokenizer.decode(ids, skip_special_tokens=True)
        n = len(lm.tokenizer(prompt)["input_ids"])
        log(f"context {n} tokens")
        row: dict[str, Any] = {"prompt_tokens": n}

        def ours(steer: list[Intervention], session: str | None, e: Engine = engine, p: str = prompt,
                 ) -> str:
            return "".join(e.generate(p, steer, sampling, session=session))

        decoders: dict[str, Callable[[], float]] = {}
        for name, steer, e in (("unsteered", [], engine), ("steered", steering, engine),
                               ("steered_int8_only", steering, int8_only)):
            session = f"bench-{context}-{name}"
            ours(steer, session, e)  # the prompt is now in the session's cache
            decoders[f"tinymorph_{name}"] = lambda s=steer, k=session, e=e: timed(lambda: ours(s, k, e)).seconds
        llama_prefill: dict[str, list[float]] = {}
        if llama is not None:
            tokens = llama.tokens(prompt + " and more text to spare " * 8, n)

            def llama_decode(name: str, vec: torch.Tensor | None, t: list[int] = tokens,
                             kept: dict[str, list[float]] = llama_prefill) -> float:
                assert llama is not None
                llama.steer(vec, engine.hook.layer)
                prefill, seconds = llama.run(t, T)
                kept.setdefault(name, []).append(prefill)
                return seconds

            for name, vec in (("unsteered", None), ("steered", vector)):
                decoders[f"llama_cpp_{name}"] = lambda k=name, v=vec: llama_decode(k, v)
        seconds = interleaved(decoders, args.repeats)
        for name, value in seconds.items():
            row[name] = {"decode_tok_s": round(T / value, 2)}
        for name, steer in (("unsteered", []), ("steered", steering)):
            prefill = median_of(lambda s=steer: "".join(engine.generate(
                prompt, s, SamplingConfig(max_tokens=1), session=None)), args.repeats)  # noqa: B023
            row[f"tinymorph_{name}"]["prefill_s"] = round(prefill, 3)
        for name, values in llama_prefill.items():
            row[f"llama_cpp_{name}"]["prefill_s"] = round(statistics.median(values), 3)
        if llama is not None:
            llama.steer(None, engine.hook.layer)
        loop = median_of(lambda: ours([], None, slow), max(1, args.repeats - 1))
        loop_prefill = median_of(lambda p=prompt: "".join(slow.generate(p, [], SamplingConfig(max_tokens=1))), 1)
        row["tinymorph_transformers_loop"] = {"decode_tok_s": round((T - 1) / max(1e-9, loop - loop_prefill), 2),
                                              "prefill_s": round(loop_prefill, 3)}
        ids_t = torch.tensor([lm.tokenizer(prompt)["input_ids"]])

        def hf(new: int, steered: bool, x: torch.Tensor = ids_t) -> None:
            handle = block_hook(lm.blocks[engine.hook.layer], engine.hook.site, hook_vec) if steered else None
            try:
                with torch.inference_mode():
                    lm.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=new, min_new_tokens=new,
                                      do_sample=False, pad_token_id=0)
            finally:
                if handle is not None:
                    handle.remove()

        for name, steered in (("unsteered", False), ("steered", True)):
            total = median_of(lambda s=steered: hf(T, s), max(1, args.repeats - 1))
            first = median_of(lambda s=steered: hf(1, s), max(1, args.repeats - 1))
            row[f"transformers_generate_{name}"] = {"decode_tok_s": round((T - 1) / max(1e-9, total - first), 2),
                                                    "prefill_s": round(first, 3)}
        if llama is not None:
            base = row["llama_cpp_unsteered"]["decode_tok_s"]
            row["tinymorph_steered_vs_llama_cpp_unsteered"] = round(row["tinymorph_steered"]["decode_tok_s"] / base, 3)
        row["tinymorph_steered_vs_int8_only"] = round(
            row["tinymorph_steered"]["decode_tok_s"] / row["tinymorph_steered_int8_only"]["decode_tok_s"], 3)
        row["tinymorph_steered_vs_unsteered"] = round(
            row["tinymorph_steered"]["decode_tok_s"] / row["tinymorph_unsteered"]["decode_tok_s"], 3)
        row["tinymorph_vs_transformers_generate"] = round(
            row["tinymorph_unsteered"]["decode_tok_s"] / row["transformers_generate_unsteered"]["decode_tok_s"], 3)
        log(json.dumps(row))
        results[str(context)] = row

    annotate: dict[str, Any] | None = None
    if args.sae != "none":
        doc, count = build_document(lm.tokenizer, 2048)
        sae_engine = Engine.load(EngineConfig(model=args.model, sae=args.sae), progress=log)
        cold = median_of(lambda: sae_engine.annotate(doc, session=None), args.repeats)
        sae_engine.annotate(doc, session="doc")
        typed = [doc + " and" * (i + 1) for i in range(args.repeats + 1)]
        warm_times = []
        for text in typed:
            t0 = time.perf_counter()
            sae_engine.annotate(text, session="doc")
            warm_times.append(time.perf_counter() - t0)
        annotate = {"doc_tokens": count, "cold_s": round(cold, 3),
                    "after_typing_at_the_end_s": round(statistics.median(warm_times[1:]), 3)}

    quality = {}
    if args.ce_tokens:
        text = held_out_text()
        for name, dtype, int8, int4 in (("float32", "float32", False, False), ("bfloat16", "bfloat16", False, False),
                                        ("bfloat16_int8", "bfloat16", True, False),
                                        ("bfloat16_int4", "bfloat16", True, True)):
            log(f"held-out CE, {name}")
            quality[name] = cross_entropy(args.model, dtype, int8, text, args.ce_tokens, int4)
        for name in ("int8", "int4"):
            quality[f"{name}_minus_float32"] = round(quality[f"bfloat16_{name}"]["ce"] - quality["float32"]["ce"], 5)

    result = {
        "benchmark": "decode_side_by_side",
        "model": lm.name,
        "model_source": lm.source.location,
        "int8_decode": engine.fast is not None and engine.fast.int8,
        "int4_weights": engine.fast.int4 if engine.fast is not None else 0,
        "hook": engine.hook.name,
        "steering": f"vector at {engine.hook}: random direction, norm {scale:.3g} (mean residual norm), every position",
        "tokens": T,
        "repeats": args.repeats,
        **machine(lm.device, lm.dtype),
        "llama_cpp_python": llama.version if llama is not None else None,
        "contexts": results,
        "annotate": annotate,
        "quality": quality,
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()
