"""Decode speed at real model shapes (random weights), batch 1 and many streams, against `transformers.generate` in
the same run. Written for a CUDA GPU (there the batcher replays each step from a CUDA graph); runs on the CPU too,
at small sizes, to check the script itself. One JSON object on stdout.

    python benchmarks/bench_gpu.py [--shapes 135M 1B 8B] [--streams 1 8 32 128] [--prompt 512] [--tokens 128]
                                   [--device auto] [--out FILE]

Per shape (a Llama config of that size; SmolLM2-135M, Llama-3.2-1B, Llama-3.1-8B), bfloat16 on CUDA:
- `decode_tok_s`: batch-1 greedy tokens/s after a `--prompt`-token prompt, the prompt's reading left out, for
  tinymorph unsteered and steered (an SAE feature added at the middle layer) and for `transformers.generate`
  (unsteered, and steered through a forward hook; its prompt time measured by a 1-token run and taken off);
- `bandwidth_floor_tok_s` (CUDA only): the GPU's memory bandwidth (a large copy) over the weights' bytes.
At the first shape: `streams`: aggregate tokens/s of N concurrent steered streams, each under its own steering
(rows = N); `annotate_ms`: reading and encoding a 2,048-token document, cold and after one more token.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from harness import block_hook, device_name, emit, logger, machine, median_of, sync
from transformers import LlamaConfig, LlamaForCausalLM

from steering.config import SamplingConfig
from steering.engine import Engine
from steering.fast.batched import Batcher, Request
from steering.runtime.interventions import Intervention
from steering.runtime.models import from_modules
from steering.sae.autoencoder import SAE, HookPoint

SHAPES: dict[str, dict[str, Any]] = {
    "135M": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
             "num_key_value_heads": 3, "vocab_size": 49152, "tie_word_embeddings": True},
    "1B": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
           "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": True, "head_dim": 64},
    "8B": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": False},
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 512, "tie_word_embeddings": True},
}


log = logger("bench_gpu")


class IdTokenizer:
    """Token ids are words: enough of a tokenizer for random weights."""

    def __init__(self, vocab: int) -> None:
        self.vocab = vocab
        self.bos_token_id = 1
        self.eos_token_id = 2

    def __call__(self, text: str, return_tensors: str | None = None, **_: Any) -> dict[str, Any]:
        ids, offsets, at = [1], [(0, 0)], 0
        for word in text.split():
            at = text.index(word, at)
            ids.append(3 + sum(map(ord, word)) * 7919 % (self.vocab - 3))
            offsets.append((at, at + len(word)))
            at += len(word)
        return {"input_ids": torch.tensor([ids]) if return_tensors == "pt" else ids, "offset_mapping": offsets}

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return "".join(f" w{i}" for i in ids)

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [f"w{i}" for i in ids]


def build(shape: str, device: torch.device, dtype: torch.dtype) -> tuple[Engine, Any]:
    torch.manual_seed(0)
    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=4096, bos_token_id=1, eos_token_id=2)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    lm = from_modules(model, IdTokenizer(config.vocab_size), name=f"random-{shape}")
    d = config.hidden_size
    sae = SAE(d, 8 * d, "topk", k=32, hook=HookPoint(config.num_hidden_layers // 2, "resid_post"))
    sae.W_enc.data.normal_(0, d ** -0.5)
    sae.W_dec.data.normal_(0, d ** -0.5)
    sae.set_feature_stats(max_act=torch.full((8 * d,), 4.0), frequency=torch.full((8 * d,), 0.01))
    return Engine(lm, sae), config


def decode_rate(engine: Engine, prompt: list[int], tokens: int, steering: list[Intervention],
                rows: int = 1) -> float:
    """Aggregate tokens/s of `rows` streams decoding `tokens` each, timed from their first token on."""
    assert engine.caches is not None
    batcher = Batcher(engine.fast, engine.sae, set(), engine.lm.tokenizer, rows=rows)
    sampling = SamplingConfig(max_tokens=tokens, stop_at_eos=False)
    device = engine.lm.device

    def run() -> float:
        for i in range(rows):
            own = [Intervention("add", s.feature + i, strength=s.strength) for s in steering]  # each row its own
            batcher.add(Request(prompt[: len(prompt) - i % 7], sampling, engine.plan(own)))
        batcher.step()  # admission: prompts read, first tokens
        sync(device)
        t0 = time.perf_counter()
        while batcher.busy:
            batcher.step()
        sync(device)
        return rows * (tokens - 1) / (time.perf_counter() - t0)

    run()
    return statistics.median(run() for _ in range(3))


def hf_rate(engine: Engine, prompt: list[int], tokens: int, steered: bool) -> float:
    lm = engine.lm
    ids = torch.tensor([prompt], device=lm.device)
    hook = None
    if steered:
        vector = torch.randn(lm.d_model, device=lm.device, dtype=lm.dtype)
        hook = block_hook(lm.blocks[len(lm.blocks) // 2], "resid_post", vector)

    def gen(n: int) -> Callable[[], Any]:
        return lambda: lm.model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)

    try:
        with torch.inference_mode():
            total = median_of(gen(tokens), 3, lm.device)
            first = median_of(gen(1), 3, lm.device)
    finally:
        if hook is not None:
            hook.remove()
    return (tokens - 1) / (total - first)


def bandwidth(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    a = torch.empty(1 << 30, dtype=torch.uint8, device=device)
    b = torch.empty_like(a)
    seconds = median_of(lambda: b.copy_(a), 5, device)
    return 2 * a.numel() / seconds


def annotate_ms(engine: Engine, device: torch.device) -> dict[str, float]:
    """A 2,048-token document read cold, and again after one more token (the session's cache)."""
    words = " ".join(f"w{i}" for i in range(2047))
    engine.annotate(words)  # warm-up
    cold = median_of(lambda: engine.annotate(words + " x", session=None), 3, device)
    engine.annotate(words, session="doc")
    warm = median_of(lambda: engine.annotate(words + " y", session="doc"), 3, device)
    return {"cold": round(cold * 1000, 1), "one_more_token": round(warm * 1000, 1)}


def measure(shape: str, args: argparse.Namespace, device: torch.device, gbps: float | None, *,
            first: bool) -> dict[str, Any]:
    log(f"{shape}: building")
    engine, config = build(shape, device, torch.bfloat16)
    prompt = [1] + [3 + (i * 7919) % (config.vocab_size - 3) for i in range(args.prompt - 1)]
    steer = [Intervention("add", 11, strength=4.0)]
    entry: dict[str, Any] = {"params": sum(p.numel() for p in engine.lm.model.parameters())}
    log(f"{shape}: decode")
    rates = {"tinymorph_unsteered": decode_rate(engine, prompt, args.tokens, []),
             "tinymorph_steered": decode_rate(engine, prompt, args.tokens, steer),
             "transformers_generate_unsteered": hf_rate(engine, prompt, args.tokens, False),
             "transformers_generate_steered": hf_rate(engine, prompt, args.tokens, True)}
    entry["decode_tok_s"] = {k: round(v, 1) for k, v in rates.items()}
    entry["steered_over_unsteered"] = round(rates["tinymorph_steered"] / rates["tinymorph_unsteered"], 3)
    entry["steered_over_transformers"] = round(rates["tinymorph_steered"] / rates["transformers_generate_steered"], 2)
    if gbps is not None:
        weight_bytes = sum(p.numel() * p.element_size() for p in engine.lm.model.parameters())
        entry["bandwidth_floor_tok_s"] = round(gbps / weight_bytes, 1)
    if first:
        log(f"{shape}: streams")
        entry["streams_tok_s"] = {str(n): round(decode_rate(engine, prompt, args.tokens, steer, rows=n), 1)
                                  for n in args.streams}
        entry["annotate_ms"] = annotate_ms(engine, device)
    return entry


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", nargs="+", default=["135M", "1B", "8B"], choices=list(SHAPES))
    ap.add_argument("--streams", nargs="+", type=int, default=[1, 8, 32, 128])
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    result: dict[str, Any] = {
        "machine": {**machine(dtype=torch.bfloat16), "device": device_name(device)},
        "prompt_tokens": args.prompt, "new_tokens": args.tokens, "shapes": {}}
    gbps = bandwidth(device)
    for index, shape in enumerate(args.shapes):
        result["shapes"][shape] = measure(shape, args, device, gbps, first=index == 0)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
