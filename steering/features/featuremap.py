"""A feature map of a document: where its features fire, as one self-contained HTML page (and a PNG overview).

The page holds the text, each paragraph's most specific features in the margin (ranked and labelled as the hints
are), and the activations behind them: a click on a feature colours every token by that feature's activation (the
document's peak is full colour), a hover on a token lists its features. No network: the styles, the script and
the data are in the file; the text is inserted as text, never as markup. It reads in light and dark mode
(`prefers-color-scheme`), and `#f=<feature>` in its address selects that feature on load.
"""

from __future__ import annotations

import bisect
import html
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from steering.atomic import replacing
from steering.errors import TinymorphError

from .annotate import Annotation
from .ranking import pick_hints

HOVER_FEATURES = 6
"""Features listed for a token on hover."""


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
              per_paragraph: int = 4) -> FeatureMap:
    """The map of `annotation` (its spans are the paragraphs), with the codes `feats` `[n_tokens, d_sae]` it was
    made from and the features' labels (features without one are not shown)."""
    paragraphs = []
    shown: list[int] = []
    for span in annotation.paragraphs:
        picked = pick_hints(span.features, labels, per_paragraph)
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
    """The self-contained page of `fmap`."""
    data = json.dumps(fmap.to_dict(), ensure_ascii=False, separators=(",", ":")).replace("</", "<\\/")
    return (PAGE.replace("{{title}}", html.escape(fmap.title))
            .replace("{{data}}", data))


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<title>{{title}} · tinymorph feature map</title>
<style>
:root { --bg: #fdfcf9; --fg: #1f2328; --muted: #6a6f76; --line: #e4e1da; --chip: #f1eee7; --chip-on: #1f2328;
        --chip-on-fg: #fdfcf9; --hl: 234 120 20; --tip: #ffffff; --shadow: rgba(0,0,0,.12); }
@media (prefers-color-scheme: dark) {
  :root { --bg: #16181c; --fg: #e6e3dc; --muted: #9aa0a8; --line: #2c3036; --chip: #23272d; --chip-on: #e6e3dc;
          --chip-on-fg: #16181c; --hl: 255 150 50; --tip: #23272d; --shadow: rgba(0,0,0,.5); }
}
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
       font: 17px/1.65 Georgia, "Iowan Old Style", "Times New Roman", serif; }
header { position: sticky; top: 0; z-index: 2; background: var(--bg); border-bottom: 1px solid var(--line);
         padding: 12px 28px; font: 14px/1.4 system-ui, sans-serif; }
header h1 { font-size: 17px; margin: 0 0 2px; }
header .source, .hint { color: var(--muted); }
#panel { margin-top: 8px; min-height: 1.4em; }
#panel .examples { color: var(--muted); margin: 4px 0 0; padding-left: 18px; }
#panel .examples li { margin: 1px 0; }
#panel .examples b { color: var(--fg); background: rgb(var(--hl) / .25); border-radius: 3px; }
main { max-width: 1100px; margin: 0 auto; padding: 18px 28px 80px; }
.row { display: grid; grid-template-columns: minmax(0, 1fr) 260px; gap: 28px; padding: 10px 0;
       border-bottom: 1px dashed var(--line); }
.para { white-space: pre-wrap; overflow-wrap: anywhere; }
aside { font: 13px/1.35 system-ui, sans-serif; display: flex; flex-direction: column; gap: 5px; }
.chip { all: unset; cursor: pointer; background: var(--chip); border-radius: 6px; padding: 4px 8px;
        display: flex; flex-direction: column; gap: 3px; }
.chip:hover, .chip:focus-visible { outline: 2px solid rgb(var(--hl)); }
.chip.on { background: var(--chip-on); color: var(--chip-on-fg); }
.bar { height: 3px; border-radius: 2px; background: rgb(var(--hl)); }
.t { border-radius: 3px; transition: background-color .12s; }
#tip { position: fixed; display: none; z-index: 3; background: var(--tip); color: var(--fg); border-radius: 8px;
       box-shadow: 0 4px 18px var(--shadow); padding: 8px 10px; font: 13px/1.4 system-ui, sans-serif;
       max-width: 320px; pointer-events: none; }
#tip .tok { font-weight: 600; margin-bottom: 4px; }
#tip .f { display: grid; grid-template-columns: 1fr 60px; gap: 8px; align-items: center; }
#tip .f .bar { height: 5px; }
.empty { color: var(--muted); font-style: italic; }
@media (max-width: 760px) { .row { grid-template-columns: 1fr; gap: 6px; } }
</style>
</head>
<body>
<header>
  <h1 id="title"></h1>
  <div class="source" id="source"></div>
  <div id="panel"><span class="hint">Click a feature in the margin to see where it fires; hover a word to see
    its features.</span></div>
</header>
<main id="doc"></main>
<div id="tip"></div>
<script type="application/json" id="tm-data">{{data}}</script>
<script>
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("tm-data").textContent);
  const el = (tag, cls, text) => {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  };
  document.getElementById("title").textContent = data.title;
  document.getElementById("source").textContent = data.source;
  const doc = document.getElementById("doc");
  const spans = data.tokens.map(() => []);
  const chips = {};
  let selected = null;
  if (!data.paragraphs.length) doc.appendChild(el("p", "empty", "This document has no text to map."));
  data.paragraphs.forEach((p) => {
    const row = el("section", "row");
    const para = el("div", "para");
    let at = p.s;
    data.tokens.forEach(([s, e], i) => {
      const lo = Math.max(s, p.s), hi = Math.min(e, p.e);
      if (hi <= lo) return;
      const piece = data.text.slice(lo, hi), lead = piece.length - piece.trimStart().length;
      const from = lead < piece.length ? lo + lead : lo;  // a token's leading space is not coloured
      if (from > at) para.appendChild(document.createTextNode(data.text.slice(at, from)));
      const span = el("span", "t", data.text.slice(from, hi));
      span.dataset.i = i;
      spans[i].push(span);
      para.appendChild(span);
      at = hi;
    });
    if (at < p.e) para.appendChild(document.createTextNode(data.text.slice(at, p.e)));
    const aside = el("aside");
    const top = p.f.length ? p.f[0][2] : 1;
    p.f.forEach(([f, label, score]) => {
      const chip = el("button", "chip");
      chip.type = "button";
      chip.dataset.f = f;
      chip.title = "Click to colour the text by this feature";
      chip.appendChild(el("span", "", label));
      const bar = el("span", "bar");
      bar.style.width = Math.max(6, Math.round(100 * score / top)) + "%";
      chip.appendChild(bar);
      chip.addEventListener("click", () => select(selected === f ? null : f));
      (chips[f] = chips[f] || []).push(chip);
      aside.appendChild(chip);
    });
    if (!p.f.length) aside.appendChild(el("span", "empty", "no feature a word names"));
    row.appendChild(para);
    row.appendChild(aside);
    doc.appendChild(row);
  });

  function panel(f) {
    const box = document.getElementById("panel");
    box.textContent = "";
    if (f === null) {
      box.appendChild(el("span", "hint", "Click a feature in the margin to see where it fires; hover a word to see its features."));
      return;
    }
    const m = data.features[f];
    const head = el("div");
    head.appendChild(el("strong", "", m.label));
    const n = m.values.length;
    head.appendChild(el("span", "hint", " \u2014 fires on " + n + " token" + (n === 1 ? "" : "s") +
      " here; the darkest is its strongest in this text. Click it again to clear."));
    box.appendChild(head);
    if (m.examples.length) {
      const list = el("ul", "examples");
      m.examples.forEach((x) => {
        const item = el("li");
        x.split(/([\u00ab][^\u00bb]*[\u00bb])/).forEach((part) => {  // the peak token, between guillemets
          if (!part.startsWith("\u00ab")) { item.appendChild(document.createTextNode(part)); return; }
          const inner = part.slice(1, -1);
          item.appendChild(document.createTextNode(inner.slice(0, inner.length - inner.trimStart().length)));
          item.appendChild(el("b", "", inner.trim()));
        });
        list.appendChild(item);
      });
      box.appendChild(list);
    }
  }

  function select(f) {
    if (selected !== null) {
      (chips[selected] || []).forEach((c) => c.classList.remove("on"));
      data.features[selected].values.forEach(([i]) => spans[i].forEach((s) => { s.style.backgroundColor = ""; }));
    }
    selected = f;
    document.body.dataset.selected = f === null ? "" : String(f);
    panel(f);
    if (f === null) { history.replaceState(null, "", location.pathname + location.search); return; }
    const m = data.features[f];
    (chips[f] || []).forEach((c) => c.classList.add("on"));
    m.values.forEach(([i, a]) => {
      const alpha = Math.min(1, 0.12 + 0.78 * a / (m.peak || 1)).toFixed(3);
      spans[i].forEach((s) => { s.style.backgroundColor = "rgb(var(--hl) / " + alpha + ")"; });
    });
    history.replaceState(null, "", "#f=" + f);
  }

  const tip = document.getElementById("tip");
  doc.addEventListener("mouseover", (ev) => {
    const t = ev.target.closest(".t");
    if (!t) { tip.style.display = "none"; return; }
    const i = Number(t.dataset.i);
    tip.textContent = "";
    const word = data.text.slice(data.tokens[i][0], data.tokens[i][1]).trim() || "(space)";
    tip.appendChild(el("div", "tok", "\u201c" + word + "\u201d"));
    const said = new Set();
    const feats = data.tf[i].filter(([f]) => {  // two features with one label are one line: the stronger
      const label = data.labels[f] || (data.features[f] || {}).label || "";
      if (!label || said.has(label)) return false;
      said.add(label);
      return true;
    });
    if (!feats.length) tip.appendChild(el("div", "hint", "No feature a word names fires here."));
    feats.forEach(([f, a]) => {
      const row = el("div", "f");
      row.appendChild(el("span", "", data.labels[f] || (data.features[f] || {}).label || ""));
      const bar = el("span", "bar");
      const peak = (data.features[f] || {}).peak || feats[0][1];
      bar.style.width = Math.max(6, Math.min(100, Math.round(100 * a / peak))) + "%";
      row.appendChild(bar);
      tip.appendChild(row);
    });
    tip.style.display = "block";
  });
  doc.addEventListener("mousemove", (ev) => {
    const x = Math.min(ev.clientX + 14, window.innerWidth - tip.offsetWidth - 8);
    const y = ev.clientY + 18 + tip.offsetHeight > window.innerHeight ? ev.clientY - tip.offsetHeight - 10 : ev.clientY + 18;
    tip.style.left = x + "px";
    tip.style.top = y + "px";
  });
  doc.addEventListener("mouseleave", () => { tip.style.display = "none"; });
  const wanted = /^#f=(\\d+)$/.exec(location.hash);
  if (wanted && data.features[wanted[1]]) select(Number(wanted[1]));
  document.body.dataset.ready = "1";
})();
</script>
</body>
</html>
"""
