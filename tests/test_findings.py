"""Watched features' findings without a model: which sentences they flag, how their ranges move with edits, and the
watch entries of a steering set (checked, saved, a damaged list kept aside)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lsp_server.findings import find, moved
from lsp_server.state import Annotated, Finding
from lsp_server.workspace import STEERING_FILE, SaveError, SteeringError, SteeringSet, Watch
from steering.features.annotate import Annotation, FeatureValue, TokenFeatures

TEXT = "The rain fell. The sea was grey!\n\nShe read the letter… Then she slept."


def annotation_with(values: dict[str, list[tuple[int, float]]], text: str = TEXT) -> Annotation:
    """An annotation whose tokens are `text`'s words; the word `w` carries the (feature, activation) pairs
    `values[w]`."""
    tokens, at = [], 0
    for i, word in enumerate(text.split()):
        start = text.index(word, at)
        at = start + len(word)
        feats = tuple(FeatureValue(f, a) for f, a in values.get(word.strip(".!…"), []))
        tokens.append(TokenFeatures(i, i, word, start, at, feats))
    return Annotation(text, "blocks.0.hook_resid_post", tuple(tokens), ())


def test_a_sentence_is_flagged_where_the_feature_peaks_above_the_threshold() -> None:
    ann = annotation_with({"rain": [(7, 3.0)], "sea": [(7, 1.0), (9, 5.0)], "letter": [(7, 2.5)],
                           "slept": [(9, 0.5)]})
    watches = [Watch(7, 2.0), Watch(9, 1.0)]
    found = find(Annotated(1, 0, len(TEXT), ann), watches)
    texts = [(x.feature, TEXT[x.start:x.end], x.peak) for x in found]
    assert texts == [(7, "The rain fell.", 3.0), (9, "The sea was grey!", 5.0), (7, "She read the letter…", 2.5)]
    shifted = find(Annotated(1, 100, len(TEXT) + 100, ann), watches)
    assert [(x.start, x.end) for x in shifted] == [(x.start + 100, x.end + 100) for x in found]
    assert find(Annotated(1, 0, len(TEXT), ann), []) == []


def test_findings_move_with_edits() -> None:
    x = Finding(1, 10, 20, 2.0)
    assert moved([x], 25, 30, 27) == [x]                           # after it: unchanged
    assert moved([x], 20, 20, 24) == [x]                           # typing right after it: unchanged
    assert moved([x], 10, 10, 13) == [Finding(1, 13, 23, 2.0)]     # typing right before it: shifted
    assert moved([x], 10, 12, 10) == [Finding(1, 10, 18, 2.0)]     # deleting its first characters
    assert moved([x], 0, 0, 5) == [Finding(1, 15, 25, 2.0)]        # typing before it: shifted
    assert moved([x], 2, 8, 3) == [Finding(1, 5, 15, 2.0)]         # a deletion before it
    assert moved([x], 12, 15, 19) == [Finding(1, 10, 24, 2.0)]     # an edit inside it: it grows
    assert moved([x], 5, 12, 7) == [Finding(1, 7, 15, 2.0)]        # cut into from before: the rest stays
    assert moved([x], 15, 25, 18) == [Finding(1, 10, 15, 2.0)]     # cut into from after
    assert moved([x], 5, 25, 9) == []                              # swallowed: gone


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab. ", min_size=30, max_size=60), st.integers(0, 60), st.integers(0, 20),
       st.text(alphabet="xy", max_size=8))
def test_a_range_an_edit_does_not_touch_keeps_its_text(text: str, at: int, length: int, new: str) -> None:
    start, end = min(at, len(text)), min(at + length, len(text))
    findings = [Finding(0, 5, 12, 1.0), Finding(1, 20, 28, 1.0)]
    after = text[:start] + new + text[end:]
    for before, now in zip(findings, moved(findings, start, end, start + len(new)), strict=False):
        if before.end <= start or before.start >= end:
            assert after[now.start:now.end] == text[before.start:before.end]


def test_watch_entries_are_checked() -> None:
    for bad in ({"feature": -1, "threshold": 1}, {"feature": 1, "threshold": 0}, {"feature": 1, "threshold": -2},
                {"feature": 1, "threshold": float("nan")}, {"feature": 1, "threshold": float("inf")},
                {"feature": 1, "threshold": "2"}, {"feature": 1, "threshold": True},
                {"feature": 1, "threshold": 1, "severity": "fatal"}, {"feature": 1, "threshold": 1, "message": "a\nb"},
                {"feature": True, "threshold": 1}, [1, 2]):
        with pytest.raises(SteeringError):
            Watch.from_dict(bad)
    w = Watch.from_dict({"feature": 4, "threshold": 2, "severity": "warning", "message": "weather", "label": "rain"})
    assert Watch.from_dict(w.to_dict()) == w and w.name == "\u201crain\u201d"


def test_the_watch_list_is_saved_and_a_damaged_one_is_kept_aside(tmp_path: Path) -> None:
    steering = SteeringSet(tmp_path)
    steering.watch(Watch(3, 1.5, "warning", "too much rain", "rain"))
    steering.watch(Watch(3, 2.5))  # replaces the first
    data = json.loads((tmp_path / STEERING_FILE).read_text(encoding="utf-8"))
    assert data["watch"] == [{"feature": 3, "threshold": 2.5, "severity": "information", "message": "",
                              "label": ""}]
    assert SteeringSet(tmp_path).watches == [Watch(3, 2.5)]
    assert steering.unwatch(3) and not steering.unwatch(3)
    damaged = {"version": 4, "steering": [], "watch": [{"feature": 2, "threshold": -1}]}
    (tmp_path / STEERING_FILE).write_text(json.dumps(damaged), encoding="utf-8")
    broken = SteeringSet(tmp_path)
    assert broken.watches == [] and broken.load_error and "threshold" in broken.load_error
    broken.watch(Watch(5, 1.0))
    kept = tmp_path / STEERING_FILE.parent / "steering.json.damaged"
    assert json.loads(kept.read_text(encoding="utf-8")) == damaged
    assert [w.feature for w in SteeringSet(tmp_path).watches] == [5]


def test_a_failed_save_changes_no_watch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    steering = SteeringSet(tmp_path)
    steering.watch(Watch(1, 1.0))
    before = (tmp_path / STEERING_FILE).read_bytes()

    def full(*_a: object, **_k: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("lsp_server.workspace.write_text", full)
    with pytest.raises(SaveError, match="No space left"):
        steering.watch(Watch(2, 1.0))
    with pytest.raises(SaveError):
        steering.unwatch(1)
    assert [w.feature for w in steering.watches] == [1]
    assert (tmp_path / STEERING_FILE).read_bytes() == before
