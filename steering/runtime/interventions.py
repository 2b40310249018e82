"""Steering as data, and the one function that applies it to the residual stream.

A steering set is a list of `Intervention`s. Each mode is one entry of `MODE_TABLE` (how it reads and writes, says
itself in words and compiles), so the CLI, `steering.json` and the server's commands all read the same table:

- `add`:    h + strength * unit[f] along the feature's steering direction. With a DiffMean direction in the SAE's
            statistics (the mean residual where the feature fires minus where it does not; `features.stats`), that
            direction, and unit[f] = its norm * `steer_scale[f]` (calibrated per feature by `tinymorph calibrate`)
            or * `DIFFMEAN_MULTIPLE`: the steering benchmark measured DiffMean carrying features into the text far
            more often than the decoder row at the same fluency. Without one, the seeds' rule (`row`);
- `row`:    the seeds' rule, h + strength * scale[f] * W_dec[f] / |W_dec[f]|, where scale[f] is the feature's
            `max_act` or, without statistics, the mean residual norm (`add` without DiffMean: times `steer_scale[f]`
            when calibrated);
- `clamp`:  h + (c - f(h)) * W_dec[f], i.e. set feature f to c and keep the SAE's error term;
- `ablate`: clamp to 0;
- `vector`: h + strength * v for a raw vector v of the residual's size (contrastive steering vectors, presets).

A set compiles once (`compile_plan`) into a `Plan`: a vector added at every position, a vector divided by the SAE's
per-token input scale (`add` under `constant_norm_rescale` normalisation), the clamped features and their targets,
and a cache key. `steer` applies a plan, or plans stacked one per row, to a residual: the transformers hook
(`SteeringHook`), the fast path's step and its batched rows all call it, so they cannot disagree.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch

from steering.errors import SteeringSpecError
from steering.sae.autoencoder import SAE

DIFFMEAN_MULTIPLE = 1.5
"""Strength 1 of `add` along a DiffMean direction, in units of the direction's own norm, for a feature without a
calibration of its own: the multiple at which the steering benchmark's features carried into the text while the text
stayed as fluent as human prose under the same model (with the repetition penalty the editor uses)."""

CALIBRATION_TEXT = (
    "The library opens at nine in the morning. Visitors can borrow up to five books at a time, and the reading "
    "room on the second floor is quiet all day. In winter the windows look out over the snow in the park, and in "
    "summer people sit on the steps outside with coffee, talking about what they have read."
)
"""A neutral paragraph: its mean residual norm sets the `add` scale when an SAE has no max_act statistics, and it
stands in for "the rest" of a document too short to contrast a style preset with."""


@dataclass(frozen=True)
class Intervention:
    """One change to the residual stream (its mode's entry in `MODE_TABLE` says what it does)."""

    mode: str
    """`add`, `row`, `clamp`, `ablate` or `vector`."""
    feature: int | None = None
    """The SAE feature (all modes but `vector`)."""
    strength: float = 1.0
    """Multiplier for `add`, `row` and `vector`."""
    value: float = 0.0
    """Target activation for `clamp`."""
    vector: torch.Tensor | None = field(default=None, compare=False, repr=False)
    """The raw direction for `vector`, of the residual's size."""

    def __post_init__(self) -> None:
        mode = MODE_TABLE.get(self.mode)
        if mode is None:
            raise SteeringSpecError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}.")
        if not mode.on_feature:
            if self.vector is None or self.vector.ndim != 1:
                raise SteeringSpecError("A vector intervention needs a 1-D vector.")
        elif not isinstance(self.feature, int) or isinstance(self.feature, bool) or self.feature < 0:
            raise SteeringSpecError(f"feature must be a whole number >= 0 for {self.mode}, not {self.feature!r}.")
        for name in ("strength", "value"):
            number = getattr(self, name)
            if isinstance(number, bool) or not isinstance(number, int | float) or not math.isfinite(number):
                raise SteeringSpecError(f"{name} must be a finite number, not {number!r}.")

    @property
    def kind(self) -> Mode:
        return MODE_TABLE[self.mode]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Intervention:
        """The intervention `to_dict` describes (a feature mode: `vector` needs the vector itself). Keys it does
        not know are ignored; a bad value raises SteeringSpecError naming it."""
        mode = data.get("mode", "add")
        if mode in MODE_TABLE and not MODE_TABLE[mode].on_feature:
            raise SteeringSpecError("A vector intervention cannot be read from a description; it needs the vector.")
        fields = {k: data[k] for k in ("feature", "strength", "value") if k in data}
        return cls(mode, **fields)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mode": self.mode}
        if self.feature is not None:
            out["feature"] = self.feature
        for name in self.kind.numbers:
            out[name] = getattr(self, name)
        return out

    def describe(self, label: str = "") -> str:
        """In words, for people: `12 (rain) +4`, `12 (rain) clamped at 2`, `12 (rain) off`, `vector +3`."""
        name = "vector" if self.feature is None else f"{self.feature}" + (f" ({label})" if label else "")
        return f"{name} {self.kind.words(self)}"

    def signature(self) -> Hashable:
        """What identifies the intervention's effect (a vector by its values)."""
        return (self.mode, self.feature, self.strength, self.value,
                None if self.vector is None else vector_digest(self.vector))

    def __str__(self) -> str:
        """The CLI's steering spec (`parse_steer` reads it back): `12=+4`, `12=clamp:2`, `12=off`, `vector=+1`."""
        return f"{'vector' if self.feature is None else self.feature}={self.kind.spec(self)}"


# ------------------------------------------------------------------------------------------------ compiling
class PlanBuilder:
    """What a steering set adds up to while its interventions compile (`Mode.compile` writes into it)."""

    def __init__(self, sae: SAE | None, d_model: int, fallback_scale: float | None) -> None:
        self.sae = sae
        self.d_model = d_model
        self.fallback_scale = fallback_scale
        self.vector = torch.zeros(d_model)
        self.scaled = torch.zeros(d_model)
        self.clamps: dict[int, float] = {}
        self.guides: list[Guide] = []

    def feature_sae(self, item: Intervention) -> tuple[SAE, int]:
        """The SAE a feature intervention needs, and its checked feature."""
        if self.sae is None:
            raise SteeringSpecError(f"Feature steering ({item}) needs an SAE; none is loaded.")
        assert item.feature is not None
        return self.sae, self.sae.check_feature(item.feature)

    def add_row(self, item: Intervention, multiple: float) -> None:
        """The seeds' rule: `strength * scale * multiple` along the unit decoder row (see the module docstring)."""
        sae, feature = self.feature_sae(item)
        if sae.max_act is None and self.fallback_scale is None:
            raise SteeringSpecError("add steering needs max_act statistics or a fallback scale.")
        scale = float(sae.max_act[feature]) if sae.max_act is not None else float(self.fallback_scale or 0.0)
        scale *= multiple
        if sae.max_act is not None and sae.normalize_activations == "constant_norm_rescale":
            self.scaled += item.strength * scale * sae.direction(feature).cpu()  # in the SAE's normalised units
            return
        if sae.max_act is not None:
            s = sae.input_scale(torch.ones(1, self.d_model))
            scale = scale / float(s) if isinstance(s, float) else scale
        self.vector += item.strength * scale * sae.direction(feature).cpu()


def diffmean_unit(sae: SAE, feature: int) -> torch.Tensor | None:
    """What strength 1 of `add` adds for `feature` when the SAE has its DiffMean direction (None otherwise)."""
    directions = sae.diffmean
    if directions is None:
        return None
    vector = directions[feature].float()
    if not bool(vector.any()):
        return None
    return vector * (sae.steer_multiple(feature) or DIFFMEAN_MULTIPLE)


def _compile_add(plan: PlanBuilder, item: Intervention) -> None:
    sae, feature = plan.feature_sae(item)
    vector, scaled = plan.vector.clone(), plan.scaled.clone()
    along = diffmean_unit(sae, feature)
    if along is not None:
        plan.vector += item.strength * along.cpu()
    else:
        plan.add_row(item, sae.steer_multiple(feature) or 1.0)
    added = plan.scaled - scaled
    plan.guides.append(Guide(feature, 1.0 if item.strength >= 0 else -1.0, plan.vector - vector,
                             added if bool(added.any()) else None, sae.steer_multiple(feature) is not None))


def _compile_clamp(plan: PlanBuilder, item: Intervention) -> None:
    _, feature = plan.feature_sae(item)
    plan.clamps[feature] = item.value if item.mode == "clamp" else 0.0


def _compile_vector(plan: PlanBuilder, item: Intervention) -> None:
    assert item.vector is not None
    if item.vector.shape[0] != plan.d_model:
        raise SteeringSpecError(f"The steering vector has size {item.vector.shape[0]}, the residual stream "
                                f"{plan.d_model}.")
    plan.vector += item.strength * item.vector.detach().float().cpu()


def _number(text: str) -> float:
    return float(text)  # ValueError on garbage: `parse_steer` reports the spec


@dataclass(frozen=True)
class Mode:
    """One steering mode: everything that differs between modes, in one place."""

    name: str
    on_feature: bool
    """Acts on an SAE feature (`feature` set); else on a raw vector."""
    numbers: tuple[str, ...]
    """The numeric fields its description (`to_dict`) keeps."""
    words: Callable[[Intervention], str]
    """What it does, for people (after the feature's name)."""
    spec: Callable[[Intervention], str]
    """The right-hand side of its CLI spec `F=...`."""
    read: Callable[[str], dict[str, float] | None]
    """Its fields from the right-hand side of a CLI spec, or None when the spec is not of this mode."""
    spec_help: str
    compile: Callable[[PlanBuilder, Intervention], None]


def _prefixed(prefix: str, name: str) -> Callable[[str], dict[str, float] | None]:
    return lambda rhs: {name: _number(rhs.removeprefix(prefix))} if rhs.startswith(prefix) else None


MODE_TABLE: dict[str, Mode] = {m.name: m for m in (
    Mode("add", True, ("strength",), lambda i: f"{i.strength:+g}", lambda i: f"{i.strength:+g}",
         lambda rhs: {"strength": _number(rhs)}, "F=+S (add), F=-S", _compile_add),
    Mode("row", True, ("strength",), lambda i: f"{i.strength:+g} along its decoder row",
         lambda i: f"row:{i.strength:+g}", _prefixed("row:", "strength"), "F=row:+S (add along the decoder row)",
         lambda plan, i: plan.add_row(i, 1.0)),
    Mode("clamp", True, ("value",), lambda i: f"clamped at {i.value:g}", lambda i: f"clamp:{i.value:g}",
         _prefixed("clamp:", "value"), "F=clamp:C", _compile_clamp),
    Mode("ablate", True, (), lambda i: "off", lambda i: "off",
         lambda rhs: {} if rhs in ("off", "ablate", "0x") else None, "F=off (ablate)", _compile_clamp),
    Mode("vector", False, ("strength",), lambda i: f"{i.strength:+g}", lambda i: f"{i.strength:+g}",
         lambda rhs: None, "", _compile_vector),
)}
"""Every steering mode. Adding one: an entry here (and its test in tests/test_steering.py)."""
MODES = tuple(MODE_TABLE)
FEATURE_MODES = tuple(name for name, m in MODE_TABLE.items() if m.on_feature)
"""The modes that act on one SAE feature (the ones a steering set can hold by feature index)."""

_SPEC = re.compile(r"^\s*(\d+)\s*=\s*(.+?)\s*$")
_SPEC_ORDER = sorted(FEATURE_MODES, key=lambda m: m == "add")  # a bare number is `add`: tried last
SPEC_HELP = ", ".join(MODE_TABLE[m].spec_help for m in _SPEC_ORDER[::-1] if MODE_TABLE[m].spec_help) + \
    ", e.g. 1234=+1"


def parse_steer(spec: str) -> Intervention:
    """Parse a CLI steering spec: `F=+S`, `F=-S`, `F=S`, `F=row:S`, `F=clamp:C`, `F=off`."""
    match = _SPEC.match(spec)
    if not match:
        raise SteeringSpecError(f"Cannot parse steering spec {spec!r}: expected {SPEC_HELP}.")
    feature, rhs = int(match.group(1)), match.group(2).lower()
    try:
        for name in _SPEC_ORDER:
            fields = MODE_TABLE[name].read(rhs)
            if fields is not None:
                return Intervention(name, feature, strength=fields.get("strength", 1.0),
                                    value=fields.get("value", 0.0))
    except ValueError:
        pass
    raise SteeringSpecError(f"Cannot parse steering spec {spec!r}: expected {SPEC_HELP}.") from None


def vector_digest(vector: torch.Tensor) -> str:
    """A short identity of a steering vector's values (wherever the tensor lives)."""
    return hashlib.sha1(vector.detach().float().cpu().numpy().tobytes()).hexdigest()


# ------------------------------------------------------------------------------------------------ plans
@dataclass(frozen=True)
class Guide:
    """An `add` of a plan, which the decode loop can carry by guidance (`config.Guidance`): its feature, whether it
    is amplified (+1) or suppressed (-1), and its share of the plan's vectors."""

    feature: int
    sign: float
    vector: torch.Tensor
    """`[d]`: what it adds to `Plan.vector`."""
    scaled: torch.Tensor | None
    """`[d]`: what it adds to `Plan.scaled`, if anything."""
    calibrated: bool
    """Its strength is the feature's own calibrated one (measured with guidance), kept whole."""


@dataclass(frozen=True)
class Plan:
    """A steering set compiled for one SAE and residual size: what `steer` applies at the hook point."""

    vector: torch.Tensor
    """`[d]` float32: added at every position."""
    scaled: torch.Tensor | None
    """`[d]` float32, or None: added divided by the SAE's per-token input scale (`constant_norm_rescale`)."""
    clamp_index: torch.Tensor
    """`[m]`: the clamped (or ablated) features."""
    clamp_target: torch.Tensor
    """`[m]` float32: their target activations."""
    sae: SAE | None = field(default=None, compare=False, repr=False)
    guides: tuple[Guide, ...] = field(default=(), compare=False, repr=False)
    """The `add` interventions in it, for guided decoding."""

    @property
    def clamps(self) -> tuple[tuple[int, float], ...]:
        """(feature, target activation) of every clamped or ablated feature."""
        return tuple(zip(self.clamp_index.tolist(), self.clamp_target.tolist(), strict=True))

    @cached_property
    def empty(self) -> bool:
        return not (bool(self.vector.any()) or self.scaled is not None or len(self.clamp_index))

    @cached_property
    def key(self) -> Hashable:
        """The identity of what the plan does, for caches of steered computation: None for no steering at all
        (computed once: a decode step asks for it)."""
        if self.empty:
            return None
        return (vector_digest(self.vector), None if self.scaled is None else vector_digest(self.scaled), self.clamps)

    def on(self, device: torch.device) -> Plan:
        """The plan with its tensors on `device`."""
        if self.vector.device == device:
            return self
        return Plan(self.vector.to(device), None if self.scaled is None else self.scaled.to(device),
                    self.clamp_index.to(device), self.clamp_target.to(device), self.sae, self.guides)

    def with_shares(self, shares: Sequence[float]) -> Plan:
        """The plan with each guide's vectors kept at its share (1: whole) and the rest as it is."""
        vector = self.vector.clone()
        scaled = None if self.scaled is None else self.scaled.clone()
        for guide, share in zip(self.guides, shares, strict=True):
            vector -= (1.0 - share) * guide.vector.to(vector.device)
            if scaled is not None and guide.scaled is not None:
                scaled -= (1.0 - share) * guide.scaled.to(scaled.device)
        return Plan(vector, scaled, self.clamp_index, self.clamp_target, self.sae, self.guides)

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        """`h [..., d]` steered by this plan (the same shape, dtype and device)."""
        clamps = Clamps(self.clamp_index, self.clamp_target) if len(self.clamp_index) else None
        return steer(h, self.vector, self.scaled, self.sae, clamps)


def compile_plan(interventions: Sequence[Intervention], sae: SAE | None, d_model: int,
                 fallback_scale: float | None = None) -> Plan:
    """The plan of a steering set (bad steering raises SteeringSpecError / FeatureIndexError here). `fallback_scale`:
    the `add` scale for an SAE without max_act statistics (`Engine.fallback_scale`)."""
    builder = PlanBuilder(sae, d_model, fallback_scale)
    for item in interventions:
        item.kind.compile(builder, item)
    scaled = builder.scaled if bool(builder.scaled.any()) else None
    device = sae.device if sae is not None else torch.device("cpu")
    return Plan(builder.vector, scaled, torch.tensor(list(builder.clamps), dtype=torch.long, device=device),
                torch.tensor(list(builder.clamps.values()), dtype=torch.float32, device=device), sae,
                tuple(builder.guides))


@dataclass(frozen=True)
class Clamps:
    """Clamped features of a steered residual: `target [..., m]` activations for the features `index [m]` (every
    feature, in order, when None), applied where `mask [..., m]` is 1 (everywhere when None)."""

    index: torch.Tensor | None
    target: torch.Tensor
    mask: torch.Tensor | None = None


def steer(h: torch.Tensor, vector: torch.Tensor, scaled: torch.Tensor | None = None, sae: SAE | None = None,
          clamps: Clamps | None = None) -> torch.Tensor:
    """THE steering kernel: the residual `h [..., d]` with `vector` added, `scaled` added in the SAE's normalised
    units, and the `clamps` set through the SAE's error term (`h + (c - f(h)) W_dec[f]`), computed in float32 and
    returned in `h`'s dtype on `h`'s device. `vector` and `scaled` broadcast against `h` (`[d]` for one plan,
    `[rows, d]` or `[rows, 1, d]` for plans stacked per row: `RowPlans`); so do the clamps' target and mask."""
    out = h.float() + vector
    if sae is not None and (scaled is not None or clamps is not None):
        out = out.to(sae.device)  # a spread model's hooked block may compute elsewhere than the SAE was put
        scale = sae.input_scale(out.to(sae.dtype))
        scale_f = scale.float() if isinstance(scale, torch.Tensor) else scale
        if scaled is not None:
            out = out + scaled / scale_f
        if clamps is not None:
            acts = sae.encode(out.to(sae.dtype)).float()
            weights = sae.W_dec.float()
            if clamps.index is not None:
                acts, weights = acts[..., clamps.index], weights[clamps.index]
            change = clamps.target - acts
            if clamps.mask is not None:
                change = change * clamps.mask
            out = out + (change @ weights) / scale_f
    return out.to(h.device, h.dtype)


class SteeringHook:
    """A plan as a residual hook of the transformers forward (`runtime.hooks.residual_hook`); `active` switches it
    per decode phase (prompt, generated). Built from a steering set, or `from_plan`."""

    def __init__(self, interventions: Sequence[Intervention], sae: SAE | None, d_model: int,
                 fallback_scale: float | None) -> None:
        self.plan = compile_plan(interventions, sae, d_model, fallback_scale)
        self.active = True

    @classmethod
    def from_plan(cls, plan: Plan) -> SteeringHook:
        hook = cls.__new__(cls)
        hook.plan, hook.active = plan, True
        return hook

    @property
    def empty(self) -> bool:
        return self.plan.empty

    def __call__(self, h: torch.Tensor) -> torch.Tensor | None:
        if not self.active or self.empty:
            return None
        self.plan = self.plan.on(h.device)
        return self.plan(h)


class RowPlans:
    """Plans stacked one per row, as tensors `steer` takes: `vectors`, `scaled` `[rows, d]` and the clamps as a mask
    and targets over every SAE feature `[rows, d_sae]`, so that rows with different steering share the same
    operations and shapes (a CUDA graph replays them; a change of steering is a buffer write)."""

    def __init__(self, rows: int, d_model: int, sae: SAE | None, device: torch.device) -> None:
        self.sae = sae
        self.vectors = torch.zeros(rows, d_model, device=device)
        self.scaled = torch.zeros(rows, d_model, device=device)
        width = sae.d_sae if sae is not None else 0
        self.mask = torch.zeros(rows, width, device=device)
        self.targets = torch.zeros(rows, width, device=device)
        self.kinds = [(False, False)] * rows
        """Per row: (has scaled vectors, has clamps)."""

    @classmethod
    def of(cls, plans: Sequence[Plan | None], d_model: int, sae: SAE | None, device: torch.device) -> RowPlans:
        rows = cls(len(plans), d_model, sae, device)
        for row, plan in enumerate(plans):
            rows.set(row, plan)
        return rows

    def set(self, row: int, plan: Plan | None) -> None:
        """Steer `row` by `plan` (None: not at all)."""
        for t in (self.vectors, self.scaled, self.mask, self.targets):
            t[row] = 0
        self.kinds[row] = (False, False)
        if plan is None or plan.empty:
            return
        self.vectors[row] = plan.vector.to(self.vectors.device)
        if plan.scaled is not None:
            self.scaled[row] = plan.scaled.to(self.scaled.device)
        if len(plan.clamp_index):
            index = plan.clamp_index.to(self.mask.device)
            self.mask[row, index] = 1
            self.targets[row, index] = plan.clamp_target.to(self.mask.device)
        self.kinds[row] = (plan.scaled is not None, bool(len(plan.clamp_index)))

    def move(self, src: list[int], dst: list[int]) -> None:
        """Rows `src` become rows `dst` (in one go: a row may move where another one was)."""
        for t in (self.vectors, self.scaled, self.mask, self.targets):
            t[dst] = t[src]
        kinds = [self.kinds[i] for i in src]
        for i, kind in zip(dst, kinds, strict=True):
            self.kinds[i] = kind

    @property
    def any_clamps(self) -> bool:
        return any(clamped for _, clamped in self.kinds)

    @property
    def any_scaled(self) -> bool:
        return any(scaled for scaled, _ in self.kinds)

    def __call__(self, h: torch.Tensor, *, clamps: bool | None = None, scaled: bool | None = None) -> torch.Tensor:
        """The first `len(h)` rows of `h` (`[rows, d]`, or `[rows, positions, d]`) steered, each by its own plan.
        `clamps` / `scaled`: whether to compute those parts (by default, where any row has them; a CUDA graph
        fixes the choice when it is captured)."""
        n = h.shape[0]
        at = (slice(0, n), None) if h.ndim == 3 else (slice(0, n),)
        clamps = self.any_clamps if clamps is None else clamps
        scaled = self.any_scaled if scaled is None else scaled
        return steer(h, self.vectors[at], self.scaled[at] if scaled else None, self.sae,
                     Clamps(None, self.targets[at], self.mask[at]) if clamps else None)
