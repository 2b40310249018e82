"""The workspace store: each workspace folder's steering set (feature steering, style presets, watched features),
its files on disk and the checks of every entry; `Workspaces` finds the folder, and so the set, of a document.

The steering set of a workspace lives in `<folder>/.tinymorph/steering.json`, each preset's vector in
`<folder>/.tinymorph/presets/<id>.safetensors`; every file is written atomically (temporary file, then rename), so
the set survives a restart and a crash mid-save leaves the previous version. Without a workspace folder the set
lives in memory.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from steering.atomic import write_text
from steering.errors import TinymorphError
from steering.runtime.interventions import FEATURE_MODES, Intervention
from steering.runtime.presets import PRESET_MULTIPLE, PresetError, load_vector, save_vector

from .text import uri_path

log = logging.getLogger(__name__)

STEERING_FILE = Path(".tinymorph") / "steering.json"
PRESET_DIR = Path(".tinymorph") / "presets"
MAP_DIR = Path(".tinymorph") / "maps"
"""Where the feature maps of a workspace's documents are written (`maps`)."""
NAME_LIMIT = 60
"""Longest preset name, in characters."""
_ID = re.compile(r"^[0-9a-f]{16}$")


MAX_STRENGTH = 10.0
"""The largest |strength| the server accepts (commands, actions, presets, settings): 10 times a feature's strongest
activation already turns any text into one repeated word."""
MAX_ACTIVATION = 10_000.0
"""The largest |value| of a clamp and the largest watch threshold, in the SAE's activation units."""


class SteeringError(ValueError):
    """A steering entry that cannot be used."""


class SaveError(SteeringError):
    """The steering set could not be saved; it stays as it was."""


def intervention_from(data: dict[str, Any]) -> Intervention:
    """An engine intervention on one feature from its JSON description (`Intervention.to_dict`). Files written
    before `value` existed kept a clamp's target in `strength`: that still reads as the clamp value."""
    mode = data.get("mode", "add")
    if mode not in FEATURE_MODES:
        raise SteeringError(f"mode must be one of {', '.join(FEATURE_MODES)}, not {mode!r}")
    if mode == "clamp" and "value" not in data and "strength" in data:
        data = {**data, "value": data["strength"]}
        del data["strength"]
    try:
        intervention = Intervention.from_dict(data)
    except TinymorphError as exc:
        raise SteeringError(str(exc)) from None
    if intervention.kind.numbers == ("strength",):
        check_strength(intervention.strength)
    if abs(intervention.value) > MAX_ACTIVATION:
        raise SteeringError(f"value must be between {-MAX_ACTIVATION:g} and {MAX_ACTIVATION:g}, not "
                            f"{intervention.value!r}")
    return intervention


@dataclass(frozen=True)
class Steer:
    """One entry of a workspace's steering set: what the engine applies, and the feature's label for display."""

    intervention: Intervention
    label: str = ""

    @property
    def feature(self) -> int:
        assert self.intervention.feature is not None
        return self.intervention.feature

    def to_dict(self) -> dict[str, Any]:
        return {**self.intervention.to_dict(), "label": self.label}

    def __str__(self) -> str:
        return self.intervention.describe(self.label)


def check_name(name: str) -> str:
    """A preset name as given, trimmed; empty, too long or with control characters raises SteeringError."""
    name = name.strip()
    if not name:
        raise SteeringError("a preset name must not be empty")
    if len(name) > NAME_LIMIT:
        raise SteeringError(f"a preset name has at most {NAME_LIMIT} characters (this one has {len(name)})")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise SteeringError("a preset name must be one line of text")
    return name


def check_strength(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SteeringError(f"strength must be a finite number, not {value!r}")
    if abs(value) > MAX_STRENGTH:
        raise SteeringError(f"strength must be between {-MAX_STRENGTH:g} and {MAX_STRENGTH:g}, not {value!r}")
    return float(value)


@dataclass(frozen=True)
class Preset:
    """A named "write more like this" vector of a workspace: applied to suggestions while enabled."""

    id: str
    """16 hex digits; names the vector's file, stays the same across renames."""
    name: str
    strength: float = 1.0
    enabled: bool = True
    model: str = ""
    """The model and hook point the vector was read at: elsewhere it means nothing and is not applied."""
    hook: str = ""
    excerpt: str = ""
    """The passage's first words, to remind the writer what it was."""
    vector: torch.Tensor | None = field(default=None, compare=False, repr=False)
    error: str | None = None
    """Why the vector cannot be used (its file is missing or damaged); the entry is kept as it is."""

    @classmethod
    def from_dict(cls, data: Any) -> Preset:
        if not isinstance(data, dict):
            raise SteeringError(f"each preset must be an object, not {data!r}")
        ident = data.get("id")
        if not isinstance(ident, str) or not _ID.match(ident):
            raise SteeringError(f"a preset's id must be 16 hex digits, not {ident!r}")
        name = data.get("name")
        if not isinstance(name, str):
            raise SteeringError(f"a preset's name must be a string, not {name!r}")
        enabled = data.get("enabled", True)
        if not isinstance(enabled, bool):
            raise SteeringError(f"a preset's enabled must be true or false, not {enabled!r}")
        texts = {k: data.get(k, "") for k in ("model", "hook", "excerpt")}
        if not all(isinstance(v, str) for v in texts.values()):
            raise SteeringError("a preset's model, hook and excerpt must be strings")
        return cls(ident, check_name(name), check_strength(data.get("strength", 1.0)), enabled, **texts)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "strength": self.strength, "enabled": self.enabled,
                "model": self.model, "hook": self.hook, "excerpt": self.excerpt}

    def fits(self, identity: tuple[str, str] | None) -> bool:
        """Whether the vector belongs to the engine `identity` (model, hook point); None: any."""
        return identity is None or (self.model, self.hook) == identity

    def __str__(self) -> str:
        return f"“{self.name}” {self.strength:+g}"


SEVERITIES = ("error", "warning", "information", "hint")
MESSAGE_LIMIT = 200
"""Longest custom message of a watch, in characters."""


def check_threshold(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise SteeringError(f"threshold must be a positive finite number, not {value!r}")
    if value > MAX_ACTIVATION:
        raise SteeringError(f"threshold must be at most {MAX_ACTIVATION:g} (an activation), not {value!r}")
    return float(value)


@dataclass(frozen=True)
class Watch:
    """A feature the writer watches: wherever it fires above `threshold` (its activation), the sentence gets a
    diagnostic of `severity` saying so (with `message`, when given)."""

    feature: int
    threshold: float
    severity: str = "information"
    message: str = ""
    label: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.feature, bool) or not isinstance(self.feature, int) or self.feature < 0:
            raise SteeringError(f"a watched feature must be a feature number, not {self.feature!r}")
        check_threshold(self.threshold)
        if self.severity not in SEVERITIES:
            raise SteeringError(f"severity must be one of {', '.join(SEVERITIES)}, not {self.severity!r}")
        if not isinstance(self.message, str) or len(self.message) > MESSAGE_LIMIT or any(
                ord(c) < 32 for c in self.message):
            raise SteeringError(f"a watch's message must be one line of at most {MESSAGE_LIMIT} characters")
        if not isinstance(self.label, str):
            raise SteeringError("a watch's label must be a string")

    @classmethod
    def from_dict(cls, data: Any) -> Watch:
        if not isinstance(data, dict):
            raise SteeringError(f"each watch must be an object, not {data!r}")
        return cls(data.get("feature"), data.get("threshold"), data.get("severity", "information"),  # type: ignore[arg-type]
                   data.get("message", ""), data.get("label", ""))

    def to_dict(self) -> dict[str, Any]:
        return {"feature": self.feature, "threshold": self.threshold, "severity": self.severity,
                "message": self.message, "label": self.label}

    @property
    def name(self) -> str:
        """How the writer knows it: its label in quotes, or its number."""
        return f"“{self.label}”" if self.label else f"feature {self.feature}"


def store_problem(folder: Path) -> str | None:
    """Why `folder`'s `.tinymorph/` cannot hold the steering set: it, the steering file, the presets folder or a
    preset file is a link, or leads out of it (a cloned repository could point them at any file of the writer's).
    None: it can (or does not exist yet)."""
    store = folder / STEERING_FILE.parent
    inside = folder.resolve() / STEERING_FILE.parent
    candidates = [store, folder / STEERING_FILE, folder / PRESET_DIR, folder / MAP_DIR]
    for sub in (PRESET_DIR, MAP_DIR):
        if (folder / sub).is_dir() and not (folder / sub).is_symlink():
            candidates += sorted((folder / sub).iterdir())
    for path in candidates:
        if path.is_symlink() or (path.exists() and path.resolve() != inside
                                 and not path.resolve().is_relative_to(inside)):
            return f"{path} is a link or leads out of {store}"
    return None


class SteeringSet:
    """The steering set of one workspace folder (or of no folder, in memory): feature steering and style presets.

    Every change is saved before it counts: when the save fails, the set stays as it was and SteeringError says why.
    """

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self.entries: list[Steer] = []
        self.presets: list[Preset] = []
        self.watches: list[Watch] = []
        self.load_error: str | None = None
        self._damaged = False
        if folder is not None and (problem := store_problem(folder)) is not None:
            self.folder = None  # nothing read or written there
            self.load_error = f"{problem}: tinymorph keeps this workspace's steering in memory for this session."
            log.warning(self.load_error)
        elif folder is not None:
            self._load()

    def _check_store(self) -> None:
        """Refuse to write when `.tinymorph/` became a link since the set was loaded."""
        if self.folder is not None and (problem := store_problem(self.folder)) is not None:
            raise SaveError(f"{problem}; nothing was written there")

    @property
    def path(self) -> Path | None:
        return None if self.folder is None else self.folder / STEERING_FILE

    def vector_path(self, preset: Preset) -> Path | None:
        return None if self.folder is None else self.folder / PRESET_DIR / f"{preset.id}.safetensors"

    def _load(self) -> None:
        path = self.path
        if path is None or not path.exists():
            return
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or not isinstance(data.get("steering"), list):
                raise SteeringError('expected an object with a "steering" list')
            entries = []
            for e in data["steering"]:
                if not isinstance(e, dict):
                    raise SteeringError(f"each entry must be an object, not {e!r}")
                label = e.get("label", "")
                entries.append(Steer(intervention_from(e), label if isinstance(label, str) else ""))
            presets = data.get("presets", [])
            if not isinstance(presets, list):
                raise SteeringError('"presets" must be a list')
            watches = data.get("watch", [])
            if not isinstance(watches, list):
                raise SteeringError('"watch" must be a list')
            self.watches = [Watch.from_dict(w) for w in watches]
            self.presets = [self._with_vector(Preset.from_dict(p)) for p in presets]
            self.entries = entries
        except (OSError, ValueError) as exc:
            self.entries, self.presets, self.watches = [], [], []
            self._damaged = True
            self.load_error = (f"{path} is not a valid steering file ({exc}); starting with no steering. It will be "
                               f"kept as {path.name}.damaged when the steering changes.")
            log.warning(self.load_error)
            return
        broken = [f"{p.name}: {p.error}" for p in self.presets if p.error]
        if broken:
            self.load_error = "Presets left off: " + "; ".join(broken)
            log.warning(self.load_error)

    def _with_vector(self, preset: Preset) -> Preset:
        where = self.vector_path(preset)
        assert where is not None
        try:
            stored = load_vector(where)
        except PresetError as exc:
            return replace(preset, error=str(exc))
        return replace(preset, vector=stored.vector)

    def save(self) -> None:
        path = self.path
        if path is None:
            return
        self._check_store()
        if self._damaged and path.exists():  # the writer's hand-edited file is kept, not overwritten
            os.replace(path, path.with_name(path.name + ".damaged"))
            self._damaged = False
        payload = {"version": 4, "steering": [e.to_dict() for e in self.entries],
                   "presets": [p.to_dict() for p in self.presets], "watch": [w.to_dict() for w in self.watches]}
        write_text(path, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")

    def _commit(self, entries: list[Steer], presets: list[Preset], watches: list[Watch] | None = None) -> None:
        """Make `entries`, `presets` (and `watches`) the set, saved; on a failed save nothing changes."""
        before = self.entries, self.presets, self.watches
        self.entries, self.presets = entries, presets
        self.watches = self.watches if watches is None else watches
        try:
            self.save()
        except SaveError:
            self.entries, self.presets, self.watches = before
            raise
        except OSError as exc:
            self.entries, self.presets, self.watches = before
            raise SaveError(f"cannot save the steering set to {self.path}: {exc.strerror or exc}; "
                                f"nothing changed") from None

    def put(self, entry: Steer) -> None:
        """Add `entry`, replacing any entry for the same feature; SteeringError for one outside the bounds a steering
        file is read with (so what is saved is always read back)."""
        intervention_from(entry.intervention.to_dict())
        self._commit([e for e in self.entries if e.feature != entry.feature] + [entry], self.presets)

    def remove(self, feature: int) -> bool:
        kept = [e for e in self.entries if e.feature != feature]
        if len(kept) == len(self.entries):
            return False
        self._commit(kept, self.presets)
        return True

    def clear(self) -> None:
        """Drop the feature steering (presets stay: they are switched off one by one)."""
        self._commit([], self.presets)

    # ------------------------------------------------------------------------------------------------- watches
    def watch(self, entry: Watch) -> None:
        """Watch `entry.feature` (replacing an earlier watch of it)."""
        self._commit(self.entries, self.presets, [w for w in self.watches if w.feature != entry.feature] + [entry])

    def unwatch(self, feature: int) -> bool:
        kept = [w for w in self.watches if w.feature != feature]
        if len(kept) == len(self.watches):
            return False
        self._commit(self.entries, self.presets, kept)
        return True

    def watched(self, feature: int) -> Watch | None:
        return next((w for w in self.watches if w.feature == feature), None)

    # ------------------------------------------------------------------------------------------------- presets
    def preset(self, name: str) -> Preset:
        for p in self.presets:
            if p.name == name.strip():
                return p
        known = ", ".join(f"“{p.name}”" for p in self.presets) or "none yet"
        raise SteeringError(f"no preset is named {name!r} (presets: {known})")

    def unique_name(self, base: str) -> str:
        """`base` (cut to fit), or `base 2`, `base 3`, ... when a preset already has that name."""
        names = {p.name for p in self.presets}
        base = check_name(base[:NAME_LIMIT - 3])
        n = 1
        while (name := base if n == 1 else f"{base} {n}") in names:
            n += 1
        return name

    def add_preset(self, name: str, vector: torch.Tensor, *, strength: float, model: str, hook: str,
                   excerpt: str) -> Preset:
        """A new enabled preset: its vector file is written first, then the steering file names it."""
        name = check_name(name)
        if any(p.name == name for p in self.presets):
            raise SteeringError(f"a preset named {name!r} exists already")
        preset = Preset(secrets.token_hex(8), name, check_strength(strength), True, model, hook, excerpt,
                        vector.detach().float().cpu())
        where = self.vector_path(preset)
        if where is not None:
            self._check_store()
            try:
                save_vector(where, vector, model=model, hook=hook)
            except OSError as exc:
                raise SaveError(f"cannot save the preset to {where}: {exc.strerror or exc}; nothing "
                                    f"changed") from None
        try:
            self._commit(self.entries, [*self.presets, preset])
        except SteeringError:
            if where is not None:
                where.unlink(missing_ok=True)
            raise
        return preset

    def _swap(self, old: Preset, new: Preset) -> Preset:
        self._commit(self.entries, [new if p is old else p for p in self.presets])
        return new

    def rename_preset(self, name: str, to: str) -> Preset:
        preset, to = self.preset(name), check_name(to)
        if to != preset.name and any(p.name == to for p in self.presets):
            raise SteeringError(f"a preset named {to!r} exists already")
        return self._swap(preset, replace(preset, name=to))

    def toggle_preset(self, name: str, enabled: bool | None = None) -> Preset:
        preset = self.preset(name)
        return self._swap(preset, replace(preset, enabled=not preset.enabled if enabled is None else enabled))

    def remove_preset(self, name: str) -> Preset:
        """Drop the preset from the steering file, then delete its vector file."""
        preset = self.preset(name)
        self._commit(self.entries, [p for p in self.presets if p is not preset])
        where = self.vector_path(preset)
        if where is not None:
            where.unlink(missing_ok=True)
        return preset

    # ------------------------------------------------------------------------------------------------ applying
    def applied_presets(self, identity: tuple[str, str] | None = None) -> list[Preset]:
        """The enabled presets with a usable vector made for `identity` (model, hook point)."""
        return [p for p in self.presets if p.enabled and p.vector is not None and p.fits(identity)]

    @property
    def active(self) -> bool:
        """Whether anything steers: a feature entry or an enabled preset."""
        return bool(self.entries) or any(p.enabled for p in self.presets)

    def interventions(self, identity: tuple[str, str] | None = None) -> list[Intervention]:
        out = [e.intervention for e in self.entries]
        for p in self.applied_presets(identity):
            assert p.vector is not None
            out.append(Intervention("vector", vector=p.vector * PRESET_MULTIPLE, strength=p.strength))
        return out

    def describe(self) -> str:
        """The set in a few words, for titles and tooltips."""
        parts = [*map(str, self.entries), *(f"like {p}" for p in self.presets if p.enabled)]
        return ", ".join(parts) if parts else "no steering"


class Workspaces:
    """The steering set of each workspace folder, made when a document in the folder first needs it."""

    def __init__(self, tell: Callable[[str], None]) -> None:
        self.sets: dict[Path | None, SteeringSet] = {}
        """By folder; under None, the set kept in memory while the client names no folder."""
        self._tell = tell
        """Says to the user, once per folder, why its store could not be read (`SteeringSet.load_error`)."""

    def for_uri(self, uri: str | None, folders: Sequence[Path]) -> SteeringSet:
        """The steering set of the innermost of `folders` holding `uri` (else of the first folder, or in memory)."""
        chosen: Path | None = folders[0] if folders else None
        path = uri_path(uri) if uri else None
        if path is not None:
            inside = [f for f in folders if path == f or f in path.parents]
            chosen = max(inside, key=lambda f: len(f.parts)) if inside else chosen
        if chosen not in self.sets:
            steering = SteeringSet(chosen)
            self.sets[chosen] = steering
            if steering.load_error:
                self._tell(steering.load_error)
        return self.sets[chosen]
