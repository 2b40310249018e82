"""Labels from Neuronpedia explanation exports: the file forms read, short forms, refusals of another SAE's export
(nothing written), and `tinymorph import-labels` writing labels.json beside the SAE, shown in the feature's card."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch

from steering.cli import main
from steering.features.neuronpedia import ExportError, check_matches, merge_labels, read_export, short_form
from steering.sae.autoencoder import SAE, HookPoint


def rows(sae_id: str = "2-res-jb", model: str = "gpt2-small", features=(3, 7, 127)) -> list[dict]:
    said = {3: "references to the color blue", 7: "mentions of weather conditions, especially rain",
            127: "words related to cooking and recipes"}
    return [{"modelId": model, "layer": sae_id, "index": str(f), "description": said.get(f, "the word the"),
             "explanationModelName": "gpt-4o-mini", "typeName": "oai_token-act-pair"} for f in features]


@pytest.fixture()
def sae_dir(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    sae = SAE(64, 128, "topk", k=8, hook=HookPoint(2, "resid_post"))
    return sae.save(tmp_path / "tiny-sae")


def test_short_forms_drop_the_lead_in_and_the_trailing_clause() -> None:
    assert short_form("references to the color blue") == "the color blue"
    assert short_form("mentions of weather conditions, especially rain") == "weather conditions"
    assert short_form("words related to cooking and recipes") == "cooking and recipes"
    assert short_form(" Terms associated with legal proceedings.") == "legal proceedings"
    assert short_form("the word 'the'") == "'the'"
    assert short_form("grief") == "grief"
    assert len(short_form("a very long explanation of a feature that goes on and on").split()) <= 4


def test_every_form_of_an_export_is_read(tmp_path: Path) -> None:
    plain = tmp_path / "a.json"
    plain.write_text(json.dumps(rows()), encoding="utf-8")
    wrapped = tmp_path / "b.json"
    wrapped.write_text(json.dumps({"explanations": rows()}), encoding="utf-8")
    lines = tmp_path / "c.jsonl.gz"
    lines.write_bytes(gzip.compress("\n".join(json.dumps(r) for r in rows()).encode()))
    for path in (plain, wrapped, lines):
        export = read_export([path])
        assert export.model_id == "gpt2-small" and export.sae_id == "2-res-jb" and export.layer == 2
        assert [e.feature for e in export.explanations] == [3, 7, 127]
        assert export.explanations[0].author == "gpt-4o-mini"


def test_bad_exports_are_refused_with_a_clear_error(tmp_path: Path) -> None:
    def export_of(content: str) -> Path:
        path = tmp_path / "x.json"
        path.write_text(content, encoding="utf-8")
        return path

    with pytest.raises(ExportError, match="line 2: not JSON"):
        read_export([export_of(json.dumps(rows()[0]) + "\n{oops\n")])
    with pytest.raises(ExportError, match="lacks modelId"):
        read_export([export_of(json.dumps([{"index": 1}]))])
    with pytest.raises(ExportError, match="not a number"):
        read_export([export_of(json.dumps([{**rows()[0], "index": "x"}]))])
    with pytest.raises(ExportError, match="several SAEs"):
        read_export([export_of(json.dumps(rows() + rows("5-res-jb")))])
    assert read_export([export_of(json.dumps(rows() + rows("5-res-jb")))], "5-res-jb").layer == 5
    with pytest.raises(ExportError, match="no explanations"):
        read_export([export_of("[]")])


def test_an_export_for_another_sae_is_refused() -> None:
    check_matches(read_export_of(rows()), 128, 2)
    with pytest.raises(ExportError, match="layer 20"):
        check_matches(read_export_of(rows("20-gemmascope-res-16k")), 16384, 12)
    with pytest.raises(ExportError, match="16,384 features"):
        check_matches(read_export_of(rows("2-gemmascope-res-16k")), 128, 2)
    with pytest.raises(ExportError, match="feature 127"):
        check_matches(read_export_of(rows()), 64, 2)
    assert read_export_of(rows("20-gemmascope-res-1m")).width == 1 << 20


def read_export_of(objects: list[dict]):
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "e.json"
        path.write_text(json.dumps(objects), encoding="utf-8")
        return read_export([path])


def test_merging_keeps_what_else_the_labels_say() -> None:
    before = {"tokens": 5000, "features": {"3": {"label": "sky", "contexts": [{"text": "a «blue» sky"}],
                                                 "names": ["Blue"]}}}
    merged, count = merge_labels(before, read_export_of(rows()))
    assert count == 3 and merged["tokens"] == 5000
    three = merged["features"]["3"]
    assert three["label"] == "the color blue" and three["contexts"] == [{"text": "a «blue» sky"}]
    assert three["explanation"] == "references to the color blue" and "names" not in three
    assert three["source"] == "Neuronpedia gpt2-small/2-res-jb (written by gpt-4o-mini)"
    assert before["features"]["3"]["label"] == "sky", "the input is not changed"


def test_import_labels_writes_beside_the_sae_and_cards_show_the_explanation(capsys, sae_dir: Path, tmp_path: Path,
                                                                             tiny_model_dir) -> None:
    export = tmp_path / "export.jsonl"
    export.write_text("\n".join(json.dumps(r) for r in rows()), encoding="utf-8")
    assert main(["import-labels", str(export), "--sae", str(sae_dir), "--json"]) == 0
    said = json.loads(capsys.readouterr().out)
    assert said["features"] == 3 and Path(said["labels"]) == sae_dir / "labels.json"

    from steering.config import EngineConfig
    from steering.engine import Engine

    engine = Engine.load(EngineConfig(model=str(tiny_model_dir), sae=str(sae_dir)))
    card = engine.cards([7])[7]
    assert card.label == "weather conditions" and card.explanation.startswith("mentions of weather")
    assert "Neuronpedia gpt2-small/2-res-jb" in card.source

    # another SAE's export: one error line, labels.json as it was
    before = (sae_dir / "labels.json").read_bytes()
    other = tmp_path / "other.json"
    other.write_text(json.dumps(rows("9-res-jb")), encoding="utf-8")
    assert main(["import-labels", str(other), "--sae", str(sae_dir)]) == 2
    err = capsys.readouterr().err
    assert "layer 9" in err and "Nothing was written" in err and "Traceback" not in err
    assert (sae_dir / "labels.json").read_bytes() == before
    assert sorted(p.name for p in sae_dir.iterdir()) == sorted(["cfg.json", "sae_weights.safetensors",
                                                                "labels.json"]), "no temporary file left"


def test_hover_shows_the_whole_explanation_and_its_source() -> None:
    from types import SimpleNamespace

    from lsp_server.hover import render
    from steering.engine import FeatureCard
    from steering.features.annotate import FeatureValue, TokenFeatures

    cards = {7: FeatureCard("weather conditions", ("rain",), None, (), "mentions of weather conditions, especially rain",
                            "Neuronpedia gpt2-small/2-res-jb (written by gpt-4o-mini)"),
             9: FeatureCard("boats", ("sail",))}
    tok = TokenFeatures(4, 11, " rain", 20, 25, (FeatureValue(7, 3.5), FeatureValue(9, 1.0)))
    text = render(SimpleNamespace(cards=cards), tok, SimpleNamespace(watched=lambda feature: None))  # type: ignore[arg-type]
    assert "- **weather conditions** 3.50 · leads to *rain*" in text
    assert "**weather conditions**: mentions of weather conditions, especially rain *(Neuronpedia gpt2-small/2-res-jb " \
           "(written by gpt-4o-mini))*" in text
    assert "**boats**:" not in text, "no explanation, no line"
