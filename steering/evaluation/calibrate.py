"""Per-feature steering strength and steerability: what strength 1 of `add` means for each feature, and whether
Amplify can carry the feature into the text at all while it stays English. Found by measurement.

One scale for all features carries one feature into the text and leaves another unnoticed or wrecks fluency. On the
fast path, calibration decodes each feature under Amplify as the editor runs it (guided: `runtime.guidance`) on
neutral prompts, batched, from the default strength (`Guidance.vector_share` of the DiffMean direction x
`DIFFMEAN_MULTIPLE`, or of the decoder row x `max_act`): a continuation *carries* when the unsteered model, re-reading
it, finds the feature on at least `CARRIED` of its tokens, and is *fluent* when its NLL per token under the unsteered
model is at most the model's NLL on human prose + `FLUENT_MARGIN`, it is no list of words (`word_list`) and it does
not loop (distinct-2 at least `DISTINCT_2`). A feature that carries on too few prompts is tried stronger (`FACTORS`),
one that carries but not fluently weaker, until it carries fluently on half the prompts or the factors run out. The
results, kept with the feature statistics by `tinymorph calibrate`: `steer_scale[f]`, the multiple strength 1 means
from then on (0: the default), and `steerability[f]`, the share of prompts carried fluently at it (or the best share
seen): 0 means Amplify cannot carry the feature without breaking the text, and the editor says so instead.

Without the fast path (other model families) calibration steers by the vector alone, through the transformers
forward, at `MULTIPLES`. `reference_nll` is best the model's NLL on held-out prose of the writer's kind
(`--reference`); the built-in paragraphs are stricter than most prose.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from steering.atomic import write_bytes
from steering.config import STEERED_REPETITION_PENALTY, Guidance, SamplingConfig
from steering.errors import TinymorphError
from steering.fast.batched import Batcher, Request
from steering.fast.model import FastModel
from steering.features.labels import load_labels
from steering.features.ranking import Specificity, alive_and_sparse
from steering.runtime.interventions import CALIBRATION_TEXT, DIFFMEAN_MULTIPLE, Intervention, compile_plan
from steering.runtime.models import LoadedModel
from steering.sae.autoencoder import SAE
from steering.sae.layouts import FEATURE_STATS, stats_folder
from steering.training.corpus import load_corpus

from .continuations import distinct_2, greedy_batch, human_nll, reread, word_list

PROMPTS = (
    "The weather this morning",
    "My friend told me that",
    "In the middle of the room there was",
)
"""Calibration prompts: neutral beginnings, different from the steering benchmark's."""
FACTORS = (1.0, 4 / 3, 2.0, 2 / 3)
"""Multiples of the default strength tried on the fast path: the default first, stronger ones for a feature that
does not carry, a weaker one for a feature that carries but breaks the text."""
MULTIPLES = (0.5, 1.0, 1.5, 2.0, 3.0)
"""Multiples of the feature's base vector tried without the fast path."""
CARRIED = 0.2
FLUENT_MARGIN = 0.3
"""Nats per token a fluent continuation may lie above human prose."""
DISTINCT_2 = 0.5
TOKENS = 20
BLOCK = 64
"""Features calibrated (and saved) together: an interrupted run resumes after the last saved block."""
REFERENCE_TEXT = CALIBRATION_TEXT + (
    " My grandmother kept a small garden behind the house, with beans along the fence and a row of onions by the "
    "path. Every evening she watered it from a tin can, and in August we ate tomatoes warm from the sun. The train "
    "was late again, so we waited on the platform and watched the rain. A man beside us read a newspaper about the "
    "election; two children argued about whose turn it was to hold the umbrella."
)
"""Human prose for the fluency reference when no corpus is given."""


@dataclass(frozen=True)
class Choice:
    """What calibration found for one feature."""

    feature: int
    multiple: float
    """The multiple to store as `steer_scale` (0: keep the default)."""
    steerability: float
    """Share of the calibration prompts carried fluently at it (the best share seen when none reached half)."""
    nll: float


@dataclass(frozen=True)
class Run:
    """One calibration continuation, re-read by the unsteered model."""

    concept: float
    nll: float
    tokens: tuple[int, ...]
    text: str

    def fluent(self, bound: float) -> bool:
        return math.isfinite(self.nll) and self.nll <= bound and not word_list(self.text) and \
            distinct_2(self.tokens) >= DISTINCT_2

    def carried(self) -> bool:
        return self.concept >= CARRIED


def default_multiple(sae: SAE, feature: int, guidance: Guidance) -> float:
    """The `steer_scale` that gives what strength 1 applies to an uncalibrated feature under guidance."""
    has_diffmean = sae.diffmean is not None and bool(sae.diffmean[feature].any())
    return guidance.vector_share * (DIFFMEAN_MULTIPLE if has_diffmean else 1.0)


def reference(lm: LoadedModel, tokens: int = TOKENS) -> float:
    stream = torch.tensor(lm.tokenizer(REFERENCE_TEXT)["input_ids"])
    return human_nll(lm, stream, spans=8, prefix=16, length=tokens)


@torch.inference_mode()
def calibrate_guided(lm: LoadedModel, sae: SAE, fast: FastModel, features: Sequence[int], *,
                     reference_nll: float | None = None, prompts: Sequence[str] = PROMPTS, tokens: int = TOKENS,
                     rows: int = 16, guidance: Guidance | None = None,
                     progress: Callable[[int, int], None] | None = None) -> list[Choice]:
    """Each feature's multiple and steerability under Amplify as the editor runs it (see the module's doc)."""
    if sae.max_act is None:
        raise ValueError("Calibration needs the SAE's feature statistics (tinymorph sae-stats).")
    guidance = guidance or Guidance()
    bound = (reference(lm, tokens) if reference_nll is None else reference_nll) + FLUENT_MARGIN
    sampling = SamplingConfig(max_tokens=tokens, stop_at_eos=False, repetition_penalty=STEERED_REPETITION_PENALTY,
                              guidance=guidance)
    ids = [list(lm.tokenizer(p)["input_ids"]) for p in prompts]
    scale = sae.stats.get("steer_scale")
    saved = None if scale is None else scale.clone()
    working = torch.zeros(sae.d_sae, device=sae.device) if scale is None else scale
    sae.stats["steer_scale"] = working
    tried: dict[int, dict[float, list[Run]]] = {f: {} for f in features}
    factor = {f: FACTORS[0] for f in features}
    batcher = Batcher(fast, sae, lm.eos_token_ids, lm.tokenizer, rows=rows)
    try:
        while factor:
            requests = []
            for f, k in factor.items():
                working[f] = k * default_multiple(sae, f, guidance)
                plan = compile_plan([Intervention("add", f, strength=1.0)], sae, lm.d_model)
                requests += [(f, k, Request(p, sampling, plan)) for p in ids]
            batcher.run([r for _, _, r in requests])
            reads = []
            for first in range(0, len(requests), 48):
                chunk = requests[first:first + 48]
                reads += reread(lm, sae, [r.ids for _, _, r in chunk], [r.tokens for _, _, r in chunk],
                                [f for f, _, _ in chunk])
            for (f, k, request), read in zip(requests, reads, strict=True):
                tried[f].setdefault(k, []).append(Run(read.concept, read.nll, tuple(request.tokens), request.text))
            following = {f: next_factor(tried[f], bound) for f in factor}
            factor = {f: k for f, k in following.items() if k is not None}
            if progress is not None:
                progress(sum(1 for f in features if f not in factor), len(features))
    finally:
        if saved is None:
            del sae.stats["steer_scale"]
        else:
            sae.stats["steer_scale"] = saved
    return [choose_factor(f, tried[f], bound, default_multiple(sae, f, guidance)) for f in features]


def next_factor(runs: dict[float, list[Run]], bound: float) -> float | None:
    """The next factor to try for a feature after `runs` (by factor), or None when it is decided."""
    last = list(runs)[-1]
    done = runs[last]
    if sum(r.carried() and r.fluent(bound) for r in done) * 2 >= len(done):
        return None
    carried = sum(r.carried() for r in done) * 2 >= len(done)
    options = [k for k in FACTORS if k not in runs and ((k < last) if carried else (k > last))]
    return options[0] if options else None


def choose_factor(feature: int, runs: dict[float, list[Run]], bound: float, default: float) -> Choice:
    """The smallest factor at which the feature carried fluently on half the prompts; else 0 (the default) with
    the best share seen."""
    shares = {k: sum(r.carried() and r.fluent(bound) for r in rs) / len(rs) for k, rs in runs.items()}
    good = sorted(k for k, share in shares.items() if share >= 0.5)
    k = good[0] if good else max(shares, key=lambda x: (shares[x], -x))
    finite = [r.nll for r in runs[k] if math.isfinite(r.nll)]
    return Choice(feature, k * default if good else 0.0, shares[k], statistics.fmean(finite) if finite else math.nan)


Measured = dict[float, list[tuple[float, float, float]]]
"""Per multiple, per prompt: (concept share, NLL per token, distinct-2)."""


def choose(measured: Measured, fluent_nll: float, carried_at: float = CARRIED,
           distinct: float = DISTINCT_2) -> tuple[float, float, float]:
    """Vector steering alone: (multiple, carried share, NLL) of the smallest multiple that carries on half the
    prompts while fluent; multiple 0 (not calibrated) when none does."""
    for multiple in sorted(measured):
        runs = measured[multiple]
        if not runs:
            continue
        finite = [n for _, n, _ in runs if math.isfinite(n)]
        nll = statistics.fmean(finite) if finite else math.inf
        carried = sum(c >= carried_at for c, _, _ in runs) / len(runs)
        looping = statistics.fmean(d for _, _, d in runs) < distinct
        if carried >= 0.5 and nll <= fluent_nll and not looping:
            return multiple, carried, nll
    return 0.0, 0.0, math.nan


def base_vector(sae: SAE, feature: int) -> torch.Tensor:
    """What multiple 1 adds for `feature`: its DiffMean direction, or its unit decoder row x `max_act` in the
    residual's units."""
    if sae.diffmean is not None and bool(sae.diffmean[feature].any()):
        return sae.diffmean[feature].float()
    assert sae.max_act is not None
    scale = sae.input_scale(torch.ones(1, sae.d_in))
    if not isinstance(scale, float):
        raise ValueError("Calibrating an SAE with per-token input normalisation needs its DiffMean directions "
                         "(tinymorph sae-stats).")
    return sae.direction(feature) * float(sae.max_act[feature]) / scale


@torch.inference_mode()
def calibrate(lm: LoadedModel, sae: SAE, features: Sequence[int], *, reference_nll: float | None = None,
              prompts: Sequence[str] = PROMPTS, multiples: Sequence[float] = MULTIPLES, tokens: int = 16,
              batch: int = 48, repetition_penalty: float = STEERED_REPETITION_PENALTY,
              progress: Callable[[int, int], None] | None = None) -> list[Choice]:
    """Vector steering alone, through the transformers forward (models without the fast path): the chosen multiple
    of each feature, its steerability the share of prompts it carried on there."""
    assert sae.hook is not None
    if sae.max_act is None:
        raise ValueError("Calibration needs the SAE's feature statistics (tinymorph sae-stats).")
    if reference_nll is None:
        reference_nll = reference(lm, tokens)
    prompt_ids = [list(lm.tokenizer(p)["input_ids"]) for p in prompts]
    jobs = [(f, m, p) for f in features for m in multiples for p in range(len(prompts))]
    measured: dict[int, Measured] = {f: {} for f in features}
    bases = {f: base_vector(sae, f) for f in features}
    for first in range(0, len(jobs), batch):
        chunk = jobs[first:first + batch]
        plans = [compile_plan([Intervention("vector", vector=bases[f], strength=m)], sae, lm.d_model)
                 for f, m, _ in chunk]
        outs = greedy_batch(lm, [prompt_ids[p] for _, _, p in chunk], tokens, plans=plans, hook=sae.hook,
                            repetition_penalty=repetition_penalty)
        reads = reread(lm, sae, [prompt_ids[p] for _, _, p in chunk], outs, [f for f, _, _ in chunk])
        for (f, m, _), out, read in zip(chunk, outs, reads, strict=True):
            measured[f].setdefault(m, []).append((read.concept, read.nll, distinct_2(out)))
        if progress is not None:
            progress(min(first + batch, len(jobs)) // (len(multiples) * len(prompts)), len(features))
    return [Choice(f, *choose(measured[f], reference_nll)) for f in features]


# ------------------------------------------------------------------------------------------------ stored
def select_features(sae: SAE, which: str, seed: int = 0) -> list[int]:
    """The features `which` names: `hintable` (the features hints can show: with labels.json beside the SAE, those
    whose label is confident enough), `all` (every alive feature, the hintable ones first, so that an interrupted run
    has measured what the writer sees), `sample:N` (N alive features, drawn with `seed`) or comma-separated ids."""
    if sae.frequency is None:
        raise TinymorphError("calibrate needs the SAE's feature statistics (run tinymorph sae-stats first).")
    alive = [int(f) for f in alive_and_sparse(sae.frequency).nonzero().flatten().tolist()]
    labels = load_labels(sae.source) if sae.source else None
    hintable = Specificity(sae, labels["features"] if labels else None).hintable
    if which == "all":
        return sorted(alive, key=lambda f: not bool(hintable[f]))
    if which == "hintable":
        return [f for f in alive if bool(hintable[f])]
    if which.startswith("sample:") and which.removeprefix("sample:").isdigit():
        return sorted(random.Random(seed).sample(alive, min(int(which.removeprefix("sample:")), len(alive))))
    try:
        return [sae.check_feature(int(f)) for f in which.split(",") if f.strip()]
    except ValueError:
        raise TinymorphError(f"--features must be hintable, all, sample:N or feature ids, not {which!r}.") from None


@dataclass(frozen=True)
class Calibrated:
    """What `calibrate_folder` measured and stored."""

    folder: Path
    choices: tuple[Choice, ...]
    calibrated: int
    """Features with a calibrated multiple in the SAE's statistics now, from this run and earlier ones."""
    measured: int
    """Features with a measured steerability now, from this run and earlier ones."""
    skipped: int = 0
    """Features left as an earlier run measured them."""

    def to_dict(self) -> dict[str, object]:
        shares = sorted({round(c.steerability, 3) for c in self.choices})
        return {"sae": str(self.folder), "features": len(self.choices), "skipped": self.skipped,
                "carried_while_fluent": sum(c.multiple > 0 for c in self.choices),
                "cannot_steer": sum(c.steerability == 0 for c in self.choices), "calibrated": self.calibrated,
                "measured": self.measured,
                "steerability": {str(x): sum(round(c.steerability, 3) == x for c in self.choices) for x in shares}}


def calibrate_folder(lm: LoadedModel, sae: SAE, which: str = "hintable", *, fast: FastModel | None = None,
                     seed: int = 0, reference: Sequence[str] | None = None, batch: int = 48, redo: bool = False,
                     progress: Callable[[int, int], None] | None = None) -> Calibrated:
    """Calibrate the features `which` names (`select_features`) and store their multiples (`steer_scale`) and
    steerability in the SAE's feature_stats.safetensors, replaced atomically after every `BLOCK` features (so an
    interrupted run resumes: features already measured are left as they are unless `redo`); other features keep
    theirs. Guided, as the editor steers, on the fast path `fast`; by vectors alone without it. The SAE must have
    been read from files and have feature statistics. `reference`: files of human prose whose NLL is
    the fluency bound (default: `REFERENCE_TEXT`, stricter)."""
    folder = stats_folder(sae)
    if folder is None or sae.max_act is None:
        raise TinymorphError("calibrate writes beside an SAE read from files that has feature statistics (run "
                             "tinymorph prepare, or sae-stats, first).")
    features = select_features(sae, which, seed)
    if not features:
        raise TinymorphError("No features to calibrate.")
    known = sae.stats.get("steerability")
    todo = [f for f in features if redo or known is None or float(known[f]) < 0]
    reference_nll = None
    if reference:
        stream = load_corpus(lm.tokenizer, reference, separator=lm.first_eos_id, max_tokens=200_000).tokens
        try:
            reference_nll = human_nll(lm, stream, length=TOKENS)
        except ValueError as exc:
            raise TinymorphError(str(exc)) from None
    choices: list[Choice] = []
    for first in range(0, len(todo), BLOCK):
        block = todo[first:first + BLOCK]

        def report(done: int, _total: int, before: int = first) -> None:
            if progress is not None:
                progress(before + done, len(todo))

        try:
            if fast is not None:
                made = calibrate_guided(lm, sae, fast, block, reference_nll=reference_nll, rows=min(batch, 16),
                                        progress=report)
            else:
                made = calibrate(lm, sae, block, batch=batch, reference_nll=reference_nll, progress=report)
        except ValueError as exc:
            raise TinymorphError(str(exc)) from None
        store(sae, folder, made)
        choices += made
    measured = sae.stats.get("steerability")
    scale = sae.stats.get("steer_scale")
    return Calibrated(folder, tuple(choices), int((scale > 0).sum()) if scale is not None else 0,
                      int((measured >= 0).sum()) if measured is not None else 0, len(features) - len(todo))


def store(sae: SAE, folder: Path, choices: Sequence[Choice]) -> None:
    """Keep `choices` in the SAE's statistics and write them to its folder (atomically)."""
    scale = sae.stats.get("steer_scale")
    scale = torch.zeros(sae.d_sae) if scale is None else scale.clone().cpu()
    steerability = sae.stats.get("steerability")
    steerability = torch.full((sae.d_sae,), -1.0) if steerability is None else steerability.clone().cpu()
    for choice in choices:
        scale[choice.feature] = choice.multiple
        steerability[choice.feature] = choice.steerability
    sae.set_feature_stats(**{**sae.stats, "steer_scale": scale, "steerability": steerability})
    write_bytes(folder / FEATURE_STATS, sae.stats_bytes())
