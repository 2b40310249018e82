"""A feature map of a document: where its features fire, as one self-contained HTML page (and a PNG overview).

The page holds the text, each paragraph's most specific features in the margin (ranked and labelled as the hints
are), and the activations behind them: a click on a feature colours every token by that feature's activation (the
document's peak is full colour), a hover on a token lists its features. No network: the styles, the script and
the data are in the file; the text is inserted as text, never as markup. It reads in light and dark mode
(`prefers-color-scheme`), and `#f=<feature>` in its address selects that feature on load.
"""

from __future__ import annotations

import bisect
import functools
import html
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from steering.atomic import replacing
from steering.errors import TinymorphError

from .annotate import Annotation
from .ranking import pick_hints

HOVER_FEATURES = 6
"""Features listed for a token on hover."""
TEMPLATE = "templates/featuremap.html"
"""The page, beside this module."""


@dataclass(frozen=True)
class MapFeature:
    """A feature shown in the margin: its label, examples from the corpus, and where it fires in this document."""

    feature: int
    label: str
    examples: tuple[str, ...]
    promoted: tuple[str, ...]
    peak: float
    """Its highest activation in this document (full colour)."""
    values: tuple[tuple[int, float], ...]
    """(token index, activation) of every token where it fires."""


@dataclass(frozen=True)
class MapParagraph:
    start: int
    end: int
    features: tuple[tuple[int, str, float], ...]
    """(feature, label shown, score) of the paragraph's most specific labelled features, as its hint ranks them."""


@dataclass(frozen=True)
class FeatureMap:
    title: str
    source: str
    """Model and SAE, in a few words."""
    text: str
    tokens: tuple[tuple[int, int], ...]
    """Character span of each token."""
    token_features: tuple[tuple[tuple[int, float], ...], ...]
    """Per token: (feature, activation) of its labelled, hintable features, strongest first."""
    paragraphs: tuple[MapParagraph, ...]
    features: dict[int, MapFeature]
    labels: dict[int, str]
    """Labels of every feature named in `token_features`."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title, "source": self.source, "text": self.text,
            "tokens": [list(t) for t in self.tokens],
            "tf": [[[f, round(a, 3)] for f, a in feats] for feats in self.token_features],
            "paragraphs": [{"s": p.start, "e": p.end, "f": [[f, label, round(score, 2)] for f, label, score in
                                                            p.features]} for p in self.paragraphs],
            "features": {str(f): {"label": m.label, "examples": list(m.examples), "promoted": list(m.promoted),
                                  "peak": round(m.peak, 3), "values": [[i, round(a, 3)] for i, a in m.values]}
                         for f, m in self.features.items()},
            "labels": {str(f): label for f, label in self.labels.items()},
        }


def build_map(title: str, source: str, annotation: Annotation, feats: torch.Tensor, labels: Mapping[int, str],
              promoted: Mapping[int, tuple[str, ...]], examples: Callable[[int], tuple[str, ...]], *,
              per_paragraph: int = 4, names: Mapping[int, tuple[str, ...]] | None = None) -> FeatureMap:
    """The map of `annotation` (its spans are the paragraphs), with the codes `feats` `[n_tokens, d_sae]` it was
    made from and the features' labels (features without one are not shown)."""
    paragraphs = []
    shown: list[int] = []
    for span in annotation.paragraphs:
        picked = pick_hints(span.features, labels, per_paragraph, names=names,
                            text=annotation.text[span.start:span.end])
        paragraphs.append(MapParagraph(span.start, span.end, tuple((f.feature, label, f.score) for f, label in picked)))
        shown += [f.feature for f, _ in picked]
    features = {}
    for f in dict.fromkeys(shown):
        column = feats[:, f]
        fired = column.nonzero().flatten()
        features[f] = MapFeature(f, labels[f], examples(f), tuple(promoted.get(f, ())), float(column.max()),
                                 tuple(zip(fired.tolist(), column[fired].tolist(), strict=True)))
    hintable = {f for f, w in annotation.weights.items() if w.hintable}
    per_token = []
    for i, tok in enumerate(annotation.tokens):
        mine = {f.feature: f.activation for f in tok.features if labels.get(f.feature) and f.feature in hintable}
        for f in features:
            value = float(feats[i, f])
            if value > 0:
                mine[f] = value
        per_token.append(tuple(sorted(mine.items(), key=lambda x: -x[1])[:HOVER_FEATURES]))
    named = {f for feats_ in per_token for f, _ in feats_}
    return FeatureMap(title, source, annotation.text, tuple((t.start, t.end) for t in annotation.tokens),
                      tuple(per_token), tuple(paragraphs), features, {f: labels[f] for f in sorted(named)})


def check_output(path: str | Path, suffix: str) -> Path:
    """`path` as a file tinymorph may write: not a folder, in a folder that exists and is writable, ending in
    `suffix`; TinymorphError saying why not."""
    out = Path(path).expanduser()
    if out.is_dir():
        raise TinymorphError(f"{out} is a folder; give a file name ending in {suffix}.")
    if out.suffix.lower() != suffix:
        raise TinymorphError(f"{out} should end in {suffix}.")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise TinymorphError(f"Cannot write {out}: the folder {parent} does not exist.")
    if not os.access(parent, os.W_OK | os.X_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise TinymorphError(f"Cannot write {out}: permission denied.")
    return out


def write_html(fmap: FeatureMap, path: str | Path) -> Path:
    """Write the map's page to `path` (checked by `check_output`), atomically: a failure leaves no partial file."""
    out = check_output(path, ".html")
    try:
        with replacing(out) as tmp:
            tmp.write_text(render_html(fmap), encoding="utf-8")
    except OSError as exc:
        raise TinymorphError(f"Cannot write {out}: {exc.strerror or exc}.") from None
    return out


def write_png(fmap: FeatureMap, path: str | Path, *, features: int = 12) -> Path:
    """A heat map of the document's strongest margin features (rows) by paragraph (columns): summed activation,
    each row scaled to its own maximum."""
    out = check_output(path, ".png")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise TinymorphError("--png needs matplotlib (pip install 'tinymorph[plot]').") from None
    totals: dict[int, float] = {}
    for p in fmap.paragraphs:
        for f, _, score in p.features:
            totals[f] = totals.get(f, 0.0) + score
    rows = sorted(totals, key=lambda f: -totals[f])[:features]
    if not rows:
        raise TinymorphError("No labelled feature fires in this text: there is nothing to plot.")
    starts = [p.start for p in fmap.paragraphs]
    grid = torch.zeros(len(rows), len(fmap.paragraphs))
    for r, f in enumerate(rows):  # each row: the feature's summed activation in every paragraph, not only its own
        for i, value in fmap.features[f].values:
            j = bisect.bisect_right(starts, max(fmap.tokens[i][1] - 1, fmap.tokens[i][0])) - 1
            if j >= 0 and fmap.tokens[i][0] < fmap.paragraphs[j].end:
                grid[r, j] += value
    grid = grid / grid.max(1, keepdim=True).values.clamp_min(1e-9)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(fmap.paragraphs) + 3), 0.4 * len(rows) + 1.5))
    ax.imshow(grid.numpy(), aspect="auto", cmap="Oranges", vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks(range(len(rows)), [fmap.features[f].label[:40] for f in rows])
    ax.set_xticks(range(len(fmap.paragraphs)), [str(j + 1) for j in range(len(fmap.paragraphs))])
    ax.set_xlabel("paragraph")
    ax.set_title(f"{fmap.title}: where its strongest features are", fontsize=10)
    fig.tight_layout()
    try:
        with replacing(out) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
    except OSError as exc:
        raise TinymorphError(f"Cannot write {out}: {exc.strerror or exc}.") from None
    finally:
        plt.close(fig)
    return out


def render_html(fmap: FeatureMap) -> str:
    """The self-contained page of `fmap`: the template (`templates/featuremap.html`) with its title and data."""
    data = json.dumps(fmap.to_dict(), ensure_ascii=False, separators=(",", ":")).replace("</", "<\\/")
    return (page_template().replace("{{title}}", html.escape(fmap.title))
            .replace("{{data}}", data))


@functools.cache
def page_template() -> str:
    """The page's HTML, styles and script (package data, read once), with `{{title}}` and `{{data}}` to fill in."""
    return resources.files(__package__).joinpath(TEMPLATE).read_text(encoding="utf-8")
