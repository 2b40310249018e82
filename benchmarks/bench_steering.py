"""Does steering do what it says, and does the text stay English? Methods side by side, one JSON on stdout.

Feature sets (`--sets`):
- `hints:FILE`: the features a writer is shown. Each paragraph of a topic file (`hint_topics.json`: the methods were
  chosen on it; `steering_topics.json`: held out, on other topics) is annotated alone and gives its first labelled
  hint, as the editor shows it;
- `random`: `--features` alive, non-dense features sampled (seeded), what hover and search offer.

For every feature, every neutral prompt of `steering_prompts.json` and every method: a greedy continuation of
`--tokens` tokens with the editor's repetition penalty. Then the unsteered model re-reads prompt + continuation:
- `carried`: the share of continuations on which the feature fires on at least 20 % of the tokens;
- `topic` (hint sets): the share using a word of the paragraph's topic (the hints benchmark's rule);
- `nll`: NLL per token under the unsteered model, next to `human_nll`, the same model's NLL on the set's own human
  prose (the topic paragraphs; for `random`, all of them), and `nll_over_human` = the difference;
- `word_lists`: the share of continuations that read as a list of words (`evaluation.continuations.word_list`:
  five content words in a row with no function word or punctuation); `distinct_2` catches loops;
- `tok_s_ratio`: single-request decode speed against unsteered, on the same prompts.

Methods (`--methods`, strength `S` in the unit of `add`, what Amplify's strength 1 means):
- `unsteered`;
- `vector:S`: `add` at S with its vector alone at every step (what Amplify was before guidance; `diffmean:S` is the
  same vector taken as S x the DiffMean direction);
- `guided:S`: `add` at S under `config.Guidance`, the decode loop reading the feature on the 4 most likely next
  tokens and preferring one it fires on, easing off once it fired on 35 % of the tokens (the editor's Amplify at 1);
- `guided8:S`: the same with 8 candidates; `guided_repeats:S`: the same, rewarding also a candidate that repeats a
  token just taken (before `Guidance.repeats`);
- `gated:S`: the vector eased off the same way, without candidates;
- `plausible:S:A`: the vector at S, but only tokens the unsteered model rates at least A x its top token's
  probability (the contrastive-decoding plausibility constraint; two passes a step);
- `best4`: four continuations (vectors at 0.5, 1, 1.5, 2) in one batch; the one that carries with the lowest NLL
  (or the lowest NLL);
- `row:S`, `clamp:S`: the seeds' rule and the clamp at S x max_act, vectors alone; `prompt`: no steering, the
  label written before the prompt;
- `server`: the editor's own way, through `python -m lsp_server`: Amplify (`tinymorph.steer.add` without a
  strength), then a completion at the end of a document holding the prompt (a feature Amplify refuses counts as
  refused, with no continuation).

`suppress` (hint sets): each hint feature's own paragraph, cut in half, continued unsteered, with the vector at -1
and guided at -1 (Suppress): the share of tokens the feature fires on, how often it fires on fewer than unsteered
(`fewer`), and the fluency figures.

    python benchmarks/bench_steering.py [--model default] [--sae default] [--sets hints:...,random] [--features 12]
        [--seed 0] [--tokens 24] [--methods ...] [--examples 4] [--presets] [--out FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import statistics
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from harness import TOPICS, emit, hint_topics, logger, machine, names_topic

from steering.config import STEERED_REPETITION_PENALTY, EngineConfig, Guidance, SamplingConfig
from steering.engine import Engine
from steering.evaluation.continuations import distinct_2, greedy_batch, human_nll, reread, word_list
from steering.fast.cache import PrefixCache
from steering.features.annotate import annotate
from steering.features.ranking import alive_and_sparse
from steering.runtime.decode import penalise_repeats
from steering.runtime.guidance import CANNOT_STEER
from steering.runtime.interventions import Intervention, Plan
from steering.runtime.presets import PRESET_MULTIPLE

HERE = Path(__file__).resolve().parent
PROMPTS = HERE / "steering_prompts.json"
HELD_OUT = HERE / "steering_topics.json"
CARRIED = 0.2
DEFAULT_METHODS = ("unsteered,vector:1,vector:0.5,guided:1,guided_repeats:1,guided:0.75,guided8:1,gated:1,"
                   "plausible:2:0.05,best4,prompt")

log = logger("bench_steering")


@dataclass(frozen=True)
class Feature:
    feature: int
    label: str
    accept: tuple[str, ...] = ()
    """Topic words of its paragraph (hint sets)."""
    text: str = ""
    """Its paragraph (hint sets)."""


@dataclass(frozen=True)
class Job:
    feature: Feature
    prompt: int


# ------------------------------------------------------------------------------------------------ feature sets
def hint_features(engine: Engine, paragraphs: list[dict[str, Any]]) -> list[Feature]:
    """The first labelled hint of each paragraph, annotated alone, as the editor shows it."""
    sae = engine.require_sae("the steering benchmark")
    out = []
    for p in paragraphs:
        ann = annotate(engine.lm, sae, p["text"], paragraph_top=13, specificity=engine.specificity())
        if not ann.paragraphs:
            continue
        span = ann.paragraphs[0]
        picked = engine.hints(span.features, p["text"][span.start:span.end], 1)
        if picked:
            out.append(Feature(picked[0][0].feature, picked[0][1], tuple(p["accept"]), p["text"]))
    return out


def random_features(engine: Engine, count: int, seed: int) -> list[Feature]:
    sae = engine.require_sae("the steering benchmark")
    if sae.frequency is None or sae.max_act is None:
        raise SystemExit("The SAE has no feature statistics (run `tinymorph sae-stats` first).")
    pool = torch.nonzero(alive_and_sparse(sae.frequency)).flatten().tolist()
    return [Feature(f, engine.label(f)) for f in sorted(random.Random(seed).sample(pool, min(count, len(pool))))]


# ------------------------------------------------------------------------------------------------ methods
def sampling(tokens: int, guidance: Guidance | None) -> SamplingConfig:
    return SamplingConfig(max_tokens=tokens, stop_at_eos=True, repetition_penalty=STEERED_REPETITION_PENALTY,
                          guidance=guidance)


GATED = Guidance(candidates=1, bonus=0.0, eased_bonus=0.0)
"""Feedback-gated strength alone: the feature read on the token taken, no other candidate."""
GUIDED_REPEATS = Guidance(repeats=0)
"""Guidance that also rewards a candidate repeating a token just taken (as before `Guidance.repeats`)."""
GUIDANCE: dict[str, Guidance | None] = {"vector": None, "guided": Guidance(), "guided8": Guidance(candidates=8),
                                        "guided_repeats": GUIDED_REPEATS, "gated": GATED}
"""The guidance of each decode-loop method (`vector`: none, its vector alone)."""


def batched(engine: Engine, jobs: list[Job], prompts: list[str], tokens: int, strength: float,
            guidance: Guidance | None, rows: int) -> list[list[int]]:
    """Continuations decoded together on the fast path (`Engine.generate_batch`), `add` at `strength`."""
    steering = [[Intervention("add", j.feature.feature, strength=strength)] if strength else [] for j in jobs]
    plans = [engine.plan(s) for s in steering]
    out = []
    assert engine.fast is not None
    from steering.fast.batched import Batcher, Request

    batcher = Batcher(engine.fast, engine.sae, engine.lm.eos_token_ids, engine.lm.tokenizer, rows=rows)
    requests = [Request(ids_of(engine, prompts[j.prompt]), sampling(tokens, guidance), plan) for j, plan in
                zip(jobs, plans, strict=True)]
    batcher.run(requests)
    for r in requests:
        out.append([t for t in r.tokens if t not in engine.lm.eos_token_ids])
    return out


def ids_of(engine: Engine, text: str) -> list[int]:
    return list(engine.lm.tokenizer(text)["input_ids"])


def plausible(engine: Engine, ids: list[int], feature: int, strength: float, alpha: float, tokens: int) -> list[int]:
    """The vector at `strength`, keeping only tokens the unsteered model rates at >= alpha x its top token."""
    fast = engine.fast
    assert fast is not None
    plan = engine.plan([Intervention("add", feature, strength=strength)])
    steered, plain = PrefixCache(fast), PrefixCache(fast)
    steered.sync(ids)
    plain.sync(ids)
    out: list[int] = []
    with torch.inference_mode():
        for step in range(tokens):
            logits = penalise_repeats(fast.upper(steered, plan, keep=step > 0)[None], [out],
                                      STEERED_REPETITION_PENALTY)[0]
            base = torch.softmax(penalise_repeats(fast.upper(plain, None, keep=step > 0)[None], [out],
                                                  STEERED_REPETITION_PENALTY)[0].float(), -1)
            logits = logits.masked_fill(base < alpha * base.max(), float("-inf"))
            token = int(logits.argmax())
            if token in engine.lm.eos_token_ids:
                break
            out.append(token)
            steered.push(token)
            plain.push(token)
    return out


def legacy_plan(engine: Engine, method: str, feature: int, strength: float) -> Plan | None:
    sae = engine.require_sae("steering")
    assert sae.max_act is not None
    if method == "row":
        return engine.plan([Intervention("row", feature, strength=strength)])
    if method == "diffmean":
        assert sae.diffmean is not None
        return engine.plan([Intervention("vector", vector=sae.diffmean[feature].float(), strength=strength)])
    if method == "clamp":
        return engine.plan([Intervention("clamp", feature, value=strength * float(sae.max_act[feature]))])
    return None


def prompt_text(engine: Engine, feature: int) -> str:
    """The prompting baseline's prefix: the feature's label, or its top contexts when it has none."""
    label = engine.label(feature)
    if label:
        return f"The following passage is about {label}.\n\n"
    contexts = [c.replace("«", "").replace("»", "") for c, _ in engine.explain(feature, top=3).contexts]
    return "Continue in the manner of these examples: " + " / ".join(contexts) + "\n\n"


def run_method(engine: Engine, method: str, jobs: list[Job], prompts: list[str], tokens: int,
               rows: int, args: argparse.Namespace | None = None) -> list[list[int]]:
    """The continuation of every job under `method`."""
    name, *params = method.split(":")
    value = [float(p) for p in params]
    if name == "server":
        assert args is not None
        args.tokenize = lambda text: engine.lm.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
        return through_server(args, jobs, prompts)
    if name == "unsteered":
        return batched(engine, jobs, prompts, tokens, 0.0, None, rows)
    if name in GUIDANCE:
        return batched(engine, jobs, prompts, tokens, value[0], GUIDANCE[name], rows)
    if name == "plausible":
        return [plausible(engine, ids_of(engine, prompts[j.prompt]), j.feature.feature, value[0], value[1], tokens)
                for j in jobs]
    if name == "best4":
        options = [batched(engine, jobs, prompts, tokens, s, None, rows) for s in (0.5, 1.0, 1.5, 2.0)]
        sae = engine.require_sae("best4")
        best = []
        for i, j in enumerate(jobs):
            ids = ids_of(engine, prompts[j.prompt])
            reads = reread(engine.lm, sae, [ids] * 4, [o[i] for o in options], [j.feature.feature] * 4)
            rank = sorted(range(4), key=lambda k: (reads[k].concept < CARRIED, nan_last(reads[k].nll)))
            best.append(options[rank[0]][i])
        return best
    if name in ("row", "diffmean", "clamp", "prompt"):
        sae = engine.require_sae("steering")
        assert sae.hook is not None
        inputs = [ids_of(engine, (prompt_text(engine, j.feature.feature) if name == "prompt" else "") +
                         prompts[j.prompt]) for j in jobs]
        plans = [legacy_plan(engine, name, j.feature.feature, value[0] if value else 1.0) for j in jobs]
        return greedy_batch(engine.lm, inputs, tokens, plans=plans, hook=sae.hook,
                            repetition_penalty=STEERED_REPETITION_PENALTY)
    raise SystemExit(f"unknown method {method!r}")


def nan_last(x: float) -> float:
    return math.inf if math.isnan(x) else x


# ------------------------------------------------------------------------------------------------ measuring
def measure(engine: Engine, jobs: list[Job], prompts: list[str], outs: list[list[int]]) -> list[dict[str, Any]]:
    sae = engine.require_sae("steering")
    rows = []
    for first in range(0, len(jobs), 32):
        chunk, chunk_outs = jobs[first:first + 32], outs[first:first + 32]
        reads = reread(engine.lm, sae, [ids_of(engine, prompts[j.prompt]) for j in chunk], chunk_outs,
                       [j.feature.feature for j in chunk])
        for j, out, read in zip(chunk, chunk_outs, reads, strict=True):
            text = engine.lm.tokenizer.decode(out)
            rows.append({"feature": j.feature.feature, "prompt": j.prompt, "concept": read.concept, "nll": read.nll,
                         "topic": names_topic([text], list(j.feature.accept)) if j.feature.accept else None,
                         "word_list": word_list(text), "distinct_2": distinct_2(out), "text": text})
    return rows


def summary(rows: list[dict[str, Any]], human: float, refused: set[int]) -> dict[str, Any]:
    """The method's figures over `rows`; `refused`: features Amplify declines (measured steerability 0), whose
    continuations a writer never sees under Amplify (`carried_or_said`: carried, or Amplify said it cannot)."""
    nlls = [r["nll"] for r in rows if not math.isnan(r["nll"])]
    nll = statistics.fmean(nlls) if nlls else float("nan")
    topics = [r["topic"] for r in rows if r["topic"] is not None]
    kept = [r for r in rows if r["feature"] not in refused]
    return {"pairs": len(rows), "carried": round(sum(r["concept"] >= CARRIED for r in rows) / len(rows), 4),
            "refused": round(1 - len(kept) / len(rows), 4),
            "carried_or_said": round((sum(r["concept"] >= CARRIED for r in kept) + len(rows) - len(kept)) / len(rows),
                                     4),
            "concept": round(statistics.fmean(r["concept"] for r in rows), 4),
            "topic": round(sum(topics) / len(topics), 4) if topics else None,
            "nll": round(nll, 4), "nll_over_human": round(nll - human, 4),
            "word_lists": round(sum(r["word_list"] for r in rows) / len(rows), 4),
            "distinct_2": round(statistics.fmean(r["distinct_2"] for r in rows), 4)}


def speed(engine: Engine, method: str, feature: int, prompts: list[str], tokens: int) -> float:
    """Tokens per second of single requests under `method` (the fast path's one-at-a-time decoding)."""
    name, *params = method.split(":")
    if name != "unsteered" and name not in GUIDANCE:
        return float("nan")
    strength = float(params[0]) if params else 0.0
    guidance = GUIDANCE.get(name)
    steering = [Intervention("add", feature, strength=strength)] if strength else []
    config = SamplingConfig(max_tokens=tokens, stop_at_eos=False, repetition_penalty=STEERED_REPETITION_PENALTY,
                            guidance=guidance)
    made, seconds = 0, 0.0
    for prompt in prompts:
        started = time.perf_counter()
        made += sum(1 for _ in engine.generate(prompt, steering, config))
        seconds += time.perf_counter() - started
    return made / seconds if seconds else float("nan")


def through_server(args: argparse.Namespace, jobs: list[Job], prompts: list[str]) -> list[list[int]]:
    """The editor's way, through `python -m lsp_server`: for each feature, Amplify (`tinymorph.steer.add` with no
    strength), then a completion at the end of a document holding each prompt; a feature Amplify refuses gives no
    continuation. The texts come back as the model's tokens (for the re-reading)."""
    import asyncio

    from lsp_client import execute, start_editor
    from lsprotocol import types

    async def run() -> list[list[int]]:
        client, _status = await start_editor(args, args.tokens)
        out: dict[tuple[int, int], str] = {}
        for feature in dict.fromkeys(j.feature.feature for j in jobs):
            await execute(client, "tinymorph.steer.clear")
            added = await execute(client, "tinymorph.steer.add", {"feature": feature})
            for i, prompt in enumerate(prompts):
                if added.get("refused"):
                    out[(feature, i)] = ""
                    continue
                uri = f"file:///bench/steer-{feature}-{i}.md"
                client.text_document_did_open(types.DidOpenTextDocumentParams(text_document=types.TextDocumentItem(
                    uri=uri, language_id="markdown", version=1, text=prompt)))
                got = await client.text_document_completion_async(types.CompletionParams(
                    text_document=types.TextDocumentIdentifier(uri=uri),
                    position=types.Position(line=prompt.count("\n"), character=len(prompt.rsplit("\n", 1)[-1]))))
                items = got.items if isinstance(got, types.CompletionList) else (got or [])
                text = ""
                if items and items[0].text_edit is not None:
                    edit = items[0].text_edit
                    start = edit.range.start.character if isinstance(edit, types.TextEdit) else len(prompt)
                    text = edit.new_text[len(prompt.rsplit("\n", 1)[-1]) - start:]
                out[(feature, i)] = text
                client.text_document_did_close(types.DidCloseTextDocumentParams(
                    text_document=types.TextDocumentIdentifier(uri=uri)))
        await client.shutdown_async(None)
        client.exit(None)
        await client.stop()
        return [list(engine_tokens(out[(j.feature.feature, j.prompt)])) for j in jobs]

    engine_tokens = args.tokenize
    return asyncio.run(run())


SUPPRESS = ("unsteered", "vector:-1", "guided:-1")


def suppress_table(engine: Engine, features: list[Feature], tokens: int, rows: int, human: float) -> dict[str, Any]:
    """Suppress where the feature is: each hint feature's own paragraph, cut after its first half (the feature
    fires there), continued unsteered and with the feature suppressed; how much of the continuation it fires on."""
    prompts = [f.text[: len(f.text) // 2].rsplit(" ", 1)[0] for f in features]
    jobs = [Job(f, i) for i, f in enumerate(features)]
    found = {m: measure(engine, jobs, prompts, run_method(engine, m, jobs, prompts, tokens, rows)) for m in SUPPRESS}
    plain = found["unsteered"]
    table = {}
    for m, rows_ in found.items():
        nlls = [r["nll"] for r in rows_ if not math.isnan(r["nll"])]
        table[m] = {"concept": round(statistics.fmean(r["concept"] for r in rows_), 4),
                    "nll_over_human": round(statistics.fmean(nlls) - human, 4),
                    "word_lists": round(sum(r["word_list"] for r in rows_) / len(rows_), 4)}
        if m != "unsteered":
            fired = [(r, p) for r, p in zip(rows_, plain, strict=True) if p["concept"] > 0]
            table[m]["fewer"] = round(sum(r["concept"] < p["concept"] for r, p in fired) / max(1, len(fired)), 4)
    examples = [{"label": f.label, "prompt": prompts[i], **{m: found[m][i]["text"] for m in SUPPRESS}}
                for i, f in enumerate(features[:3])]
    return {"pairs": len(jobs), "table": table, "examples": examples}


def text_nll(engine: Engine, texts: Sequence[str], tokens: int) -> float:
    stream = torch.tensor(engine.lm.tokenizer("\n\n".join(texts))["input_ids"])
    return human_nll(engine.lm, stream, spans=48, prefix=32, length=tokens)


# ------------------------------------------------------------------------------------------------ presets
def preset_table(engine: Engine, prompts: list[str], paragraphs: list[dict[str, Any]], multiples: list[float],
                 tokens: int, batch: int, seed: int, human: float) -> dict[str, Any]:
    """Style presets: each paragraph's style vector (the selection against two other topics' paragraphs) steering the
    neutral prompts at `multiples` of itself; `topic`: continuations using a word of the selection's topic."""
    lm, sae = engine.lm, engine.require_sae("steering")
    assert sae.hook is not None
    rnd = random.Random(seed)
    samples = []
    for i, para in enumerate(paragraphs):
        before, after = rnd.sample([p for j, p in enumerate(paragraphs) if j != i], 2)
        doc = f"{before['text']}\n\n{para['text']}\n\n{after['text']}"
        start = len(before["text"]) + 2
        samples.append((para, engine.style_vector(doc, start, start + len(para["text"]))))
    plain = [ids_of(engine, p) for p in prompts]
    jobs = [(s, p, m) for s in range(len(samples)) for p in range(len(prompts)) for m in [0.0, *multiples]]
    found: dict[tuple[int, int, float], dict[str, Any]] = {}
    for first in range(0, len(jobs), batch):
        chunk = jobs[first:first + batch]
        plans = [None if m == 0 else engine.plan([Intervention("vector", vector=samples[s][1].vector, strength=m)])
                 for s, _, m in chunk]
        outs = greedy_batch(lm, [plain[p] for _, p, _ in chunk], tokens, plans=plans, hook=sae.hook,
                            repetition_penalty=STEERED_REPETITION_PENALTY)
        reads = reread(lm, sae, [plain[p] for _, p, _ in chunk], outs, [None] * len(chunk))
        for (s, p, m), out, read in zip(chunk, outs, reads, strict=True):
            text = lm.tokenizer.decode(out)
            found[(s, p, m)] = {"topic": names_topic([text], samples[s][0]["accept"]), "nll": read.nll,
                                "word_list": word_list(text), "text": text}
    table = []
    for m in [0.0, *multiples]:
        rows = [r for key, r in found.items() if key[2] == m]
        nll = statistics.fmean(r["nll"] for r in rows if not math.isnan(r["nll"]))
        table.append({"multiple": m, "editor": m == PRESET_MULTIPLE, "pairs": len(rows),
                      "topic": round(statistics.fmean(r["topic"] for r in rows), 4),
                      "nll": round(nll, 4), "nll_over_human": round(nll - human, 4),
                      "word_lists": round(statistics.fmean(r["word_list"] for r in rows), 4)})
    return {"samples": len(samples), "editor_multiple": PRESET_MULTIPLE, "table": table}


# ------------------------------------------------------------------------------------------------ main
def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--sae", default="default")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--sets", default=f"hints:{TOPICS.name},hints:{HELD_OUT.name},random",
                    help="comma-separated: hints:FILE (a topic file beside this script, or a path) and random")
    ap.add_argument("--features", type=int, default=12, help="features of the random set")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tokens", type=int, default=24, help="tokens per continuation (the editor's maxTokens)")
    ap.add_argument("--methods", default=DEFAULT_METHODS)
    ap.add_argument("--prompts", type=Path, default=PROMPTS)
    ap.add_argument("--rows", type=int, default=16, help="continuations decoded together")
    ap.add_argument("--examples", type=int, default=4, help="features per set whose texts are kept side by side")
    ap.add_argument("--presets", action="store_true", help="also measure style presets (on the first hint set)")
    ap.add_argument("--no-suppress", dest="suppress", action="store_false",
                    help="leave out Suppress on the hint features' own paragraphs")
    ap.add_argument("--preset-multiples", default="0.5,1,2,3,4")
    ap.add_argument("--out", type=Path)
    return ap


def topic_file(spec: str) -> Path:
    path = Path(spec)
    return path if path.exists() else HERE / spec


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    started = time.perf_counter()
    engine = Engine.load(EngineConfig(model=args.model, sae=args.sae, device=args.device, dtype=args.dtype))
    if engine.fast is None:
        raise SystemExit(f"the steering benchmark needs the fast path ({engine.slow_reason})")
    prompts: list[str] = json.loads(args.prompts.read_text(encoding="utf-8"))["prompts"]
    methods = [m for m in args.methods.split(",") if m]
    sets: dict[str, tuple[list[Feature], float]] = {}
    all_paragraphs: list[str] = []
    for spec in [s for s in args.sets.split(",") if s]:
        if spec.startswith("hints:"):
            paragraphs = hint_topics(topic_file(spec.removeprefix("hints:")))["paragraphs"]
            all_paragraphs += [p["text"] for p in paragraphs]
            sets[spec] = (hint_features(engine, paragraphs), text_nll(engine, [p["text"] for p in paragraphs],
                                                                      args.tokens))
    if "random" in args.sets.split(","):
        texts = all_paragraphs or [p["text"] for p in hint_topics(TOPICS)["paragraphs"]]
        sets["random"] = (random_features(engine, args.features, args.seed), text_nll(engine, texts, args.tokens))
    results: dict[str, Any] = {}
    for name, (features, human) in sets.items():
        log(f"{name}: {len(features)} features x {len(prompts)} prompts; human prose NLL {human:.3f}")
        jobs = [Job(f, p) for f in features for p in range(len(prompts))]
        sae = engine.require_sae("the steering benchmark")
        refused = {f.feature for f in features if (m := sae.steerability(f.feature)) is not None and m <= CANNOT_STEER}
        table, texts = {}, defaultdict(dict)
        for method in methods:
            t0 = time.perf_counter()
            outs = run_method(engine, method, jobs, prompts, args.tokens, args.rows, args)
            rows = measure(engine, jobs, prompts, outs)
            table[method] = {**summary(rows, human, refused), "seconds": round(time.perf_counter() - t0, 1)}
            for j, r in zip(jobs, rows, strict=True):
                texts[(j.feature.feature, j.prompt)][method] = r
            log(f"  {method:18} {table[method]}")
        examples = []
        for f in features[:args.examples]:
            shown = texts[(f.feature, 0)]
            examples.append({"feature": f.feature, "label": f.label, "prompt": prompts[0],
                             "texts": {m: {"text": r["text"], "concept": round(r["concept"], 3),
                                           "nll": round(r["nll"], 3)} for m, r in shown.items()}})
        results[name] = {"features": [[f.feature, f.label, sae.steerability(f.feature)] for f in features],
                         "human_nll": round(human, 4),
                         "table": table, "examples": examples}
        if name.startswith("hints:") and args.suppress:
            results[name]["suppress"] = suppress_table(engine, features, args.tokens, args.rows, human)
            log(f"  suppress: {results[name]['suppress']['table']}")
    first = next(iter(sets.values()))[0][0].feature
    unsteered = speed(engine, "unsteered", first, prompts[:3], args.tokens)
    speeds = {m: round(speed(engine, m, first, prompts[:3], args.tokens) / unsteered, 3) for m in methods
              if m != "unsteered"}
    for name in results:
        for method, ratio in speeds.items():
            results[name]["table"][method]["tok_s_ratio"] = ratio if not math.isnan(ratio) else None
    presets = None
    if args.presets:
        spec = next(s for s in sets if s.startswith("hints:"))
        paragraphs = hint_topics(topic_file(spec.removeprefix("hints:")))["paragraphs"]
        presets = preset_table(engine, prompts, paragraphs, [float(m) for m in args.preset_multiples.split(",")],
                               args.tokens, 48, args.seed, sets[spec][1])
    info = engine.info()
    emit({"benchmark": "steering", "model": info.model, "sae": info.sae, "hook": info.hook,
          **machine(engine.lm.device, info.dtype), "seed": args.seed, "prompts": prompts, "tokens": args.tokens,
          "carried_at": CARRIED, "repetition_penalty": STEERED_REPETITION_PENALTY, "guidance": dataclasses.asdict(Guidance()),
          "unsteered_tok_s": round(unsteered, 2), "steering_scale": info.steering_scale, "sets": results,
          "presets": presets, "seconds": round(time.perf_counter() - started, 1)},
         args.out, ensure_ascii=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
