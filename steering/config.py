"""Typed configuration of the engine, of sampling and of SAE training: every field has a default and a docstring.
The CLI builds its flags and their help from the fields (`add_arguments`, `from_arguments`), and the language
server takes the engine's defaults and descriptions from `EngineConfig` (`field_docs`)."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import itertools
import math
import textwrap
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import TinymorphError, TrainError

Device = Literal["auto", "cpu", "cuda"] | str
DType = Literal["auto", "float32", "bfloat16", "float16"]
Positions = Literal["all", "prompt", "generated"]

DTYPES = ("auto", "float32", "bfloat16", "float16")
POSITIONS = ("all", "prompt", "generated")
STEERED_REPETITION_PENALTY = 1.15
"""The repetition penalty of the editor's and the CLI's generations: steering strong enough to carry a feature into
a small model's greedy text otherwise makes it loop on the feature's word (benchmarks/bench_steering.py)."""
TRAIN_ARCHS = ("topk", "relu", "jumprelu")
SITES = ("resid_post", "resid_pre")
"""Hook sites in the residual stream an SAE can read: the output of a block or its input."""


@dataclass
class EngineConfig:
    model: str = "default"
    """`default` (SmolLM2-135M-Instruct), a local model folder, a `.gguf` file or a Hugging Face hub id."""

    sae: str = "default"
    """`default` (the SAE shipped for the default model), an SAE folder or file (SAELens, sparsify or Gemma Scope),
    a SAELens name `RELEASE/ID` found in the local Hugging Face cache, or `none`."""

    device: Device = "auto"
    """`auto` (CUDA when available, else the CPU), `cpu` or `cuda`; the command line and the Python API also take
    any torch device, such as `cuda:1`."""

    dtype: DType = "auto"
    """`auto` (bfloat16 on CUDA and on CPUs that compute it natively, else float32), `float32`, `bfloat16` or
    `float16`."""

    sae_layer: int | None = None
    """The SAE's layer when its files do not say it (Gemma Scope `params.npz` outside a `layer_N` folder)."""

    layer: int | None = None
    """Layer of vector steering when no SAE is loaded (default: the middle of the model)."""

    trust_remote_code: bool = False
    """Run the code that comes with the model (in its folder or hub repository); only for models you trust."""

    device_map: str | None = None
    """`auto`: accelerate spreads a model too big for one device over the GPUs, the CPU and the disk."""

    max_memory: str | None = None
    """With `device_map`: memory per device, like `0=20GiB,cpu=64GiB`."""

    offload_folder: str | None = None
    """With `device_map`: the folder for the weights that fit nowhere else."""

    fast: bool = True
    """Run the model families of the fast path (the Llama layout: `steering.fast.family`) on tinymorph's own
    forward; off, every model runs the transformers forward."""

    int8: bool = True
    """On the fast path on a CPU in bfloat16, decode with int8 copies of the weights (per-channel scales): twice the
    speed, held-out CE within 0.001 nats (`benchmarks/bench_engine.py`)."""

    int4: bool = True
    """With `int8`, weights the model stored in 4-bit blocks (a Q4 GGUF's, such as the default model's) decode from
    4-bit copies, which hold them exactly: 15 % faster steps on the default model, held-out CE +0.002 nats
    (`benchmarks/bench_decode.py`); other weights keep their int8 copies."""

    cache_mb: int = 768
    """Memory for the fast path's cache of open documents, in MiB (least recently used dropped first); what lets a
    completion read only what was typed since the last one. A 2,000-token document of the default model on a CPU
    takes about 120 MiB."""

    def __post_init__(self) -> None:
        if self.cache_mb < 0:
            raise TinymorphError(f"cache_mb must be >= 0, not {self.cache_mb}.")
        if self.dtype not in DTYPES:
            raise TinymorphError(f"dtype must be one of {', '.join(DTYPES)}, not {self.dtype!r}.")
        if not self.model:
            raise TinymorphError("model must not be empty.")
        if self.sae_layer is not None and self.sae_layer < 0:
            raise TinymorphError(f"sae_layer must be >= 0, not {self.sae_layer}.")
        if self.layer is not None and self.layer < 0:
            raise TinymorphError(f"layer must be >= 0, not {self.layer}.")


@dataclass(frozen=True)
class Guidance:
    """How the decode loop carries an amplified feature (`add`) into the text while it stays fluent: each step it
    reads, with the SAE, the feature on the most likely next tokens and prefers one on which it fires; once the
    feature has fired often enough it eases off. The layers below the SAE's hook never see steering, so this reading
    is the one the clean model makes of the same text. A suppressed feature (`add` below 0) is avoided the same way.
    Chosen on the steering benchmark (`benchmarks/bench_steering.py`)."""

    candidates: int = 4
    """Most likely next tokens read each step (4 or fewer run as one int8 pass on a CPU)."""

    bonus: float = 6.0
    """Log-probability (nats) added to a candidate on which an amplified feature fires (taken from it for a
    suppressed one)."""

    eased_bonus: float = 1.0
    """The bonus once the feature has fired on `enough` of the generated tokens."""

    enough: float = 0.35
    """The share of generated tokens on which an amplified feature fired, from which steering eases off."""

    vector_share: float = 0.75
    """The share of `add`'s steering vector applied (guidance does the rest) for a feature without a calibrated
    strength of its own."""

    eased_vector: float = 1 / 3
    """The share of the feature's vector kept once it eased off."""

    repeats: int = 8
    """A candidate that repeats one of the last `repeats` tokens taken earns no bonus for an amplified feature (it
    still costs for a suppressed one): the feature's word again is a loop (`ship ship ship`), not more of the
    feature; a function word or punctuation repeated keeps it (`runtime.guidance.joining`). 0 gives the bonus to
    repeats too."""

    def __post_init__(self) -> None:
        for name in ("candidates", "repeats"):
            if getattr(self, name) < 0:
                raise TinymorphError(f"{name} must be >= 0, not {getattr(self, name)}.")
        for name in ("bonus", "eased_bonus", "enough", "vector_share", "eased_vector"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise TinymorphError(f"{name} must be a finite number >= 0, not {value}.")


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

    repetition_penalty: float = 1.0
    """CTRL's penalty on tokens already generated (1 is off; 1.15 keeps steered text from looping)."""

    guidance: Guidance | None = field(default_factory=Guidance)
    """How amplified and suppressed features are carried into the text (`Guidance`); None steers with their vector
    alone, at every step alike."""

    def __post_init__(self) -> None:
        if self.max_tokens < 0:
            raise TinymorphError(f"max_tokens must be >= 0, not {self.max_tokens}.")
        if self.temperature < 0:
            raise TinymorphError(f"temperature must be >= 0, not {self.temperature}.")
        if not 0.0 < self.top_p <= 1.0:
            raise TinymorphError(f"top_p must be in (0, 1], not {self.top_p}.")
        if not math.isfinite(self.repetition_penalty) or self.repetition_penalty < 1.0:
            raise TinymorphError(f"repetition_penalty must be a finite number >= 1, not {self.repetition_penalty}.")
        if self.steer_positions not in POSITIONS:
            raise TinymorphError(f"steer_positions must be one of {', '.join(POSITIONS)}, not {self.steer_positions!r}.")
        self.stop = tuple(s for s in self.stop if s)


@dataclass
class TrainConfig:
    layer: int = 0
    """Block whose residual stream the SAE reads."""
    site: str = "resid_post"
    """`resid_post` (output of the block) or `resid_pre` (its input)."""
    arch: str = "topk"
    """`topk` (with AuxK), `relu` (L1 weighted by decoder norms) or `jumprelu` (straight-through threshold)."""
    k: int = 32
    """Active latents per token for TopK."""
    expansion: int = 8
    """d_sae = expansion * d_in."""
    tokens: int = 1_000_000
    """Activations to train on (all ranks together)."""
    context: int = 128
    """Tokens per sequence fed to the model."""
    batch_size: int = 4096
    """Activations per optimiser step (all ranks together)."""
    model_batch: int = 8
    """Sequences per model forward pass."""
    buffer_size: int = 65_536
    """Activations held in the shuffle buffer per rank; memory = buffer_size * d_in * 4 bytes."""
    lr: float | None = None
    """Adam learning rate; default 2e-4 / sqrt(d_sae / 2**14) (TopK), 5e-4 otherwise."""
    sparsity: float | None = None
    """L1 coefficient (relu, default 5e-3) or L0 coefficient (jumprelu, default 2e-3)."""
    aux_coefficient: float = 1 / 32
    """Weight of the AuxK loss (TopK)."""
    dead_tokens: int = 200_000
    """A latent is dead after this many training tokens without firing (AuxK revives dead latents)."""
    warmup_fraction: float = 0.05
    """Share of steps with a linear learning-rate (and sparsity-coefficient) warm-up."""
    decay_fraction: float = 0.2
    """Share of final steps over which the learning rate decays linearly to 0."""
    seed: int = 0
    """Seed for initialisation and shuffling."""
    stats_tokens: int = 100_000
    """Tokens of the corpus read after training for max_act, frequency and top contexts."""
    top_contexts: int = 32
    """Top activating contexts read per feature to label it in words (labels.json keeps the first 8)."""
    allow_repeat: bool = False
    """Cycle the corpus when it holds fewer tokens than requested (otherwise that is an error)."""
    log_every: int = 10
    """Steps between progress updates and history points."""

    def __post_init__(self) -> None:
        if self.arch not in TRAIN_ARCHS:
            raise TrainError(f"--arch must be one of {', '.join(TRAIN_ARCHS)}, not {self.arch!r}.")
        if self.site not in SITES:
            raise TrainError(f"--site must be one of {', '.join(SITES)}, not {self.site!r}.")
        for name in ("k", "expansion", "tokens", "context", "batch_size", "model_batch", "buffer_size"):
            if getattr(self, name) <= 0:
                raise TrainError(f"{name} must be positive, not {getattr(self, name)}.")
        if self.layer < 0:
            raise TrainError(f"layer must be >= 0, not {self.layer}.")
        if self.context < 2:
            raise TrainError("context must be at least 2 tokens (the first position is left out).")
        if self.buffer_size < self.batch_size:
            raise TrainError(f"buffer_size ({self.buffer_size}) must be at least batch_size ({self.batch_size}).")


# ------------------------------------------------------------------------------------------------ CLI flags
@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of dataclass `cls` (read from its source, as simple_parsing does)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, after in itertools.pairwise(body):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr) \
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


CHOICES = {"arch": TRAIN_ARCHS, "site": SITES, "device_map": ("auto",)}
"""Fields typed `str` whose flag takes one of a fixed set of values (a `Literal` field's values are its choices)."""


def _flag_type(hint: Any) -> tuple[type, tuple[Any, ...] | None]:
    """(type, choices) of the flag of a field typed `hint`: `int`, `float` or `str`, a `Literal` (its values are the
    choices) or `Literal[...] | str` (any string), each optionally `| None`."""
    options = [hint]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
    if str in options:
        return str, None
    if len(options) == 1 and options[0] in (int, float, str):
        return options[0], None
    if len(options) == 1 and typing.get_origin(options[0]) is Literal:
        values = typing.get_args(options[0])
        return type(values[0]), values
    raise TypeError(f"no CLI flag for type {hint}")


def add_arguments(parser: argparse.ArgumentParser | Any, cls: type, *, skip: tuple[str, ...] = (),
                  required: tuple[str, ...] = ()) -> None:
    """One `--flag` per field of dataclass `cls` (`--x/--no-x` for a boolean that defaults to true): its type,
    choices, default and help come from the field."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = docs.get(f.name, "").replace("%", "%%")
        if hints[f.name] is bool:
            action = argparse.BooleanOptionalAction if f.default else "store_true"
            parser.add_argument(flag, action=action, default=f.default, help=help_text)
            continue
        try:
            caster, choices = _flag_type(hints[f.name])
        except TypeError as exc:
            raise TypeError(f"{cls.__name__}.{f.name}: {exc}") from None
        if f.name in required:
            parser.add_argument(flag, type=caster, required=True, choices=choices, help=help_text)
            continue
        shown = "" if f.default is None else f" (default {f.default:,})" if isinstance(f.default, int) else \
            f" (default {f.default:g})" if isinstance(f.default, float) else f" (default `{f.default}`)"
        parser.add_argument(flag, type=caster, default=f.default, choices=CHOICES.get(f.name, choices),
                            help=help_text + shown.replace("%", "%%"))


def from_arguments(cls: type, args: argparse.Namespace, **extra: Any) -> Any:
    """An instance of dataclass `cls` from the flags `add_arguments` made (and `extra`)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**{**values, **extra})
