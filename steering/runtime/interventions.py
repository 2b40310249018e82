"""Steering as data: a list of interventions applied together to the residual stream at the SAE's hook point.

- `add`:    h + strength * unit[f] along the feature's steering direction. With a DiffMean direction in the SAE's
            statistics (the mean residual where the feature fires minus where it does not; `steering.features.stats`), that
            direction, and unit[f] = its norm * `steer_scale[f]` (calibrated per feature by `tinymorph calibrate`)
            or * `DIFFMEAN_MULTIPLE`: the steering benchmark measured DiffMean carrying features into the text far
            more often than the decoder row at the same fluency. Without one, the seeds' rule (`row`);
- `row`:    the seeds' rule, h + strength * scale[f] * W_dec[f] / |W_dec[f]|, where scale[f] is the feature's
            `max_act` (times `steer_scale[f]` when calibrated) or, without statistics, the mean residual norm;
- `clamp`:  h + (c - f(h)) * W_dec[f], i.e. set feature f to c and keep the SAE's error term;
- `ablate`: clamp to 0;
- `vector`: h + strength * v for a raw vector v of the residual's size (contrastive steering vectors).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from steering.errors import SteeringSpecError
from steering.sae.autoencoder import SAE

MODES = ("add", "row", "clamp", "ablate", "vector")
"""Every steering mode."""
FEATURE_MODES = tuple(m for m in MODES if m != "vector")
"""The modes that act on one SAE feature (the ones a steering set can hold by feature index)."""


@dataclass(frozen=True)
class Intervention:
    """One change to the residual stream."""

    mode: str
    """`add`, `clamp`, `ablate` or `vector`."""
    feature: int | None = None
    """The SAE feature (all modes but `vector`)."""
    strength: float = 1.0
    """Multiplier for `add`, `row` and `vector`."""
    value: float = 0.0
    """Target activation for `clamp`."""
    vector: torch.Tensor | None = field(default=None, compare=False, repr=False)
    """The raw direction for `vector`, of the residual's size."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise SteeringSpecError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}.")
        if self.mode == "vector":
            if self.vector is None or self.vector.ndim != 1:
                raise SteeringSpecError("A vector intervention needs a 1-D vector.")
        elif not isinstance(self.feature, int) or isinstance(self.feature, bool) or self.feature < 0:
            raise SteeringSpecError(f"feature must be a whole number >= 0 for {self.mode}, not {self.feature!r}.")
        for name in ("strength", "value"):
            number = getattr(self, name)
            if isinstance(number, bool) or not isinstance(number, int | float) or not math.isfinite(number):
                raise SteeringSpecError(f"{name} must be a finite number, not {number!r}.")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Intervention:
        """The intervention `to_dict` describes (a feature mode: `vector` needs the vector itself). Keys it does
        not know are ignored; a bad value raises SteeringSpecError naming it."""
        mode = data.get("mode", "add")
        if mode == "vector":
            raise SteeringSpecError("A vector intervention cannot be read from a description; it needs the vector.")
        fields = {k: data[k] for k in ("feature", "strength", "value") if k in data}
        return cls(mode, **fields)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mode": self.mode}
        if self.feature is not None:
            out["feature"] = self.feature
        if self.mode in ("add", "row", "vector"):
            out["strength"] = self.strength
        if self.mode == "clamp":
            out["value"] = self.value
        return out

    def describe(self, label: str = "") -> str:
        """In words, for people: `12 (rain) +4`, `12 (rain) clamped at 2`, `12 (rain) off`, `vector +3`."""
        name = "vector" if self.mode == "vector" else f"{self.feature}" + (f" ({label})" if label else "")
        if self.mode == "ablate":
            return f"{name} off"
        if self.mode == "clamp":
            return f"{name} clamped at {self.value:g}"
        if self.mode == "row":
            return f"{name} {self.strength:+g} along its decoder row"
        return f"{name} {self.strength:+g}"

    def __str__(self) -> str:
        """The CLI's steering spec (`parse_steer` reads it back): `12=+4`, `12=clamp:2`, `12=off`."""
        if self.mode == "add":
            return f"{self.feature}={self.strength:+g}"
        if self.mode == "row":
            return f"{self.feature}=row:{self.strength:+g}"
        if self.mode == "clamp":
            return f"{self.feature}=clamp:{self.value:g}"
        if self.mode == "ablate":
            return f"{self.feature}=off"
        return f"vector={self.strength:+g}"


_SPEC = re.compile(r"^\s*(\d+)\s*=\s*(.+?)\s*$")
SPEC_HELP = "F=+S (add), F=-S, F=row:+S (add along the decoder row), F=clamp:C, F=off (ablate), e.g. 1234=+1"


def parse_steer(spec: str) -> Intervention:
    """Parse a CLI steering spec: `F=+S`, `F=-S`, `F=S`, `F=clamp:C`, `F=off`."""
    match = _SPEC.match(spec)
    if not match:
        raise SteeringSpecError(f"Cannot parse steering spec {spec!r}: expected {SPEC_HELP}.")
    feature, rhs = int(match.group(1)), match.group(2).lower()
    if rhs in ("off", "ablate", "0x"):
        return Intervention("ablate", feature)
    try:
        if rhs.startswith("clamp:"):
            return Intervention("clamp", feature, value=float(rhs.removeprefix("clamp:")))
        if rhs.startswith("row:"):
            return Intervention("row", feature, strength=float(rhs.removeprefix("row:")))
        return Intervention("add", feature, strength=float(rhs))
    except ValueError:
        raise SteeringSpecError(f"Cannot parse steering spec {spec!r}: expected {SPEC_HELP}.") from None


DIFFMEAN_MULTIPLE = 1.5
"""Strength 1 of `add` along a DiffMean direction, in units of the direction's own norm, for a feature without a
calibration of its own: the multiple at which the steering benchmark's features carried into the text while the text
stayed as fluent as human prose under the same model (with the repetition penalty the editor uses)."""


def diffmean_unit(sae: SAE, feature: int) -> torch.Tensor | None:
    """What strength 1 of `add` adds for `feature` when the SAE has its DiffMean direction (None otherwise)."""
    directions = sae.diffmean
    if directions is None:
        return None
    vector = directions[feature].float()
    if not bool(vector.any()):
        return None
    return vector * (sae.steer_multiple(feature) or DIFFMEAN_MULTIPLE)


def vector_digest(vector: torch.Tensor) -> str:
    """A short identity of a steering vector's values (wherever the tensor lives)."""
    return hashlib.sha1(vector.detach().float().cpu().numpy().tobytes()).hexdigest()


class SteeringHook:
    """The residual function that applies a steering set; `active` switches it per decode phase."""

    def __init__(
        self,
        interventions: Sequence[Intervention],
        sae: SAE | None,
        d_model: int,
        fallback_scale: float | None,
    ) -> None:
        self.active = True
        self.sae = sae
        self.d_model = d_model
        self.vector = torch.zeros(d_model, dtype=torch.float32)
        self.per_token: list[tuple[int, float]] = []  # add under per-token input normalisation
        self.clamps: dict[int, float] = {}
        for item in interventions:
            if item.mode == "vector":
                assert item.vector is not None
                if item.vector.shape[0] != d_model:
                    raise SteeringSpecError(
                        f"The steering vector has size {item.vector.shape[0]}, the residual stream {d_model}."
                    )
                self.vector += item.strength * item.vector.detach().float().cpu()
                continue
            if sae is None:
                raise SteeringSpecError(f"Feature steering ({item}) needs an SAE; none is loaded.")
            feature = sae.check_feature(item.feature)  # type: ignore[arg-type]
            along = diffmean_unit(sae, feature) if item.mode == "add" else None
            if along is not None:
                self.vector += item.strength * along.cpu()
                continue
            if item.mode in ("add", "row"):
                if sae.max_act is None and fallback_scale is None:
                    raise SteeringSpecError("add steering needs max_act statistics or a fallback scale.")
                scale = float(sae.max_act[feature]) if sae.max_act is not None else float(fallback_scale or 0.0)
                if item.mode == "add":
                    scale *= sae.steer_multiple(feature) or 1.0
                if sae.max_act is not None and sae.normalize_activations == "constant_norm_rescale":
                    self.per_token.append((feature, item.strength * scale))
                    continue
                if sae.max_act is not None:
                    s = sae.input_scale(torch.ones(1, d_model))
                    scale = scale / float(s) if isinstance(s, float) else scale
                self.vector += item.strength * scale * sae.direction(feature).cpu()
            else:
                self.clamps[feature] = item.value if item.mode == "clamp" else 0.0
        self.empty = not (self.vector.any() or self.per_token or self.clamps)

    def __call__(self, h: torch.Tensor) -> torch.Tensor | None:
        if not self.active or self.empty:
            return None
        self.vector = self.vector.to(h.device)
        out = h.float() + self.vector
        sae = self.sae
        if sae is not None and (self.per_token or self.clamps):
            out = out.to(sae.device)  # a spread model's hooked block may compute elsewhere than the SAE was put
            scale = sae.input_scale(out.to(sae.dtype))
            scale_f = scale.float() if isinstance(scale, torch.Tensor) else scale
            for feature, amount in self.per_token:
                out = out + amount * sae.direction(feature) / scale_f
            if self.clamps:
                acts = sae.encode(out.to(sae.dtype)).float()
                idx = torch.tensor(list(self.clamps), device=sae.device)
                targets = torch.tensor(list(self.clamps.values()), device=sae.device)
                delta = (targets - acts[..., idx]) @ sae.W_dec[idx].float()
                out = out + delta / scale_f
        return out.to(h.device, h.dtype)
