"""A workspace's steering set on disk: presets next to feature steering, every change saved atomically or not at all,
damaged files kept and reported rather than overwritten."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch

from lsp_server.workspace import NAME_LIMIT, SaveError, Steer, SteeringError, SteeringSet
from steering.runtime.interventions import Intervention
from steering.runtime.presets import PRESET_MULTIPLE

ID = ("tiny", "blocks.2.hook_resid_post")


def with_preset(folder: Path | None, name: str = "storm scenes") -> tuple[SteeringSet, torch.Tensor]:
    steering = SteeringSet(folder)
    vector = torch.randn(16)
    steering.add_preset(name, vector, strength=1.5, model=ID[0], hook=ID[1], excerpt="Thunder rolled")
    return steering, vector


def test_a_preset_is_saved_and_read_back_by_the_next_server(tmp_path: Path) -> None:
    steering, vector = with_preset(tmp_path)
    steering.put(Steer(Intervention("add", 3, strength=1.0), "rain"))
    data = json.loads((tmp_path / ".tinymorph" / "steering.json").read_text(encoding="utf-8"))
    assert data["version"] == 4 and [p["name"] for p in data["presets"]] == ["storm scenes"]
    files = list((tmp_path / ".tinymorph" / "presets").iterdir())
    assert [f.name for f in files] == [data["presets"][0]["id"] + ".safetensors"]
    again = SteeringSet(tmp_path)
    assert again.load_error is None
    (preset,) = again.presets
    assert preset.name == "storm scenes" and preset.strength == 1.5 and preset.enabled
    assert torch.equal(preset.vector, vector)
    applied = again.interventions(ID)
    assert [i.mode for i in applied] == ["add", "vector"]
    assert torch.equal(applied[1].vector, vector * PRESET_MULTIPLE) and applied[1].strength == 1.5
    assert "like \u201cstorm scenes\u201d +1.5" in again.describe()


def test_rename_toggle_remove(tmp_path: Path) -> None:
    steering, _ = with_preset(tmp_path)
    steering.rename_preset("storm scenes", "  weather  ")
    assert SteeringSet(tmp_path).presets[0].name == "weather"
    steering.toggle_preset("weather")
    assert not SteeringSet(tmp_path).presets[0].enabled and steering.interventions(ID) == []
    assert not steering.active
    steering.toggle_preset("weather", True)
    assert steering.active and len(steering.interventions(ID)) == 1
    steering.remove_preset("weather")
    assert SteeringSet(tmp_path).presets == [] and not list((tmp_path / ".tinymorph" / "presets").iterdir())


def test_a_preset_made_for_another_model_is_not_applied(tmp_path: Path) -> None:
    steering, _ = with_preset(tmp_path)
    assert steering.interventions(("other", ID[1])) == [] and steering.interventions(ID)


def test_unique_names_and_in_memory_sets() -> None:
    steering, _ = with_preset(None, "calm")
    assert steering.unique_name("calm") == "calm 2" and steering.unique_name("x" * 100) == "x" * (NAME_LIMIT - 3)
    assert steering.vector_path(steering.presets[0]) is None
    steering.toggle_preset("calm")
    assert not steering.presets[0].enabled


@pytest.mark.parametrize("name,message", [
    ("", "must not be empty"), ("   ", "must not be empty"), ("x" * (NAME_LIMIT + 1), "at most"),
    ("two\nlines", "one line"), ("storm scenes", "exists already"),
])
def test_bad_names_change_nothing(tmp_path: Path, name: str, message: str) -> None:
    steering, _ = with_preset(tmp_path)
    before = (tmp_path / ".tinymorph" / "steering.json").read_bytes()
    with pytest.raises(SteeringError, match=message):
        steering.add_preset(name, torch.ones(16), strength=1, model=ID[0], hook=ID[1], excerpt="")
    if message == "exists already":
        steering.add_preset("other", torch.ones(16), strength=1, model=ID[0], hook=ID[1], excerpt="")
        before = (tmp_path / ".tinymorph" / "steering.json").read_bytes()
    with pytest.raises(SteeringError, match=message):
        steering.rename_preset(steering.presets[-1].name, name)
    assert (tmp_path / ".tinymorph" / "steering.json").read_bytes() == before
    assert len(list((tmp_path / ".tinymorph" / "presets").iterdir())) == len(steering.presets)


@pytest.mark.parametrize("strength", [float("nan"), float("inf"), "1", True])
def test_a_strength_that_is_not_a_finite_number_is_refused(tmp_path: Path, strength: object) -> None:
    steering = SteeringSet(tmp_path)
    with pytest.raises(SteeringError, match="finite number"):
        steering.add_preset("p", torch.ones(16), strength=strength, model="m", hook="h", excerpt="")  # type: ignore
    assert not (tmp_path / ".tinymorph").exists()


def test_a_damaged_vector_file_leaves_that_preset_off_and_the_file_as_it_was(tmp_path: Path) -> None:
    steering, _ = with_preset(tmp_path)
    with_file = steering.vector_path(steering.presets[0])
    assert with_file is not None
    with_file.write_bytes(b"not a safetensors file")
    again = SteeringSet(tmp_path)
    assert again.load_error and "storm scenes" in again.load_error and "damaged" in again.load_error
    assert again.interventions(ID) == [] and again.presets[0].error
    again.put(Steer(Intervention("add", 1), ""))  # another change keeps the preset's entry and its file
    assert json.loads((tmp_path / ".tinymorph" / "steering.json").read_text())["presets"][0]["name"] == "storm scenes"
    assert with_file.read_bytes() == b"not a safetensors file"


@pytest.mark.parametrize("content", ["{not json", '{"steering": 3}', '{"steering": [], "presets": [{"id": "../x"}]}',
                                     '{"steering": [], "presets": [{"id": "0123456789abcdef", "name": ""}]}'])
def test_a_damaged_steering_file_is_kept_aside_not_overwritten(tmp_path: Path, content: str) -> None:
    path = tmp_path / ".tinymorph" / "steering.json"
    path.parent.mkdir()
    path.write_text(content, encoding="utf-8")
    steering = SteeringSet(tmp_path)
    assert steering.load_error and "not a valid steering file" in steering.load_error
    assert steering.entries == [] and steering.presets == [] and path.read_text() == content
    steering.put(Steer(Intervention("add", 2), ""))
    assert path.with_name("steering.json.damaged").read_text() == content
    assert [e["feature"] for e in json.loads(path.read_text())["steering"]] == [2]


def test_a_failed_save_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    steering, _ = with_preset(tmp_path)
    folder = tmp_path / ".tinymorph"
    before = (folder / "steering.json").read_bytes()

    def disk_full(path: Path, data: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr("lsp_server.workspace.write_text", disk_full)
    with pytest.raises(SaveError, match="No space left on device; nothing changed"):
        steering.add_preset("second", torch.ones(16), strength=1, model=ID[0], hook=ID[1], excerpt="")
    with pytest.raises(SaveError, match="nothing changed"):
        steering.rename_preset("storm scenes", "weather")
    with pytest.raises(SaveError):
        steering.put(Steer(Intervention("add", 1), ""))
    with pytest.raises(SaveError):
        steering.remove_preset("storm scenes")
    assert [p.name for p in steering.presets] == ["storm scenes"] and steering.entries == []
    assert (folder / "steering.json").read_bytes() == before
    assert len(list((folder / "presets").iterdir())) == 1  # the second preset's vector file was taken back
    monkeypatch.undo()
    monkeypatch.setattr("steering.runtime.presets.write_bytes", disk_full)
    with pytest.raises(SaveError, match="cannot save the preset"):
        steering.add_preset("third", torch.ones(16), strength=1, model=ID[0], hook=ID[1], excerpt="")
    assert (folder / "steering.json").read_bytes() == before and len(steering.presets) == 1


SAVER = """
import sys
from pathlib import Path
from lsp_server.workspace import Steer, SteeringSet
from steering.runtime.interventions import Intervention
steering = SteeringSet(Path(sys.argv[1]))
print("ready", flush=True)
n = 0
while True:
    n += 1
    steering.put(Steer(Intervention("add", n % 50, strength=float(1 + n % 9)), "x" * (n % 4000)))
"""


def test_a_strength_outside_the_bounds_is_not_saved(tmp_path: Path) -> None:
    from lsp_server.workspace import SteeringError

    steering = SteeringSet(tmp_path)
    with pytest.raises(SteeringError, match="between -10 and 10"):
        steering.put(Steer(Intervention("add", 1, strength=181.0), "loud"))
    assert steering.entries == [] and not (tmp_path / ".tinymorph" / "steering.json").exists()


def test_a_save_killed_midway_leaves_a_whole_steering_file(tmp_path: Path) -> None:
    import random
    import signal
    import subprocess
    import sys
    import time

    steering = SteeringSet(tmp_path)
    steering.put(Steer(Intervention("add", 1, strength=1.0), "first"))
    path = tmp_path / ".tinymorph" / "steering.json"
    rng = random.Random(0)
    kills = 0
    for _ in range(6):
        child = subprocess.Popen([sys.executable, "-c", SAVER, str(tmp_path)], stdout=subprocess.PIPE)
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        time.sleep(rng.uniform(0.01, 0.25))  # hundreds of saves a second: the kill lands in one of them
        child.send_signal(signal.SIGKILL)
        assert child.wait(10) == -signal.SIGKILL
        kills += 1
        reread = SteeringSet(tmp_path)
        assert reread.load_error is None, reread.load_error
        assert len(reread.entries) >= 1 and all(e.intervention.mode == "add" for e in reread.entries)
        assert any(e.intervention.strength > 1 for e in reread.entries)  # the child did save before its end
        json.loads(path.read_text(encoding="utf-8"))
    assert kills == 6


def test_a_document_gets_the_set_of_the_innermost_folder_holding_it(tmp_path: Path) -> None:
    from lsp_server.workspace import Workspaces

    outer, inner, other = tmp_path / "book", tmp_path / "book" / "part", tmp_path / "notes"
    for folder in (outer, inner, other):
        folder.mkdir(parents=True, exist_ok=True)
    (other / ".tinymorph").mkdir()
    (other / ".tinymorph" / "steering.json").write_text("{not json", encoding="utf-8")
    told: list[str] = []
    sets = Workspaces(told.append)
    folders = [outer, inner, other]
    assert sets.for_uri((inner / "ch1.md").as_uri(), folders).folder == inner
    assert sets.for_uri((outer / "ch0.md").as_uri(), folders).folder == outer
    assert sets.for_uri((outer / "ch0.md").as_uri(), folders) is sets.for_uri(outer.as_uri(), folders)
    assert sets.for_uri("untitled:Untitled-1", folders).folder == outer  # no path: the first folder's
    assert sets.for_uri((tmp_path / "elsewhere.md").as_uri(), folders).folder == outer
    assert sets.for_uri(None, []).folder is None  # no folder: in memory
    assert told == []
    for _ in range(2):
        assert sets.for_uri((other / "n.md").as_uri(), folders).folder == other
    assert len(told) == 1 and "not a valid steering file" in told[0]  # said once, when the set is made
