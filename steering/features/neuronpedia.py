"""Labels from Neuronpedia's explanation exports: the written explanations Neuronpedia publishes for public SAEs'
features, read into the SAE's labels.json.

An export is JSON (a list of explanation objects, or an object holding one under `explanations`) or JSON lines,
optionally gzipped, as Neuronpedia's explanation export and its dataset dumps give them; each object has
`modelId` (e.g. `gemma-2-2b`), `layer` (the SAE's id there, e.g. `20-gemmascope-res-16k`), `index` (the feature)
and `description`, and may have `explanationModelName` (who wrote it). One SAE's explanations per import; a file
holding several SAEs' is refused unless `sae_id` picks one.

The SAE's id says its layer (the number it starts with) and often its width (`16k`, `65k`, `1m`); both are checked
against the loaded SAE, and every index must exist in it. A label is the explanation's short form (`short_form`:
"references to the color blue" → "the color blue"); hover shows the whole explanation and its source.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steering.errors import TinymorphError

IMPORTED_CONFIDENCE = 0.75
"""The confidence an imported explanation's label gets: a written explanation is taken as good enough to hint."""
SHORT_WORDS = 4
"""Words a short form keeps at most."""

_LEADS = re.compile(
    r"^(?:(?:references?|mentions?|instances?|occurrences?|uses?|usage|words?|terms?|phrases?|tokens?|text|"
    r"concepts?|language|expressions?|discussions?|descriptions?|the (?:word|token|concept|phrase)s?)"
    r"(?:\s+(?:related|relating|referring|pertaining)\s+to|\s+(?:of|to|about|for|like|such as|involving|"
    r"indicating|describing|associated with))?\s+)+", re.IGNORECASE)
_WIDTH = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)([km])\b", re.IGNORECASE)


class ExportError(TinymorphError):
    """An export that cannot be read, or that belongs to another SAE."""


@dataclass(frozen=True)
class Explanation:
    feature: int
    description: str
    author: str
    """Who wrote it (`explanationModelName`; empty when the export does not say)."""


@dataclass(frozen=True)
class Export:
    model_id: str
    sae_id: str
    explanations: tuple[Explanation, ...]

    @property
    def layer(self) -> int | None:
        """The layer the SAE id starts with (`20-gemmascope-res-16k` → 20)."""
        m = re.match(r"(\d+)(?:-|$)", self.sae_id)
        return int(m.group(1)) if m else None

    @property
    def width(self) -> int | None:
        """The width the SAE id names (`16k` → 16,384, `1m` → 1,048,576), if any."""
        m = _WIDTH.search(self.sae_id.split("-", 1)[-1])
        if m is None:
            return None
        return round(float(m.group(1)) * (1024 if m.group(2).lower() == "k" else 1024 * 1024))


def _objects(path: Path) -> list[Any]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ExportError(f"cannot read {path}: {exc.strerror or exc}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise ExportError(f"{path} is not a readable gzip file: {exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ExportError(f"{path} is not UTF-8 text") from None
    try:
        data = json.loads(text)
    except ValueError:
        data = None
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    raise ExportError(f"{path}, line {number}: not JSON (an export is JSON or JSON lines)") from None
        return rows
    if isinstance(data, dict) and isinstance(data.get("explanations"), list):
        data = data["explanations"]
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise ExportError(f"{path}: expected a list of explanations")
    return data


def _field(obj: dict[str, Any], *names: str) -> Any:
    for name in names:
        if name in obj and obj[name] is not None:
            return obj[name]
    return None


def read_export(paths: Iterable[str | Path], sae_id: str | None = None) -> Export:
    """The explanations of one SAE in the export files `paths` (several features' explanations: the first one of
    each feature is kept)."""
    found: dict[tuple[str, str], dict[int, Explanation]] = {}
    for path in map(Path, paths):
        for number, obj in enumerate(_objects(path), 1):
            if not isinstance(obj, dict):
                raise ExportError(f"{path}: entry {number} is not an object")
            model, layer = _field(obj, "modelId", "model_id"), _field(obj, "layer", "saeId", "sae_id")
            index, description = _field(obj, "index", "featureIndex"), _field(obj, "description", "explanation")
            if model is None or layer is None or index is None or description is None:
                raise ExportError(f"{path}: entry {number} lacks modelId, layer, index or description")
            try:
                feature = int(index)
            except (TypeError, ValueError):
                raise ExportError(f"{path}: entry {number} has index {index!r}, not a number") from None
            if feature < 0:
                raise ExportError(f"{path}: entry {number} has a negative index")
            text = " ".join(str(description).split())
            if not text:
                continue
            author = str(_field(obj, "explanationModelName", "authorName") or "")
            found.setdefault((str(model), str(layer)), {}).setdefault(feature, Explanation(feature, text, author))
    if sae_id is not None:
        found = {k: v for k, v in found.items() if k[1] == sae_id}
        if not found:
            raise ExportError(f"the export has no explanations for SAE {sae_id!r}")
    if not found:
        raise ExportError("the export holds no explanations")
    if len(found) > 1:
        ids = ", ".join(f"{m}/{s}" for m, s in sorted(found))
        raise ExportError(f"the export holds several SAEs' explanations ({ids}); pick one with --sae-id")
    (model, layer), by_feature = next(iter(found.items()))
    return Export(model, layer, tuple(by_feature[f] for f in sorted(by_feature)))


def check_matches(export: Export, d_sae: int, hook_layer: int | None) -> None:
    """Refuse an export written for another SAE: another layer, another width, or features the SAE lacks."""
    where = f"{export.model_id}/{export.sae_id}"
    if export.layer is not None and hook_layer is not None and export.layer != hook_layer:
        raise ExportError(f"the export is for layer {export.layer} ({where}); the SAE reads layer {hook_layer}. "
                          "Nothing was written.")
    if export.width is not None and export.width != d_sae:
        raise ExportError(f"the export is for an SAE of {export.width:,} features ({where}); this one has "
                          f"{d_sae:,}. Nothing was written.")
    beyond = [e.feature for e in export.explanations if e.feature >= d_sae]
    if beyond:
        raise ExportError(f"the export explains feature {beyond[0]:,}, but this SAE has {d_sae:,} features "
                          f"({where} is another SAE). Nothing was written.")


def short_form(description: str) -> str:
    """A hint-sized label from an explanation: its lead-in ("references to", "mentions of", "words related to")
    and trailing clause dropped, at most `SHORT_WORDS` words."""
    text = description.strip().strip('"“”').rstrip(".")
    text = re.split(r"[;,(]|\s+[-–—]\s+|\bespecially\b|\bparticularly\b|\bin the context of\b", text, maxsplit=1)[0]
    stripped = _LEADS.sub("", text).strip()
    words = (stripped or text).split()
    return " ".join(words[:SHORT_WORDS]).strip(" ,.:")


def merge_labels(labels: dict[str, Any] | None, export: Export) -> tuple[dict[str, Any], int]:
    """labels.json with the export's explanations as the features' labels (other fields of each feature kept), and
    how many features got one."""
    merged: dict[str, Any] = dict(labels or {})
    features = dict(merged.get("features") or {})
    source = f"Neuronpedia {export.model_id}/{export.sae_id}"
    count = 0
    for e in export.explanations:
        label = short_form(e.description)
        if not label:
            continue
        entry = dict(features.get(str(e.feature)) or {})
        entry.update(label=label, confidence=IMPORTED_CONFIDENCE, explanation=e.description,
                     source=source + (f" (written by {e.author})" if e.author else ""))
        entry.pop("names", None)
        features[str(e.feature)] = entry
        count += 1
    merged["features"] = features
    merged.setdefault("tokens", 0)
    merged["imported"] = {"source": source, "features": count}
    return merged, count
