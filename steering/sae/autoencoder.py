"""Sparse autoencoders: four architectures (standard, gated, JumpReLU, TopK) in one class, over one hook point of the
residual stream. `SAE.save` writes the SAELens layout (and our per-feature statistics beside it), so SAEs made here
load in SAELens; reading every layout is `steering.sae.layouts`."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from steering.atomic import replacing
from steering.config import SITES
from steering.errors import FeatureIndexError, SAELoadError

from .codes import nonzeros

ARCHITECTURES = ("standard", "gated", "jumprelu", "topk")
NORMALIZATIONS = ("none", "expected_average_only_in", "constant_norm_rescale")

SAELENS_CFG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
FEATURE_STATS = "feature_stats.safetensors"
"""Our per-feature statistics, beside the weights (`FEATURE_STAT_NAMES`, `FEATURE_DIRECTION_NAMES`)."""

FEATURE_STAT_NAMES = ("max_act", "frequency", "mean_act", "punct_share", "early_share", "steer_scale",
                      "steerability")
"""Per-feature numbers `[d_sae]` kept in feature_stats.safetensors: max activation; firing rate; mean activation
where it fires; share of its activation on tokens of punctuation or white space alone; share on the first few
positions of a text; calibrated `add` multiple (0: not calibrated); steerability, the share of calibration prompts
on which Amplify carried the feature while the text stayed fluent (-1: not measured). Other names in the file are
ignored."""
FEATURE_DIRECTION_NAMES = ("diffmean",)
"""Per-feature directions `[d_sae, d_in]` kept there too (in half precision)."""

_HOOK_RE = re.compile(r"^blocks\.(\d+)\.hook_(resid_pre|resid_post)$")


@dataclass(frozen=True)
class HookPoint:
    """A place in the residual stream: the input (`resid_pre`) or output (`resid_post`) of block `layer`."""

    layer: int
    site: str = "resid_post"

    def __post_init__(self) -> None:
        if self.site not in SITES:
            raise SAELoadError(f"Unsupported hook site {self.site!r}: tinymorph reads {' or '.join(SITES)}.")
        if self.layer < 0:
            raise SAELoadError(f"Hook layer must be >= 0, not {self.layer}.")

    @property
    def name(self) -> str:
        """The TransformerLens-style name SAELens uses, e.g. `blocks.8.hook_resid_post`."""
        return f"blocks.{self.layer}.hook_{self.site}"

    @classmethod
    def parse(cls, name: str) -> HookPoint:
        match = _HOOK_RE.match(name.strip())
        if not match:
            raise SAELoadError(
                f"Unsupported hook {name!r}: tinymorph reads the residual stream, blocks.L.hook_resid_pre or "
                "blocks.L.hook_resid_post."
            )
        return cls(int(match.group(1)), match.group(2))

    def __str__(self) -> str:
        return self.name


class SAE(nn.Module):
    """A sparse autoencoder over one hook point of the residual stream.

    `encode` maps `[..., d_in]` to `[..., d_sae]`, `decode` maps back. Input normalisation (`constant_norm_rescale`,
    `expected_average_only_in` with a known factor) is applied inside `encode`; `reconstruct` undoes it.
    """

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        architecture: str = "topk",
        *,
        k: int | None = None,
        hook: HookPoint | None = None,
        apply_b_dec_to_input: bool = True,
        normalize_activations: str = "none",
        norm_scaling_factor: float | None = None,
        metadata: dict[str, Any] | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise SAELoadError(f"Unknown SAE architecture {architecture!r}: known ones are {', '.join(ARCHITECTURES)}.")
        if normalize_activations not in NORMALIZATIONS:
            raise SAELoadError(
                f"Unsupported normalize_activations {normalize_activations!r}: tinymorph supports "
                f"{', '.join(NORMALIZATIONS)}."
            )
        if architecture == "topk" and (k is None or not 0 < k <= d_sae):
            raise SAELoadError(f"A TopK SAE needs 0 < k <= d_sae ({d_sae}); got k={k}.")
        if d_in <= 0 or d_sae <= 0:
            raise SAELoadError(f"SAE sizes must be positive: d_in={d_in}, d_sae={d_sae}.")
        self.d_in = d_in
        self.d_sae = d_sae
        self.architecture = architecture
        self.k = k
        self.hook = hook
        self.apply_b_dec_to_input = apply_b_dec_to_input
        self.normalize_activations = normalize_activations
        self.norm_scaling_factor = norm_scaling_factor
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.layout = "memory"
        self.source = ""

        def param(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.zeros(*shape, dtype=dtype, device=device), requires_grad=False)

        self.W_enc = param(d_in, d_sae)
        self.W_dec = param(d_sae, d_in)
        self.b_dec = param(d_in)
        if architecture == "gated":
            self.b_gate = param(d_sae)
            self.b_mag = param(d_sae)
            self.r_mag = param(d_sae)
        else:
            self.b_enc = param(d_sae)
        if architecture == "jumprelu":
            self.threshold = param(d_sae)
        self.stats: dict[str, torch.Tensor] = {}
        """Per-feature statistics over a corpus (`FEATURE_STAT_NAMES`), kept in feature_stats.safetensors."""

    def stats_bytes(self) -> bytes:
        """The per-feature statistics as the contents of feature_stats.safetensors (float32)."""
        from safetensors.torch import save

        return save({n: t.detach().to("cpu", torch.float16 if n in FEATURE_DIRECTION_NAMES else torch.float32)
                     .contiguous() for n, t in self.stats.items()})

    @property
    def max_act(self) -> torch.Tensor | None:
        """The largest activation seen: the unit of `add` steering."""
        return self.stats.get("max_act")

    @property
    def frequency(self) -> torch.Tensor | None:
        """The share of tokens on which the feature fires."""
        return self.stats.get("frequency")

    def steer_multiple(self, feature: int) -> float | None:
        """The feature's calibrated `add` multiple (`steering.evaluation.calibrate`), or None when it has none."""
        scale = self.stats.get("steer_scale")
        value = float(scale[feature]) if scale is not None else 0.0
        return value if value > 0 else None

    def steerability(self, feature: int) -> float | None:
        """The share of calibration prompts on which Amplify carried the feature fluently (`evaluation.calibrate`),
        or None when it was not measured."""
        measured = self.stats.get("steerability")
        value = float(measured[feature]) if measured is not None else -1.0
        return value if value >= 0 else None

    def calibrated_count(self) -> int:
        """How many features have a calibrated `add` multiple."""
        scale = self.stats.get("steer_scale")
        return int((scale > 0).sum()) if scale is not None else 0

    @property
    def diffmean(self) -> torch.Tensor | None:
        """`[d_sae, d_in]`: the mean residual where each feature fires minus where it does not (`steering.features.stats`)."""
        return self.stats.get("diffmean")

    # ----------------------------------------------------------------------------------------------- weights
    def weight_names(self) -> list[str]:
        names = ["W_enc", "W_dec", "b_dec"]
        names += ["b_gate", "b_mag", "r_mag"] if self.architecture == "gated" else ["b_enc"]
        if self.architecture == "jumprelu":
            names.append("threshold")
        return names

    def load_weights(self, weights: dict[str, torch.Tensor], where: str) -> None:
        """Copy named tensors in, checking every name and shape; the message names the file."""
        shapes = {"W_enc": (self.d_in, self.d_sae), "W_dec": (self.d_sae, self.d_in), "b_dec": (self.d_in,)}
        for name in self.weight_names():
            expected = shapes.get(name, (self.d_sae,))
            if name not in weights:
                raise SAELoadError(f"{where} has no tensor {name!r}, which a {self.architecture} SAE needs.")
            value = weights[name]
            if tuple(value.shape) != expected:
                raise SAELoadError(f"{where}: {name} has shape {list(value.shape)}, expected {list(expected)}.")
            if not torch.isfinite(value.float()).all():
                raise SAELoadError(f"{where}: {name} holds NaN or infinite values.")
            getattr(self, name).data.copy_(value.to(self.W_enc.dtype))

    def set_feature_stats(self, max_act: torch.Tensor | None = None, frequency: torch.Tensor | None = None,
                          **more: torch.Tensor | None) -> None:
        """Per-feature statistics (`FEATURE_STAT_NAMES`): `max_act` scales `add` steering, `frequency` is the firing
        rate, the others rank a span's features by how specific they are (`steering.features.ranking`); `diffmean`
        (`FEATURE_DIRECTION_NAMES`) holds a steering direction per feature. Replaces them all."""
        given = {"max_act": max_act, "frequency": frequency, **more}
        stats = {}
        for name, value in given.items():
            if value is None or name not in FEATURE_STAT_NAMES + FEATURE_DIRECTION_NAMES:
                continue
            shape = (self.d_sae, self.d_in) if name in FEATURE_DIRECTION_NAMES else (self.d_sae,)
            if tuple(value.shape) != shape:
                raise SAELoadError(f"{name} has shape {list(value.shape)}, expected {list(shape)}.")
            if not torch.isfinite(value).all():
                raise SAELoadError(f"{name} holds NaN or infinite values.")
            stats[name] = value.detach().float().to(self.W_dec.device)
        self.stats = stats

    @property
    def device(self) -> torch.device:
        return self.W_dec.device

    @property
    def dtype(self) -> torch.dtype:
        return self.W_dec.dtype

    def check_feature(self, feature: int) -> int:
        if not isinstance(feature, int) or isinstance(feature, bool) or not 0 <= feature < self.d_sae:
            raise FeatureIndexError(f"Feature {feature} is out of range: this SAE has features 0 to {self.d_sae - 1}.")
        return feature

    # ----------------------------------------------------------------------------------------------- maths
    def input_scale(self, x: torch.Tensor) -> torch.Tensor | float:
        """The factor s with which the SAE sees `x * s`; 1 without normalisation."""
        if self.normalize_activations == "constant_norm_rescale":
            return math.sqrt(self.d_in) / x.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        if self.normalize_activations == "expected_average_only_in" and self.norm_scaling_factor:
            return float(self.norm_scaling_factor)
        return 1.0

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder pre-activations (the magnitude path for gated SAEs)."""
        x = x.to(self.dtype) * self.input_scale(x.to(self.dtype))
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        if self.architecture == "gated":
            return x @ (self.W_enc * self.r_mag.exp()) + self.b_mag
        if x.dim() == 2:
            return torch.addmm(self.b_enc, x, self.W_enc)
        return x @ self.W_enc + self.b_enc

    def encode_sparse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The nonzero activations of residual rows `x` `[n, d_in]`: `(indices, values)`, both `[n, m]`, m the most
        nonzeros a row has (a row with fewer pads with value 0). A TopK SAE gives them straight from its top k,
        without the dense `[n, d_sae]` code (which costs more to build than the encoder's matmul)."""
        self._check_input(x)
        if self.architecture == "topk":
            assert self.k is not None
            top = self.pre_acts(x).topk(self.k, dim=-1)
            return top.indices, torch.relu(top.values)
        return nonzeros(self.encode(x))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations `[..., d_sae]` of residual vectors `[..., d_in]`."""
        self._check_input(x)
        pre = self.pre_acts(x)
        if self.architecture == "standard":
            return torch.relu(pre)
        if self.architecture == "jumprelu":
            return torch.relu(pre) * (pre > self.threshold)
        if self.architecture == "topk":
            assert self.k is not None
            top = pre.topk(self.k, dim=-1)
            return torch.zeros_like(pre).scatter_(-1, top.indices, torch.relu(top.values))
        # gated
        xs = x.to(self.dtype) * self.input_scale(x.to(self.dtype))
        if self.apply_b_dec_to_input:
            xs = xs - self.b_dec
        gate = (xs @ self.W_enc + self.b_gate) > 0
        return torch.relu(pre) * gate

    def decode(self, features: torch.Tensor, scale: torch.Tensor | float | None = None) -> torch.Tensor:
        """Reconstruction from features; pass `scale=input_scale(x)` to return to the model's space."""
        out = features.to(self.dtype) @ self.W_dec + self.b_dec
        return out if scale is None else out / scale

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """`decode(encode(x))` in the model's space."""
        return self.decode(self.encode(x), scale=self.input_scale(x.to(self.dtype))).to(x.dtype)

    def direction(self, feature: int) -> torch.Tensor:
        """The unit-norm decoder row of a feature (the direction `add` steering moves along)."""
        row = self.W_dec[self.check_feature(feature)].float()
        return row / row.norm().clamp_min(1e-12)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.d_in:
            raise SAELoadError(f"The SAE reads vectors of size {self.d_in}; got size {x.shape[-1]}.")

    # ----------------------------------------------------------------------------------------------- saving
    def config_dict(self) -> dict[str, Any]:
        """SAELens v6 config (plus pre-6 keys older loaders read)."""
        meta = {k: v for k, v in self.metadata.items() if k != "tinymorph"}
        if self.hook is not None:
            meta["hook_name"] = self.hook.name
            meta["hook_layer"] = self.hook.layer
        cfg: dict[str, Any] = {
            "architecture": self.architecture,
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": "cpu",
            "apply_b_dec_to_input": self.apply_b_dec_to_input,
            "normalize_activations": self.normalize_activations,
            "reshape_activations": "none",
            "metadata": meta,
        }
        if self.hook is not None:
            cfg["hook_name"] = self.hook.name
            cfg["hook_layer"] = self.hook.layer
        if self.architecture == "topk":
            cfg["k"] = self.k
        if self.norm_scaling_factor is not None:
            cfg["norm_scaling_factor"] = self.norm_scaling_factor
        if "tinymorph" in self.metadata:
            cfg["tinymorph"] = self.metadata["tinymorph"]
        return cfg

    def save(self, folder: str | Path, *, dtype: torch.dtype | None = None, overwrite: bool = False,
             extra: dict[str, bytes] | None = None) -> Path:
        """Write the SAELens layout to `folder` atomically (a temporary folder renamed into place).

        `extra` adds files beside the weights (labels.json, training curves) in the same atomic step.
        """
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise SAELoadError(f"{folder} exists and is not a folder; refusing to replace it.")
        if folder.exists() and not overwrite and any(folder.iterdir()):
            raise SAELoadError(f"{folder} already exists and is not empty; refusing to overwrite it.")
        with replacing(folder) as tmp:
            tmp.mkdir()
            out_dtype = dtype or self.dtype
            tensors = {n: getattr(self, n).detach().to("cpu", out_dtype).contiguous() for n in self.weight_names()}
            save_file(tensors, str(tmp / SAELENS_WEIGHTS))
            cfg = self.config_dict()
            cfg["dtype"] = str(out_dtype).removeprefix("torch.")
            (tmp / SAELENS_CFG).write_text(json.dumps(cfg, indent=2) + "\n")
            if self.stats:
                (tmp / FEATURE_STATS).write_bytes(self.stats_bytes())
            for name, data in (extra or {}).items():
                (tmp / name).write_bytes(data)
        return folder
