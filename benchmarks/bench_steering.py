"""Does steering do what it says? Methods side by side on sampled features and neutral prompts, one JSON on stdout.

For each sampled feature (seeded, from the SAE's alive, non-dense features), each neutral prompt of
`steering_prompts.json`, each method and strength: a greedy continuation of `--tokens` tokens. Then the unsteered
model re-reads prompt + continuation:

- *concept*: the share of the continuation's tokens on which the target feature fires;
- *carried*: concept >= 0.2;
- *fluency*: NLL per token of the continuation under the unsteered model, next to the same model's NLL on human prose
  (held-out text, `--prose`), and distinct-2 (distinct bigrams / bigrams) to catch loops.

Methods (strength `s`):

- `row`: the SAE decoder row, the seeds' rule `H + s * W_dec[f] / |W_dec[f]| * max_act[f]` (`--strengths`);
- `diffmean`: the feature's DiffMean direction (mean residual where it fires minus where it does not), `s` x itself
  (`--diffmean-strengths`);
- `clamp`: the feature clamped at `s * max_act` on every position (`--strengths`);
- `prompt`: no steering; the label (or top contexts) put before the prompt;
- `editor`: what the editor's Amplify does (`Intervention("add", f, strength=--editor-strength)` through the engine,
  with its calibrated unit and direction when the SAE has them);
- `preset`: "write more like this". Each paragraph of `hint_topics.json` (`--topics`) is the selection in a document
  made of it and two other topics' paragraphs; its style vector (mean residual of the selection minus the rest's,
  `steering.runtime.presets`) steers the neutral prompts at `--preset-multiples` of itself. Its concept: the cosine of the
  continuation's mean residual (re-read unsteered) with the selection's, against the unsteered continuation's
  (`closer`: the share of pairs where it rose), the same after taking the rest of the document's mean away from both
  (`toward`), and `topic`: the share of continuations using a word of the selection's topic.

`row` and `diffmean` run at every `--positions` (`all`: prompt and generated tokens; `generated`: generated only).
Every method decodes greedily with the same `--repetition-penalty` (the editor's by default). Continuations of one
run are decoded in batches (`steering.evaluation.continuations`), each row under its own steering; the decode speed of steered against
unsteered single requests (`Engine.generate`) is measured in the same run.

    python benchmarks/bench_steering.py [--model default] [--sae default] [--features 12] [--seed 0] [--tokens 20]
        [--strengths 1,2,4,8] [--diffmean-strengths 0.5,1,1.5,2,3] [--methods row,diffmean,clamp,prompt,editor]
        [--positions all,generated] [--repetition-penalty 1.15] [--prose FILES] [--preset-multiples 0.5,1,2,3,4]
        [--topics FILE] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from harness import PROMPT, TOPICS, emit, held_out_text, hint_topics, logger, machine, names_topic

from steering.config import STEERED_REPETITION_PENALTY, EngineConfig, SamplingConfig
from steering.engine import Engine
from steering.evaluation.continuations import distinct_2, greedy_batch, human_nll, reread
from steering.features.ranking import alive_and_sparse
from steering.runtime.interventions import Intervention, Plan
from steering.runtime.presets import PRESET_MULTIPLE
from steering.training.corpus import load_corpus

PROMPTS = Path(__file__).resolve().parent / "steering_prompts.json"
DEFAULT_PROSE = Path(".cache/default-sae-corpus/heldout")
CARRIED = 0.2

log = logger("bench_steering")


@dataclass(frozen=True)
class Row:
    feature: int
    prompt: int
    method: str
    positions: str
    strength: float


def sample_features(engine: Engine, count: int, seed: int, labelled: bool) -> list[int]:
    sae = engine.require_sae("the steering benchmark")
    if sae.frequency is None or sae.max_act is None:
        raise SystemExit("The SAE has no feature statistics (run `tinymorph sae-stats` first).")
    pool = [f for f in torch.nonzero(alive_and_sparse(sae.frequency)).flatten().tolist()
            if not labelled or engine.label(f)]
    return sorted(random.Random(seed).sample(pool, min(count, len(pool))))


def prompt_text(engine: Engine, feature: int) -> str:
    """The prompting baseline's prefix: the feature's label, or its top contexts when it has none."""
    label = engine.label(feature)
    if label:
        return f"The following passage is about {label}.\n\n"
    contexts = [c.replace("«", "").replace("»", "") for c, _ in engine.explain(feature, top=3).contexts]
    return "Continue in the manner of these examples: " + " / ".join(contexts) + "\n\n"


def plan_for(engine: Engine, row: Row) -> Plan | None:
    sae = engine.require_sae("steering")
    assert sae.max_act is not None
    scale = sae.input_scale(torch.ones(1, sae.d_in))
    unit = float(sae.max_act[row.feature]) / (float(scale) if isinstance(scale, float) else 1.0)
    if row.method == "row":
        vector = sae.direction(row.feature) * unit
        return engine.plan([Intervention("vector", vector=vector, strength=row.strength)])
    if row.method == "diffmean":
        assert sae.diffmean is not None
        vector = sae.diffmean[row.feature].float()
        return engine.plan([Intervention("vector", vector=vector, strength=row.strength)])
    if row.method == "clamp":
        return engine.plan([Intervention("clamp", row.feature, value=row.strength * float(
            sae.max_act[row.feature]))])
    if row.method == "editor":
        return engine.plan([Intervention("add", row.feature, strength=row.strength)])
    return None


def run_rows(engine: Engine, rows: list[Row], prompts: list[str], tokens: int, batch: int,
             repetition_penalty: float = STEERED_REPETITION_PENALTY) -> list[dict[str, Any]]:
    lm, sae = engine.lm, engine.require_sae("steering")
    assert sae.hook is not None
    plain = {i: list(lm.tokenizer(p)["input_ids"]) for i, p in enumerate(prompts)}
    prefixed: dict[tuple[int, int], list[int]] = {}
    results: list[dict[str, Any]] = []
    by_positions: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        by_positions[row.positions].append(row)
    started = time.perf_counter()
    for positions, group in by_positions.items():
        for first in range(0, len(group), batch):
            chunk = group[first:first + batch]
            inputs = []
            for row in chunk:
                if row.method == "prompt":
                    key = (row.feature, row.prompt)
                    if key not in prefixed:
                        prefixed[key] = list(lm.tokenizer(prompt_text(engine, row.feature) + prompts[row.prompt])[
                            "input_ids"])
                    inputs.append(prefixed[key])
                else:
                    inputs.append(plain[row.prompt])
            plans = [plan_for(engine, row) for row in chunk]
            outs = greedy_batch(lm, inputs, tokens, plans=plans, hook=sae.hook, steer_positions=positions,
                                repetition_penalty=repetition_penalty)
            reads = reread(lm, sae, [plain[r.prompt] for r in chunk], outs, [r.feature for r in chunk])
            for row, out, read in zip(chunk, outs, reads, strict=True):
                results.append({"row": row, "tokens": out, "concept": read.concept, "nll": read.nll,
                                "distinct_2": distinct_2(out)})
            done = len(results)
            log(f"{done}/{len(rows)} continuations ({time.perf_counter() - started:.0f} s)")
    return results


def summarise(results: list[dict[str, Any]], human: float) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str, float], list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        row = r["row"]
        groups[(row.method, row.positions, row.strength)].append(r)
    table = []
    for (method, positions, strength), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        nlls = [r["nll"] for r in rs if not math.isnan(r["nll"])]
        nll = statistics.fmean(nlls) if nlls else float("nan")
        table.append({"method": method, "positions": positions, "strength": strength, "pairs": len(rs),
                      "carried": round(sum(r["concept"] >= CARRIED for r in rs) / len(rs), 4),
                      "concept": round(statistics.fmean(r["concept"] for r in rs), 4),
                      "nll": round(nll, 4), "fluent": bool(nll <= human),
                      "distinct_2": round(statistics.fmean(r["distinct_2"] for r in rs), 4)})
    return table


def preset_table(engine: Engine, prompts: list[str], paragraphs: list[dict[str, Any]], multiples: list[float],
                 tokens: int, batch: int, repetition_penalty: float, seed: int, human: float) -> dict[str, Any]:
    """The `preset` method: style vectors of topic paragraphs against the rest of their document, at `multiples`."""
    lm, sae = engine.lm, engine.require_sae("steering")
    assert sae.hook is not None
    rnd = random.Random(seed)
    samples = []
    for i, para in enumerate(paragraphs):
        before, after = rnd.sample([p for j, p in enumerate(paragraphs) if j != i], 2)
        doc = f"{before['text']}\n\n{para['text']}\n\n{after['text']}"
        start = len(before["text"]) + 2
        samples.append((para, engine.style_vector(doc, start, start + len(para["text"]))))
    plain = [list(lm.tokenizer(p)["input_ids"]) for p in prompts]
    jobs = [(s, p, m) for s in range(len(samples)) for p in range(len(prompts)) for m in [0.0, *multiples]]
    found: dict[tuple[int, int, float], dict[str, Any]] = {}
    started = time.perf_counter()
    for first in range(0, len(jobs), batch):
        chunk = jobs[first:first + batch]
        plans = [None if m == 0 else engine.plan([Intervention("vector", vector=samples[s][1].vector, strength=m)])
                 for s, _, m in chunk]
        outs = greedy_batch(lm, [plain[p] for _, p, _ in chunk], tokens, plans=plans, hook=sae.hook,
                            steer_positions="all", repetition_penalty=repetition_penalty)
        reads = reread(lm, sae, [plain[p] for _, p, _ in chunk], outs, [None] * len(chunk))
        for (s, p, m), out, read in zip(chunk, outs, reads, strict=True):
            made = samples[s][1]
            rest = made.passage - made.vector
            cos = torch.nn.functional.cosine_similarity
            found[(s, p, m)] = {
                "similarity": float(cos(read.residual, made.passage, dim=0)),
                "toward": float(cos(read.residual - rest, made.vector, dim=0)),
                "topic": names_topic([lm.tokenizer.decode(out)], samples[s][0]["accept"]),
                "nll": read.nll, "distinct_2": distinct_2(out), "text": lm.tokenizer.decode(out)}
        log(f"preset: {min(first + batch, len(jobs))}/{len(jobs)} continuations ({time.perf_counter() - started:.0f} s)")
    table = []
    for m in [0.0, *multiples]:
        rows = [(key, r) for key, r in found.items() if key[2] == m]
        nlls = [r["nll"] for _, r in rows if not math.isnan(r["nll"])]
        nll = statistics.fmean(nlls) if nlls else float("nan")
        table.append({"multiple": m, "editor": m == PRESET_MULTIPLE, "pairs": len(rows),
                      "similarity": round(statistics.fmean(r["similarity"] for _, r in rows), 4),
                      "closer": round(statistics.fmean(r["similarity"] > found[(k[0], k[1], 0.0)]["similarity"]
                                                       for k, r in rows), 4),
                      "toward": round(statistics.fmean(r["toward"] for _, r in rows), 4),
                      "topic": round(statistics.fmean(r["topic"] for _, r in rows), 4),
                      "nll": round(nll, 4), "fluent": bool(nll <= human),
                      "distinct_2": round(statistics.fmean(r["distinct_2"] for _, r in rows), 4)})
    examples = [{"topic": samples[s][0]["topic"], "multiple": m, "text": prompts[p] + r["text"]}
                for (s, p, m), r in found.items() if p == 0 and s < 2]
    return {"samples": len(samples), "editor_multiple": PRESET_MULTIPLE,
            "reference": sorted({made.reference for _, made in samples}), "table": table, "examples": examples}


def decode_speed(engine: Engine, feature: int, strength: float, repetition_penalty: float, tokens: int = 48,
                 repeats: int = 7) -> dict[str, Any]:
    sampling = SamplingConfig(max_tokens=tokens, stop_at_eos=False, repetition_penalty=repetition_penalty)
    steering = [Intervention("add", feature, strength=strength)]
    rates: dict[str, list[float]] = {"unsteered": [], "steered": []}
    for _ in range(repeats):
        for name, steer in (("unsteered", []), ("steered", steering)):
            t0 = time.perf_counter()
            n = sum(1 for _ in engine.generate(PROMPT, steer, sampling))
            rates[name].append(tokens / (time.perf_counter() - t0) if n else 0.0)
    plain, steered = statistics.median(rates["unsteered"]), statistics.median(rates["steered"])
    return {"tokens": tokens, "repeats": repeats, "unsteered_tok_s": round(plain, 2), "steered_tok_s": round(steered, 2),
            "ratio": round(steered / plain, 4) if plain else None}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--sae", default="default")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--features", type=int, default=12)
    ap.add_argument("--labelled", action="store_true", help="sample only features that have a label in words")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tokens", type=int, default=20)
    ap.add_argument("--strengths", default="1,2,4,8", help="of row and clamp, in multiples of max_act")
    ap.add_argument("--diffmean-strengths", default="0.5,1,1.5,2,3", help="of diffmean, in multiples of itself")
    ap.add_argument("--methods", default="row,diffmean,clamp,prompt,editor,preset")
    ap.add_argument("--preset-multiples", default="0.5,1,2,3,4", help="of preset, in multiples of its vector")
    ap.add_argument("--topics", type=Path, default=TOPICS, help="paragraphs (with topic words) the presets come from")
    ap.add_argument("--repetition-penalty", type=float, default=STEERED_REPETITION_PENALTY)
    ap.add_argument("--positions", default="all,generated")
    ap.add_argument("--editor-strength", type=float, default=None,
                    help="the Amplify strength (default: the editor's, from lsp_server's settings)")
    ap.add_argument("--prompts", type=Path, default=PROMPTS)
    ap.add_argument("--prose", nargs="*", default=None, help="human prose for the NLL reference "
                    f"(default: {DEFAULT_PROSE} when present, else the paragraphs of {TOPICS.name})")
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--examples", type=int, default=2, help="features whose continuations are kept in the JSON")
    ap.add_argument("--out", type=Path)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    started = time.perf_counter()
    engine = Engine.load(EngineConfig(model=args.model, sae=args.sae, device=args.device, dtype=args.dtype))
    sae = engine.require_sae("the steering benchmark")
    spec = json.loads(args.prompts.read_text(encoding="utf-8"))
    prompts: list[str] = spec["prompts"]
    features = sample_features(engine, args.features, args.seed, args.labelled)
    methods = [m for m in args.methods.split(",") if m]
    if "diffmean" in methods and sae.diffmean is None:
        log("the SAE has no DiffMean directions (run `tinymorph sae-stats`): diffmean left out")
        methods.remove("diffmean")
    strengths = [float(s) for s in args.strengths.split(",") if s]
    diffmean_strengths = [float(s) for s in args.diffmean_strengths.split(",") if s]
    if args.editor_strength is None:
        from lsp_server.config import Settings

        args.editor_strength = Settings().amplify_strength
    log(f"{len(features)} features x {len(prompts)} prompts; methods {methods}")

    if args.prose is None:
        args.prose = [str(DEFAULT_PROSE)] if DEFAULT_PROSE.exists() else []
    if args.prose:
        stream = load_corpus(engine.lm.tokenizer, args.prose, separator=engine.lm.first_eos_id,
                             max_tokens=200_000).tokens
        prose_source = args.prose
    else:
        stream = torch.tensor(engine.lm.tokenizer(held_out_text())["input_ids"])
        prose_source = [f"{TOPICS.name}: paragraphs"]
    human = human_nll(engine.lm, stream, length=args.tokens)
    log(f"human prose NLL {human:.3f}")

    rows: list[Row] = []
    for f in features:
        for p in range(len(prompts)):
            rows.append(Row(f, p, "unsteered", "all", 0.0))
            if "prompt" in methods:
                rows.append(Row(f, p, "prompt", "all", 0.0))
            if "editor" in methods:
                rows.append(Row(f, p, "editor", "all", args.editor_strength))
            for method, sweep in (("row", strengths), ("diffmean", diffmean_strengths)):
                if method in methods:
                    rows += [Row(f, p, method, pos, s) for s in sweep for pos in args.positions.split(",") if pos]
            if "clamp" in methods:
                rows += [Row(f, p, "clamp", "all", s) for s in strengths]
    results = run_rows(engine, rows, prompts, args.tokens, args.batch, args.repetition_penalty)
    presets = None
    if "preset" in methods:
        paragraphs = hint_topics(args.topics)["paragraphs"]
        presets = preset_table(engine, prompts, paragraphs, [float(m) for m in args.preset_multiples.split(",") if m],
                               args.tokens, args.batch, args.repetition_penalty, args.seed, human)
    table = summarise(results, human)
    examples = []
    for f in features[:args.examples]:
        for r in results:
            row = r["row"]
            if row.feature == f and row.prompt == 0:
                examples.append({"feature": f, "label": engine.label(f), "method": row.method,
                                 "positions": row.positions, "strength": row.strength,
                                 "concept": round(r["concept"], 3), "nll": round(r["nll"], 3),
                                 "text": prompts[0] + engine.lm.tokenizer.decode(r["tokens"])})
    info = engine.info()
    data = {
        "benchmark": "steering", "model": info.model, "sae": info.sae, "hook": info.hook,
        **machine(engine.lm.device, info.dtype), "seed": args.seed, "features": features, "prompts": len(prompts),
        "tokens": args.tokens, "carried_at": CARRIED, "editor_strength": args.editor_strength,
        "steering_scale": info.steering_scale, "human_prose_nll": round(human, 4), "prose": prose_source,
        "repetition_penalty": args.repetition_penalty,
        "table": table, "presets": presets, "speed": decode_speed(engine, features[0], args.editor_strength, args.repetition_penalty),
        "examples": examples, "seconds": round(time.perf_counter() - started, 1),
        "rows": [[r["row"].feature, r["row"].prompt, r["row"].method, r["row"].positions, r["row"].strength,
                  round(r["concept"], 4), round(r["nll"], 4), round(r["distinct_2"], 4)] for r in results],
    }
    emit(data, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
