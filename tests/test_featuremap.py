"""Writer's tools in the engine: watched features kept on every token, features ranked by example, the feature map
(its page, its PNG, the CLI), and bad output paths refused with nothing written."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from steering.cli import main
from steering.config import EngineConfig
from steering.engine import Engine
from steering.errors import TinymorphError
from steering.features.annotate import annotate, encode_document
from steering.features.featuremap import render_html, write_html, write_png
from steering.features.ranking import Specificity, rank_passage
from steering.sae.autoencoder import SAE, HookPoint
from tests.lsp.conftest import assets  # noqa: F401  (the tiny model and an SAE with labels, trained here)

TEXT = ("The rain fell on the quiet harbour and the boats knocked together.\n\n"
        "She read the letter again. The gulls cried over the sand.\n\n"
        "At night the storm came back, and the light went dark.\n")


@pytest.fixture(scope="module")
def engine(assets) -> Engine:  # noqa: F811
    return Engine.load(EngineConfig(model=assets["model"], sae=assets["sae"], device="cpu", dtype="float32"))


def page_data(page: str) -> dict:
    return json.loads(re.search(r'<script type="application/json" id="tm-data">(.*?)</script>', page, re.S)
                      .group(1).replace("<\\/", "</"))


def test_watched_features_are_kept_wherever_they_fire(llama) -> None:
    torch.manual_seed(0)
    sae = SAE(64, 96, "standard", hook=HookPoint(2, "resid_pre"))
    sae.W_enc.data.normal_(0, 0.3)
    sae.b_enc.data.fill_(-0.1)
    _, _, feats = encode_document(llama, sae, TEXT)
    plain = annotate(llama, sae, TEXT, top_k=2)
    # a feature that fires often but is rarely among a token's top 2
    fired = (feats > 0).sum(0)
    top2 = torch.zeros(96, dtype=torch.long)
    for row in feats.topk(2, dim=-1).indices:
        top2[row] += 1
    watched = int(torch.argmax(fired - 3 * top2))
    assert int(fired[watched]) > int(top2[watched])
    ann = annotate(llama, sae, TEXT, top_k=2, watch=[watched, 10_000])  # an id this SAE lacks is left out
    for tok, before in zip(ann.tokens, plain.tokens, strict=True):
        value = float(feats[tok.index, watched])
        mine = {f.feature: f.activation for f in tok.features}
        assert (watched in mine) == (value > 0)
        if value > 0:
            assert mine[watched] == pytest.approx(value)
        assert {f.feature for f in before.features} <= set(mine)
        assert [f.activation for f in tok.features] == sorted(mine.values(), reverse=True)
        assert 10_000 not in mine


def test_a_passage_ranks_what_is_specific_to_it_above_what_the_whole_text_has() -> None:
    sae = SAE(8, 4, "standard")
    spec = Specificity.neutral(sae)
    feats = torch.zeros(10, 4)
    inside = torch.zeros(10, dtype=torch.bool)
    inside[6:9] = True
    feats[:, 0] = 2.0          # everywhere: the document is about it
    feats[6:9, 1] = 1.5        # only in the passage
    feats[6:9, 2] = 0.1        # only in the passage, but faint
    feats[:6, 3] = 3.0         # only around the passage
    ranked = rank_passage(feats, inside, spec, top=4)
    assert [r.feature for r in ranked] == [1, 0, 2]
    assert ranked[0].share == pytest.approx(1.0) and ranked[1].share == pytest.approx(0.5)
    assert ranked[0].peak == pytest.approx(1.5)
    whole = rank_passage(feats, torch.ones(10, dtype=torch.bool), spec, top=4)
    assert all(r.share == pytest.approx(1.0) for r in whole) and [r.feature for r in whole] == [0, 3, 1, 2]
    assert rank_passage(feats, torch.zeros(10, dtype=torch.bool), spec, top=4) == []
    hidden = Specificity.neutral(sae)
    hidden.hintable[1] = False  # dense, punctuation and position features are never offered
    assert 1 not in [r.feature for r in rank_passage(feats, inside, hidden, top=4)]


def test_features_by_example_are_labelled_ranked_and_come_with_examples(engine: Engine) -> None:
    start = TEXT.index("She read")
    end = TEXT.index("sand.") + 5
    found = engine.features_by_example(TEXT, start, end, top=5)
    assert 1 <= len(found) <= 5
    assert [f.score for f in found] == sorted((f.score for f in found), reverse=True)
    for f in found:
        assert f.label and 0 < f.share <= 1 and f.peak > 0
        assert f.examples and all("\u00ab" in x and "\u00bb" in x for x in f.examples)
        assert f.to_dict()["feature"] == f.feature
    words = [w for f in found for w in f.label.split(", ")]
    assert len(words) == len(set(words))  # no label repeats a better-ranked one's words, as in hints
    whole = engine.features_by_example(TEXT[start:end], top=5)
    assert whole and all(f.share == pytest.approx(1.0) for f in whole)
    for start, end in ((0, 0), (3, 2), (0, len(TEXT) + 5)):
        with pytest.raises(TinymorphError, match="empty"):
            engine.features_by_example(TEXT, start, end)
    with pytest.raises(TinymorphError, match="empty"):
        engine.features_by_example("   \n\n ")


def test_the_map_page_is_self_contained_and_holds_every_activation(engine: Engine) -> None:
    text = TEXT + "\n</script><script>alert(1)</script> & <b>bold</b>\n"
    fmap = engine.feature_map(text, title="notes <1>.md")
    page = render_html(fmap)
    assert page.count("</script>") == 2  # the data's own closing tags are escaped: the text cannot end it
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page), "the page loads nothing from outside"
    assert "@media (prefers-color-scheme: dark)" in page and "notes &lt;1&gt;.md" in page
    data = page_data(page)
    assert data["text"] == text and len(data["paragraphs"]) == 4
    _, offsets, feats = encode_document(engine.lm, engine.sae, text)
    assert data["tokens"] == [list(o) for o in offsets]
    assert data["features"], "some paragraph has a labelled feature"
    for key, feature in data["features"].items():
        column = feats[:, int(key)]
        assert feature["label"]
        assert {i for i, _ in feature["values"]} == set(column.nonzero().flatten().tolist())
        assert feature["peak"] == pytest.approx(float(column.max()), abs=1e-3)
    margin = [f for p in data["paragraphs"] for f, _, _ in p["f"]]
    assert set(map(str, margin)) == set(data["features"])
    assert all(len(p["f"]) <= 4 for p in data["paragraphs"])
    for i, token_feats in enumerate(data["tf"]):
        for f, a in token_feats:
            assert str(f) in data["labels"] and a == pytest.approx(float(feats[i, f]), abs=1e-3)
    empty = page_data(render_html(engine.feature_map("")))
    assert empty["paragraphs"] == [] and empty["tokens"] == []


def test_map_files_are_written_whole_or_not_at_all(engine: Engine, tmp_path: Path) -> None:
    fmap = engine.feature_map(TEXT, title="notes.md")
    out = write_html(fmap, tmp_path / "map.html")
    assert page_data(out.read_text(encoding="utf-8"))["text"] == TEXT
    png = write_png(fmap, tmp_path / "map.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "folder.html").mkdir()
    for bad, message in ((tmp_path / "folder.html", "is a folder"), (tmp_path / "nowhere" / "m.html", "does not exist"),
                         (tmp_path / "map.txt", "should end in .html")):
        with pytest.raises(TinymorphError, match=message):
            write_html(fmap, bad)
    assert (tmp_path / "folder.html").is_dir() and not list((tmp_path / "folder.html").iterdir())
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(TinymorphError, match="permission denied"):
            write_html(fmap, locked / "m.html")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.html", "map.html", "map.png"] + (
        ["locked"] if os.geteuid() != 0 else [])


def test_cli_annotate_writes_the_map_and_search_finds_by_example(capsys, assets, tmp_path: Path) -> None:  # noqa: F811
    doc = tmp_path / "notes.md"
    doc.write_text(TEXT, encoding="utf-8")
    engine_args = ["--model", assets["model"], "--sae", assets["sae"], "--device", "cpu"]
    code = main(["annotate", str(doc), "--html", str(tmp_path / "m.html"), "--png", str(tmp_path / "m.png"),
                 *engine_args, "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    result = json.loads(out.out)
    assert result["written"] == [str(tmp_path / "m.html"), str(tmp_path / "m.png")] and result["paragraphs"] == 3
    assert page_data((tmp_path / "m.html").read_text(encoding="utf-8"))["title"] == "notes.md"
    example = tmp_path / "example.txt"
    example.write_text("The gulls cried over the sand.", encoding="utf-8")
    code = main(["features", "search", "--example", str(example), "--limit", "3", *engine_args, "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    hits = json.loads(out.out)["results"]
    assert 1 <= len(hits) <= 3 and all(h["label"] and h["examples"] for h in hits)
    proc = subprocess.run([sys.executable, "-m", "steering.cli", "features", "search", "--example", "-", "--limit", "2",
                           *engine_args], input="The gulls cried over the sand.", capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("#") and "\u00ab" in proc.stdout


@pytest.mark.parametrize(("argv", "message"), [
    (["annotate", "DOC", "--html", "DIR"], "is a folder"),
    (["annotate", "DOC", "--html", "DIR/missing/m.html"], "does not exist"),
    (["annotate", "DOC", "--png", "DIR/m.html"], "should end in .png"),
    (["features", "search", "rain", "--example", "DOC"], "one of them"),
    (["features", "search"], "one of them"),
    (["features", "search", "--example", "EMPTY"], "is empty"),
    (["features", "search", "--example", "DIR/none.txt"], "No such file"),
])
def test_cli_bad_map_and_example_arguments_are_one_line_and_write_nothing(capsys, tmp_path: Path, argv, message) -> None:
    (tmp_path / "doc.md").write_text(TEXT, encoding="utf-8")
    (tmp_path / "empty.txt").write_text("  \n", encoding="utf-8")
    swap = {"DOC": str(tmp_path / "doc.md"), "EMPTY": str(tmp_path / "empty.txt")}
    args = [swap.get(a, a.replace("DIR", str(tmp_path))) for a in argv]
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main([*args, "--model", "/nonexistent/model"])  # refused before any model would load
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_the_page_template_is_package_data() -> None:
    """The page comes from steering/features/templates/ through importlib.resources, and pyproject ships it."""
    from importlib import resources

    from steering.features.featuremap import TEMPLATE, page_template

    page = page_template()
    assert page == resources.files("steering.features").joinpath(TEMPLATE).read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.count("{{title}}") == 1 and page.count("{{data}}") == 1
    pyproject = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text(encoding="utf-8")
    assert '"steering.features" = ["templates/*.html"]' in pyproject
