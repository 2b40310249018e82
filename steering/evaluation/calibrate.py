"""Per-feature steering strength: what strength 1 of `add` means for each feature, found by measurement.

One scale for all features carries one feature into the text and leaves another unnoticed or wrecks fluency.
Calibration tries each feature at a few multiples of its base vector (its DiffMean direction, or without one its
decoder row x `max_act`) on neutral prompts (greedy with the editor's repetition penalty, batched: `steering.evaluation.continuations`),
lets the unsteered model re-read each continuation, and keeps the smallest multiple at which the feature *carries*
(fires on at least `CARRIED` of the continuation's tokens) on half the prompts while the continuation stays *fluent*:
its NLL per token under the unsteered model no worse than the model's NLL on human prose, and no loop (distinct-2 at
least `DISTINCT_2`). The result, `steer_scale[f]`, is what strength 1 means from then on (`runtime.interventions`); a feature
that carries at no multiple while fluent gets 0, "not calibrated", and keeps the default (`DIFFMEAN_MULTIPLE`, or the
seeds' rule). `tinymorph calibrate` stores it with the feature statistics. `reference_nll` is best the model's NLL on
held-out prose of the writer's kind (`--reference`); the built-in paragraph is stricter than most prose.
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
from steering.config import STEERED_REPETITION_PENALTY
from steering.errors import TinymorphError
from steering.features.ranking import Specificity, alive_and_sparse
from steering.runtime.interventions import CALIBRATION_TEXT, Intervention, compile_plan
from steering.runtime.models import LoadedModel
from steering.sae.autoencoder import SAE
from steering.sae.layouts import FEATURE_STATS, saelens_folder
from steering.training.corpus import load_corpus

from .continuations import distinct_2, greedy_batch, human_nll, reread

PROMPTS = (
    "The weather this morning",
    "My friend told me that",
    "In the middle of the room there was",
)
"""Calibration prompts: neutral beginnings, different from the steering benchmark's."""
MULTIPLES = (0.5, 1.0, 1.5, 2.0, 3.0)
"""Multiples of the feature's base vector tried."""
CARRIED = 0.2
DISTINCT_2 = 0.5
TOKENS = 16
REFERENCE_TEXT = CALIBRATION_TEXT + (
    " My grandmother kept a small garden behind the house, with beans along the fence and a row of onions by the "
    "path. Every evening she watered it from a tin can, and in August we ate tomatoes warm from the sun. The train "
    "was late again, so we waited on the platform and watched the rain. A man beside us read a newspaper about the "
    "election; two children argued about whose turn it was to hold the umbrella."
)
"""Human prose for the fluency reference when no corpus is given."""


@dataclass(frozen=True)
class Choice:
    """The chosen multiple of one feature and what was measured at it."""

    feature: int
    multiple: float
    carried: float
    """Share of the calibration prompts on which the feature carried at this multiple."""
    nll: float


Measured = dict[float, list[tuple[float, float, float]]]
"""Per multiple, per prompt: (concept share, NLL per token, distinct-2)."""


def choose(measured: Measured, fluent_nll: float, carried_at: float = CARRIED,
           distinct: float = DISTINCT_2) -> tuple[float, float, float]:
    """(multiple, carried share, NLL) by the rule of the module's doc; multiple 0 (not calibrated) when the feature
    carries at no multiple while fluent."""
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
              prompts: Sequence[str] = PROMPTS, multiples: Sequence[float] = MULTIPLES, tokens: int = TOKENS,
              batch: int = 48, repetition_penalty: float = STEERED_REPETITION_PENALTY,
              progress: Callable[[int, int], None] | None = None) -> list[Choice]:
    """The chosen multiple of each feature (see the module's doc). `reference_nll` defaults to the model's NLL on
    `REFERENCE_TEXT`."""
    assert sae.hook is not None
    if sae.max_act is None:
        raise ValueError("Calibration needs the SAE's feature statistics (tinymorph sae-stats).")
    if reference_nll is None:
        stream = torch.tensor(lm.tokenizer(REFERENCE_TEXT)["input_ids"])
        reference_nll = human_nll(lm, stream, spans=8, prefix=16, length=tokens)
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
            progress(min(first + batch, len(jobs)), len(jobs))
    return [Choice(f, *choose(measured[f], reference_nll)) for f in features]


# ------------------------------------------------------------------------------------------------ stored
def select_features(sae: SAE, which: str, seed: int = 0) -> list[int]:
    """The features `which` names: `hintable` (the features hints can show), `all` (every alive feature), `sample:N`
    (N alive features, drawn with `seed`) or comma-separated feature ids."""
    if sae.frequency is None:
        raise TinymorphError("calibrate needs the SAE's feature statistics (run tinymorph sae-stats first).")
    alive = [int(f) for f in alive_and_sparse(sae.frequency).nonzero().flatten().tolist()]
    if which == "all":
        return alive
    if which == "hintable":
        hintable = Specificity(sae).hintable
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

    def to_dict(self) -> dict[str, object]:
        multiples = sorted({c.multiple for c in self.choices})
        return {"sae": str(self.folder), "features": len(self.choices),
                "carried_while_fluent": sum(c.multiple > 0 for c in self.choices), "calibrated": self.calibrated,
                "multiples": {str(m): sum(c.multiple == m for c in self.choices) for m in multiples}}


def calibrate_folder(lm: LoadedModel, sae: SAE, which: str = "hintable", *, seed: int = 0,
                     reference: Sequence[str] | None = None, batch: int = 48,
                     progress: Callable[[int, int], None] | None = None) -> Calibrated:
    """Calibrate the features `which` names (`select_features`) and store their multiples as `steer_scale` in the
    SAE's feature_stats.safetensors, replaced atomically; other features keep theirs. The SAE must have been read
    from the SAELens layout and have feature statistics. `reference`: files of human prose whose NLL is the fluency
    bound (default: `REFERENCE_TEXT`, stricter)."""
    folder = saelens_folder(sae)
    if folder is None or sae.max_act is None:
        raise TinymorphError("calibrate writes into an SAE folder in the SAELens layout that has feature statistics "
                             "(run tinymorph sae-stats first).")
    features = select_features(sae, which, seed)
    if not features:
        raise TinymorphError("No features to calibrate.")
    reference_nll = None
    if reference:
        stream = load_corpus(lm.tokenizer, reference, separator=lm.first_eos_id, max_tokens=200_000).tokens
        try:
            reference_nll = human_nll(lm, stream, length=TOKENS)
        except ValueError as exc:
            raise TinymorphError(str(exc)) from None
    try:
        choices = calibrate(lm, sae, features, batch=batch, reference_nll=reference_nll, progress=progress)
    except ValueError as exc:
        raise TinymorphError(str(exc)) from None
    scale = sae.stats.get("steer_scale")
    scale = torch.zeros(sae.d_sae) if scale is None else scale.clone().cpu()
    for choice in choices:
        scale[choice.feature] = choice.multiple
    sae.set_feature_stats(**{**sae.stats, "steer_scale": scale})
    write_bytes(folder / FEATURE_STATS, sae.stats_bytes())
    return Calibrated(folder, tuple(choices), int((scale > 0).sum()))
