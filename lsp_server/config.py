"""The server's settings: one typed dataclass, camelCase on the wire, converted and checked in one place.

Settings come from `initializationOptions` and from the `tinymorph` section of `workspace/configuration` (or the
payload of `workspace/didChangeConfiguration` when the client cannot be asked). A bad value is reported by key and
replaced by its default; the other settings still apply.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from steering.config import DTYPES, STEERED_REPETITION_PENALTY, EngineConfig, field_docs
from steering.spans import GRANULARITIES

DEVICES = ("auto", "cpu", "cuda")


CLIENT_SIDE = frozenset({"server"})
"""Keys of the `tinymorph` section that configure an editor's client (how to start the server), not the server."""


def _doc(text: str, **kw: Any) -> Any:
    return field(metadata={"doc": text}, **kw)


def _engine(name: str, also: str = "") -> Any:
    """A setting that is the `EngineConfig` field `name`: its default and description are the engine's (`also` adds
    what holds in the server)."""
    default = next(f.default for f in dataclasses.fields(EngineConfig) if f.name == name)
    return field(default=default, metadata={"doc": " ".join(filter(None, (field_docs(EngineConfig)[name], also))),
                                            "engine": True})


@dataclass(frozen=True)
class Settings:
    """Everything a user can set. Every field has a default; `doc` in its metadata (the engine's own, for the settings
    that are EngineConfig fields) feeds the README table and the VS Code settings."""

    model: str = _engine("model")
    sae: str = _engine("sae")
    device: str = _engine("device")
    dtype: str = _engine("dtype")
    trust_remote_code: bool = _engine("trust_remote_code", "The server asks you first, once per model and session; "
                                                          "no answer means no.")
    hint_granularity: str = _doc("Where feature hints go: after each `paragraph`, `sentence` or `line`.",
                                 default="paragraph")
    hint_count: int = _doc("Features shown in each hint (0 turns feature hints off).", default=3)
    suggestion: bool = _doc("Show a steered continuation as a hint after the last edit.", default=True)
    max_tokens: int = _doc("Tokens per suggestion, completion or rewrite.", default=24)
    temperature: float = _doc("Sampling temperature; 0 is greedy.", default=0.0)
    debounce_ms: int = _doc("Quiet time after an edit before the model reads the document; while you type it "
                            "follows your rhythm (1.5 times the time between keystrokes, from half to twice this).",
                            default=300)
    filetypes: tuple[str, ...] = _doc("Language ids the server annotates.", default=("markdown", "plaintext"))
    amplify_strength: float = _doc("Strength of the Amplify action and of steering from a hint, in the feature's "
                                   "calibrated unit (1 carries the feature into the text while it stays fluent).",
                                   default=1.0)
    repetition_penalty: float = _doc("Penalty on tokens a suggestion already used (1 is off); keeps steered text "
                                     "from looping.", default=STEERED_REPETITION_PENALTY)
    max_chars: int = _doc("Longer documents are annotated only from a little above the visible range, in a window "
                          "this big.",
                          default=12000)
    cache_mb: int = _engine("cache_mb")

    def __post_init__(self) -> None:
        problems = validate(self)
        if problems:
            raise ValueError("; ".join(problems.values()))

    def engine_key(self) -> tuple[str, str, str, str, bool, int]:
        """The settings whose change needs the model or SAE reloaded."""
        return (self.model, self.sae, self.device, self.dtype, self.trust_remote_code, self.cache_mb)

    def engine_config(self) -> EngineConfig:
        """The engine these settings load: the settings that are EngineConfig fields, the others at their defaults."""
        return EngineConfig(**{name: getattr(self, name) for name in ENGINE_SETTINGS})

    def annotation_key(self) -> tuple[Any, ...]:
        """The settings whose change needs the open documents read again."""
        return (self.hint_granularity, self.hint_count, self.suggestion, self.max_chars, self.filetypes)


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
ENGINE_SETTINGS = tuple(name for name, f in FIELDS.items() if f.metadata.get("engine"))
"""The settings that are `EngineConfig` fields (`Settings.engine_config`)."""


def schema() -> list[dict[str, Any]]:
    """The settings as the README and the VS Code extension describe them: camelCase name, type, default, doc."""
    out = []
    for f in dataclasses.fields(Settings):
        default = f.default
        kind = {"str": "string", "bool": "boolean", "int": "integer", "float": "number"}.get(
            str(f.type), "array")
        out.append({"name": camel(f.name), "type": kind,
                    "default": list(default) if isinstance(default, tuple) else default, "doc": f.metadata["doc"]})
    return out


def _check(name: str, value: Any) -> str | None:
    """Why `value` is not valid for field `name`, or None."""
    kind = str(FIELDS[name].type)
    key = camel(name)
    if kind == "str" and not isinstance(value, str):
        return f"{key} must be a string"
    if kind == "bool" and not isinstance(value, bool):
        return f"{key} must be true or false"
    if kind == "int" and (not isinstance(value, int) or isinstance(value, bool)):
        return f"{key} must be a whole number"
    if kind == "float" and (not isinstance(value, int | float) or isinstance(value, bool)):
        return f"{key} must be a number"
    if kind.startswith("tuple") and (not isinstance(value, list | tuple) or
                                     not all(isinstance(v, str) and v for v in value)):
        return f"{key} must be a list of language ids"
    if name == "device" and value not in DEVICES:
        return f"{key} must be one of {', '.join(DEVICES)}"
    if name == "dtype" and value not in DTYPES:
        return f"{key} must be one of {', '.join(DTYPES)}"
    if name == "hint_granularity" and value not in GRANULARITIES:
        return f"{key} must be one of {', '.join(GRANULARITIES)}"
    if name in ("model", "sae") and not value.strip():
        return f"{key} must not be empty"
    if name == "hint_count" and not 0 <= value <= 20:
        return f"{key} must be between 0 and 20"
    if name == "max_tokens" and not 1 <= value <= 512:
        return f"{key} must be between 1 and 512"
    if name == "temperature" and not 0 <= value <= 5:
        return f"{key} must be between 0 and 5"
    if name == "debounce_ms" and not 0 <= value <= 10_000:
        return f"{key} must be between 0 and 10000"
    if name == "amplify_strength" and not 0 < value <= 10:
        return f"{key} must be above 0 and at most 10"
    if name == "repetition_penalty" and not 1 <= value <= 3:
        return f"{key} must be between 1 and 3"
    if name == "max_chars" and not 200 <= value <= 1_000_000:
        return f"{key} must be between 200 and 1000000"
    if name == "cache_mb" and not 0 <= value <= 65_536:
        return f"{key} must be between 0 and 65536"
    return None


def validate(settings: Settings) -> dict[str, str]:
    problems = {}
    for name in FIELDS:
        problem = _check(name, getattr(settings, name))
        if problem:
            problems[camel(name)] = problem
    return problems


def parse_settings(raw: Any, base: Settings | None = None) -> tuple[Settings, list[str]]:
    """Settings from a camelCase mapping (`None` = nothing set) on top of `base`, and the problems found.

    Unknown keys and bad values are reported; a bad value keeps the default. Accepts the section itself or an object
    holding it under `tinymorph`.
    """
    base = base or Settings()
    values = {name: getattr(base, name) for name in FIELDS}
    problems: list[str] = []
    if raw is None:
        return Settings(**values), problems
    if not isinstance(raw, dict):
        return Settings(**values), ["tinymorph settings must be an object"]
    if isinstance(raw.get("tinymorph"), dict):
        raw = raw["tinymorph"]
    for key, value in raw.items():
        if key in CLIENT_SIDE:
            continue
        name = snake(str(key))
        if name not in FIELDS:
            problems.append(f"unknown setting {key!r}")
            continue
        problem = _check(name, value)
        if problem:
            problems.append(f"{problem} (got {value!r}); using the default {camel_default(name)!r}")
            values[name] = FIELDS[name].default
            continue
        values[name] = tuple(value) if isinstance(value, list) else (float(value) if str(FIELDS[name].type) ==
                                                                      "float" else value)
    return Settings(**values), problems


def to_wire(settings: Settings) -> dict[str, Any]:
    """The settings as the client writes them: camelCase keys, lists for tuples."""
    return {camel(name): list(value) if isinstance(value, tuple) else value
            for name, value in ((f, getattr(settings, f)) for f in FIELDS)}


def camel_default(name: str) -> Any:
    default = FIELDS[name].default
    return list(default) if isinstance(default, tuple) else default
