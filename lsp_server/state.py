"""Server-side state: the workspace's steering set (user data, kept on disk) and what the server knows per document.

The steering set of a workspace lives in `<folder>/.tinymorph/steering.json`, written atomically (temporary file,
then rename), so it survives a restart; without a workspace folder it lives in memory.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steering.annotate import Annotation
from steering.generate import CancelToken
from steering.interventions import Intervention

from .text import Document

log = logging.getLogger(__name__)

STEERING_FILE = Path(".tinymorph") / "steering.json"
MODES = ("add", "clamp", "ablate")


class SteeringError(ValueError):
    """A steering entry that cannot be used."""


@dataclass(frozen=True)
class SteerEntry:
    """One feature in the workspace's steering set."""

    feature: int
    """SAE feature index."""
    strength: float = 4.0
    """`add`: multiple of the feature's max activation; `clamp`: the activation to hold; `ablate`: unused."""
    mode: str = "add"
    """`add`, `clamp` or `ablate`."""
    label: str = ""
    """The feature's label when it was added, for display."""

    def __post_init__(self) -> None:
        if not isinstance(self.feature, int) or isinstance(self.feature, bool) or self.feature < 0:
            raise SteeringError(f"feature must be a whole number >= 0, not {self.feature!r}")
        if isinstance(self.strength, bool) or not isinstance(self.strength, int | float) or \
                not math.isfinite(self.strength):
            raise SteeringError(f"strength must be a finite number, not {self.strength!r}")
        if self.mode not in MODES:
            raise SteeringError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")

    def intervention(self) -> Intervention:
        if self.mode == "clamp":
            return Intervention("clamp", self.feature, value=float(self.strength))
        if self.mode == "ablate":
            return Intervention("ablate", self.feature)
        return Intervention("add", self.feature, strength=float(self.strength))

    def to_dict(self) -> dict[str, Any]:
        return {"feature": self.feature, "strength": self.strength, "mode": self.mode, "label": self.label}

    def describe(self) -> str:
        name = f"{self.feature}" + (f" ({self.label})" if self.label else "")
        if self.mode == "ablate":
            return f"{name} off"
        if self.mode == "clamp":
            return f"{name} clamped at {self.strength:g}"
        return f"{name} {self.strength:+g}"


class SteeringSet:
    """The steering set of one workspace folder (or of no folder, in memory)."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self.entries: list[SteerEntry] = []
        self.load_error: str | None = None
        if folder is not None:
            self._load()

    @property
    def path(self) -> Path | None:
        return None if self.folder is None else self.folder / STEERING_FILE

    def _load(self) -> None:
        path = self.path
        if path is None or not path.exists():
            return
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or not isinstance(data.get("steering"), list):
                raise SteeringError('expected an object with a "steering" list')
            self.entries = [SteerEntry(**{k: v for k, v in e.items() if k in ("feature", "strength", "mode",
                                                                               "label")})
                            for e in data["steering"]]
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            self.entries = []
            self.load_error = f"{path} is not a valid steering file ({exc}); starting with no steering."
            log.warning(self.load_error)

    def save(self) -> None:
        path = self.path
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = json.dumps({"version": 1, "steering": [e.to_dict() for e in self.entries]}, indent=2) + "\n"
        fd, tmp = tempfile.mkstemp(prefix=".steering.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put(self, entry: SteerEntry) -> None:
        """Add `entry`, replacing any entry for the same feature."""
        self.entries = [e for e in self.entries if e.feature != entry.feature] + [entry]
        self.save()

    def remove(self, feature: int) -> bool:
        before = len(self.entries)
        self.entries = [e for e in self.entries if e.feature != feature]
        if len(self.entries) != before:
            self.save()
            return True
        return False

    def clear(self) -> None:
        self.entries = []
        self.save()

    def interventions(self) -> list[Intervention]:
        return [e.intervention() for e in self.entries]

    def key(self) -> tuple[tuple[int, float, str], ...]:
        return tuple((e.feature, e.strength, e.mode) for e in self.entries)


@dataclass(frozen=True)
class Suggestion:
    """A steered continuation computed for one document version, to insert at `offset`."""

    version: int
    offset: int
    text: str


@dataclass(frozen=True)
class Annotated:
    """An annotation of `doc_text[base : base + len(annotation.text)]` made at document version `version`."""

    version: int
    base: int
    doc_length: int
    annotation: Annotation
    granularity: str = "paragraph"
    partial: bool = False
    """Only the edited spans were read again; the others keep features computed before the edit."""

    def locate(self, current: str, start: int, end: int) -> int | None:
        """Where the annotated span `[start, end)` (annotation coordinates) now starts in `current`, if that text is
        unchanged there or shifted by the edits since; None if it changed."""
        piece = self.annotation.text[start:end]
        for shift in (0, len(current) - self.doc_length):
            at = self.base + start + shift
            if at >= 0 and current[at:at + len(piece)] == piece:
                return at
        return None


@dataclass
class DocState:
    """What the server keeps per open document besides its text."""

    doc: Document
    annotated: Annotated | None = None
    suggestion: Suggestion | None = None
    last_edit: int | None = None
    """String offset just after the last edit, where a suggestion goes."""
    visible: tuple[int, int] | None = None
    """The range the editor last asked hints for (string offsets)."""
    pending: asyncio.Task[Any] | None = None
    """The debounced annotation task."""
    generation: CancelToken | None = None
    """The running completion for this document, cancelled by a newer one."""
    features_seen: set[int] = field(default_factory=set)
