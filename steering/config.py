"""Typed configuration of the engine: every field has a default and a docstring."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .errors import TinymorphError

Device = Literal["auto", "cpu", "cuda"] | str
DType = Literal["auto", "float32", "bfloat16", "float16"]
Positions = Literal["all", "prompt", "generated"]

DTYPES = ("auto", "float32", "bfloat16", "float16")
POSITIONS = ("all", "prompt", "generated")


@dataclass
class EngineConfig:
    model: str = "default"
    """`default`, a local model folder, a `.gguf` file, or a Hugging Face model id (needs the hub)."""

    sae: str = "default"
    """`default` (the SAE shipped for the default model), `none`, or a path to an SAE folder or file."""

    device: Device = "auto"
    """`auto` picks CUDA when available, else the CPU; or any torch device string."""

    dtype: DType = "auto"
    """`auto` is bfloat16 on CUDA and float32 on the CPU."""

    sae_layer: int | None = None
    """Overrides the SAE's layer when its files do not say it (Gemma Scope `params.npz` outside `layer_N/`)."""

    layer: int | None = None
    """Hook layer for steering vectors when no SAE is loaded; defaults to the middle of the model."""

    trust_remote_code: bool = False
    """Run model code from the model's folder or repository; only when you trust it."""

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise TinymorphError(f"dtype must be one of {', '.join(DTYPES)}, not {self.dtype!r}.")
        if not self.model:
            raise TinymorphError("model must not be empty.")
        if self.sae_layer is not None and self.sae_layer < 0:
            raise TinymorphError(f"sae_layer must be >= 0, not {self.sae_layer}.")
        if self.layer is not None and self.layer < 0:
            raise TinymorphError(f"layer must be >= 0, not {self.layer}.")


@dataclass
class SamplingConfig:
    max_tokens: int = 64
    """Largest number of new tokens."""

    temperature: float = 0.0
    """0 decodes greedily; above 0 samples from the softened distribution."""

    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p."""

    seed: int | None = None
    """Seed for sampling; the same seed, prompt and steering give the same text."""

    stop: tuple[str, ...] = field(default_factory=tuple)
    """Stop before the first of these strings; it is not part of the output."""

    stop_at_eos: bool = True
    """End at the model's end-of-sequence token."""

    steer_positions: Positions = "all"
    """Where interventions apply: prompt and generated tokens, or only one of them."""

    def __post_init__(self) -> None:
        if self.max_tokens < 0:
            raise TinymorphError(f"max_tokens must be >= 0, not {self.max_tokens}.")
        if self.temperature < 0:
            raise TinymorphError(f"temperature must be >= 0, not {self.temperature}.")
        if not 0.0 < self.top_p <= 1.0:
            raise TinymorphError(f"top_p must be in (0, 1], not {self.top_p}.")
        if self.steer_positions not in POSITIONS:
            raise TinymorphError(f"steer_positions must be one of {', '.join(POSITIONS)}, not {self.steer_positions!r}.")
        self.stop = tuple(s for s in self.stop if s)
