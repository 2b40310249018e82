"""Server-side state: the workspace's steering set (user data, kept on disk) and what the server knows per document.

The steering set of a workspace lives in `<folder>/.tinymorph/steering.json`, written atomically (temporary file,
then rename), so it survives a restart; without a workspace folder it lives in memory.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steering.annotate import Annotation, SpanFeatures
from steering.atomic import write_text
from steering.errors import TinymorphError
from steering.generate import CancelToken
from steering.interventions import FEATURE_MODES, Intervention

from .text import Document

log = logging.getLogger(__name__)

STEERING_FILE = Path(".tinymorph") / "steering.json"


class SteeringError(ValueError):
    """A steering entry that cannot be used."""


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
        return Intervention.from_dict(data)
    except TinymorphError as exc:
        raise SteeringError(str(exc)) from None


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


class SteeringSet:
    """The steering set of one workspace folder (or of no folder, in memory)."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self.entries: list[Steer] = []
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
            entries = []
            for e in data["steering"]:
                if not isinstance(e, dict):
                    raise SteeringError(f"each entry must be an object, not {e!r}")
                label = e.get("label", "")
                entries.append(Steer(intervention_from(e), label if isinstance(label, str) else ""))
            self.entries = entries
        except (OSError, ValueError) as exc:
            self.entries = []
            self.load_error = f"{path} is not a valid steering file ({exc}); starting with no steering."
            log.warning(self.load_error)

    def save(self) -> None:
        if self.path is not None:
            payload = {"version": 2, "steering": [e.to_dict() for e in self.entries]}
            write_text(self.path, json.dumps(payload, indent=2) + "\n")

    def put(self, entry: Steer) -> None:
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
        return [e.intervention for e in self.entries]

    def describe(self) -> str:
        """The set in a few words, for titles and tooltips."""
        return ", ".join(map(str, self.entries)) if self.entries else "no steering"


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

    def spans(self, current: str) -> Iterator[tuple[int, SpanFeatures]]:
        """(where it starts in `current`, span) for each annotated span whose text is still there."""
        for span in self.annotation.paragraphs:
            at = self.locate(current, span.start, span.end)
            if at is not None:
                yield at, span

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
