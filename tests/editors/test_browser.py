"""The feature map in a real browser: `tinymorph annotate FILE --html` on the default model, opened in headless
Chromium (Debian's package, installed when missing and running as root). A real click on a feature in the margin
colours every token where it fires and no other; a hover lists a token's features; dark mode reads dark; a second
click clears; `#f=N` selects on load. Screenshots go to the test's folder (and to `$TINYMORPH_SCREENSHOTS`, when
set: that is how the README's picture is made)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .browser import Browser, ensure_chromium

pytestmark = pytest.mark.slow

STORY = """The rain had not stopped for three days. Water ran down the gutters of the old harbour town, and the fishing \
boats stayed tied to the quay, knocking against each other in the grey swell.

Martha counted the coins in the tin box again. Eleven shillings and a few pennies: not enough for the rent, and not \
nearly enough for the doctor. She closed the lid and pushed it back under the loose floorboard.

At the chapel on Sunday the minister spoke of faith and patience, of the Lord who feeds the sparrows. Martha bowed \
her head and prayed for her son, who had gone to sea in October and had not written since.
"""


@pytest.fixture(scope="module")
def feature_map(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("map")
    (folder / "harbour.md").write_text(STORY, encoding="utf-8")
    out = folder / "harbour.html"
    proc = subprocess.run([sys.executable, "-m", "steering.cli", "annotate", str(folder / "harbour.md"), "--html",
                           str(out), "--json"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["written"] == [str(out)]
    data = json.loads(re.search(r'id="tm-data">(.*?)</script>', out.read_text(encoding="utf-8"), re.S).group(1)
                      .replace("<\\/", "</"))
    return out, data


@pytest.fixture
def browser(tmp_path: Path):
    chromium = Browser(ensure_chromium(), tmp_path / "profile")
    yield chromium
    chromium.close()


def keep(shot: Path) -> None:
    where = os.environ.get("TINYMORPH_SCREENSHOTS")
    if where:
        Path(where).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(where) / shot.name)


COLOURED = "[...document.querySelectorAll('.t')].filter(s => s.style.backgroundColor).map(s => Number(s.dataset.i))"


def test_a_click_on_a_feature_colours_the_text_where_it_fires(feature_map, browser: Browser, tmp_path: Path) -> None:
    page, data = feature_map
    browser.open(page.as_uri())
    assert browser.evaluate("document.querySelectorAll('.row').length") == 3
    assert browser.evaluate("document.querySelectorAll('.chip').length") >= 6
    assert browser.evaluate(COLOURED) == []
    labels = browser.evaluate("[...document.querySelectorAll('.chip')].map(c => c.textContent)")
    assert all(re.fullmatch(r"[^\W\d_]+(?:['’-][^\W\d_]+)*(?:, [^\W\d_]+(?:['’-][^\W\d_]+)*)*", x) for x in labels), labels
    # the first paragraph's first feature, clicked with the mouse
    chip = browser.evaluate("""(() => { const c = document.querySelector('.row .chip');
        c.scrollIntoView({block: 'center'}); const r = c.getBoundingClientRect();
        return {x: r.x + r.width / 2, y: r.y + r.height / 2, f: c.dataset.f}; })()""")
    browser.click(chip["x"], chip["y"])
    browser.wait(f"document.body.dataset.selected === '{chip['f']}'")
    fired = {i for i, _ in data["features"][chip["f"]]["values"]}
    rendered = set(browser.evaluate("[...document.querySelectorAll('.t')].map(s => Number(s.dataset.i))"))
    coloured = browser.evaluate(COLOURED)
    assert coloured and set(coloured) == fired & rendered
    browser.wait(f"getComputedStyle(document.querySelector('.t[data-i=\"{coloured[0]}\"]')).backgroundColor "
                 "!== 'rgba(0, 0, 0, 0)'", timeout=5)  # after the colour's short transition
    assert browser.evaluate("document.querySelector('.chip.on').dataset.f") == chip["f"]
    assert data["features"][chip["f"]]["label"] in browser.evaluate("document.getElementById('panel').textContent")
    assert browser.evaluate("location.hash") == f"#f={chip['f']}"
    # a hover over a coloured token lists its features, the clicked one among them
    token = browser.evaluate(f"""(() => {{ const r = document.querySelector('.t[data-i="{coloured[0]}"]')
        .getBoundingClientRect(); return {{x: r.x + r.width / 2, y: r.y + r.height / 2}}; }})()""")
    browser.move(token["x"], token["y"])
    browser.wait("getComputedStyle(document.getElementById('tip')).display === 'block'")
    tip = browser.evaluate("document.getElementById('tip').textContent")
    assert data["features"][chip["f"]]["label"] in tip
    keep(browser.screenshot(tmp_path / "feature-map.png"))
    assert (tmp_path / "feature-map.png").stat().st_size > 10_000
    # dark mode: dark page, light text
    browser.dark(True)
    background = browser.evaluate("getComputedStyle(document.body).backgroundColor")
    colour = browser.evaluate("getComputedStyle(document.body).color")
    assert luminance(background) < 0.2 < 0.7 < luminance(colour), (background, colour)
    keep(browser.screenshot(tmp_path / "feature-map-dark.png"))
    browser.dark(False)
    assert luminance(browser.evaluate("getComputedStyle(document.body).backgroundColor")) > 0.9
    # the same chip again: cleared
    again = browser.evaluate("""(() => { const r = document.querySelector('.chip.on').getBoundingClientRect();
        return {x: r.x + r.width / 2, y: r.y + r.height / 2}; })()""")
    browser.click(again["x"], again["y"])
    browser.wait("document.body.dataset.selected === ''")
    assert browser.evaluate(COLOURED) == [] and browser.evaluate("document.querySelectorAll('.chip.on').length") == 0


def test_an_address_with_a_feature_selects_it_on_load(feature_map, browser: Browser) -> None:
    page, data = feature_map
    feature = next(iter(data["features"]))
    browser.open(f"{page.as_uri()}#f={feature}")
    assert browser.evaluate("document.body.dataset.selected") == feature
    assert set(browser.evaluate(COLOURED)) <= {i for i, _ in data["features"][feature]["values"]}
    assert browser.evaluate(COLOURED)


def luminance(css: str) -> float:
    """Relative brightness (0 to 1) of a CSS `rgb(...)` colour."""
    r, g, b = (int(v) / 255 for v in re.findall(r"\d+", css)[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b
