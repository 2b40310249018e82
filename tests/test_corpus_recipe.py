"""The default SAE's corpus: manuals turned into Markdown notes, the topic grid the model writes on, and the shares
`train-sae` records."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from steering.training import grid
from steering.training.corpus import Corpus, CorpusFile
from steering.training.recipe import SOURCES, write
from steering.training.rst import to_markdown

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

RST = """\
.. _linear:

=============
Linear Models
=============

.. currentmodule:: sklearn.linear_model

The target is :math:`\\hat{y}`, and the vector :math:`w = (w_1,
..., w_p)` is stored in ``coef_``; see :class:`~sklearn.linear_model.Ridge` and
`the article <https://example.org/ols>`_.

.. math::

    \\min_{w} || X w - y||_2^2

Fitting it::

    >>> reg.fit(X, y)
    LinearRegression()

Options
-------

.. note:: Scale the features first.

.. code-block:: python

   import numpy as np

.. toctree::
   :maxdepth: 2

   hidden/page

.. figure:: plot.png
   :align: center

- a list item
"""


def test_rst_becomes_markdown_notes() -> None:
    md = to_markdown(RST)
    assert md.startswith("# Linear Models\n")
    assert "## Options" in md
    assert "$\\hat{y}$" in md and "$w = (w_1,\n..., w_p)$" in md  # inline math, even over a line break
    assert "`coef_`" in md and "`Ridge`" in md and "[the article](https://example.org/ols)" in md
    assert "$$\n\\min_{w} || X w - y||_2^2\n$$" in md
    assert "Fitting it:\n\n```\n>>> reg.fit(X, y)\nLinearRegression()\n```" in md
    assert "```python\nimport numpy as np\n```" in md
    assert "**Note: Scale the features first.**" in md and "- a list item" in md
    for gone in ("toctree", "hidden/page", "plot.png", "currentmodule", "_linear", ".. ", ":math:", ":class:"):
        assert gone not in md, gone


def _benchmark_topics() -> set[str]:
    topics: set[str] = set()
    for path in BENCHMARKS.glob("*topics*.json"):
        topics |= {p["topic"].lower() for p in json.loads(path.read_text(encoding="utf-8"))["paragraphs"]}
    return topics


def test_the_topic_grid_is_broad_and_keeps_clear_of_the_hint_benchmarks() -> None:
    assert len(grid.TOPICS) == len(set(grid.TOPICS)) >= 250
    benchmark = _benchmark_topics()
    assert len(benchmark) >= 40
    clashes = sorted({(t, b) for t in grid.TOPICS for b in benchmark
                      if re.search(rf"\b{re.escape(b)}(s|es|ing)?\b", t.lower())})
    assert not clashes, clashes
    share = sum(map(grid.held_out, grid.TOPICS)) / len(grid.TOPICS)
    assert 0.05 <= share <= 0.15
    cells = grid.prompts(grid.TOPICS[:3])
    assert len(cells) == 3 * len(grid.GENRES) and all(topic in opening.lower() for topic, _, opening in cells)


class _Writer:
    """Stands in for the engine: a fluent paragraph per opening, or a loop for the topic `loops`."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def generate_batch(self, prompts, steering, sampling, *, rows):
        self.calls.append(len(prompts))
        assert sampling.temperature > 0 and sampling.seed is not None and rows == 4
        return [" and so on and so on and so on and so on" * 5 if "loops" in p.lower() else
                " " + " ".join(f"word{i}" for i in range(30)) for p in prompts]


def test_write_fills_the_grid_resumes_and_records_itself(tmp_path: Path) -> None:
    topics = ("rain on a tin roof", "loops", "a quiet street", "a new kettle")
    writer = _Writer()
    assert write(tmp_path, rows=4, topics=topics, engine=writer) == 4
    files = sorted(tmp_path.rglob("*.txt"))
    assert len(files) == 4 and not list(tmp_path.rglob("*.tmp"))
    texts = {f.stem: f.read_text(encoding="utf-8") for f in files}
    assert texts["loops"].strip() == ""  # a looping continuation is not training text
    kept = texts["a-quiet-street"]
    assert kept.count("word29") == len(grid.GENRES)
    assert all(g.opening("a quiet street") in kept for g in grid.GENRES)
    record = json.loads((tmp_path / SOURCES).read_text(encoding="utf-8"))["packages"]["written"]
    assert record["topics"] == 4 and record["genres"] == [g.name for g in grid.GENRES]

    (files[0]).unlink()
    calls = len(writer.calls)
    assert write(tmp_path, rows=4, topics=topics, engine=writer) == 1  # only the missing topic again
    assert writer.calls[calls:] == [len(grid.GENRES)]
    assert write(tmp_path, rows=4, topics=topics, engine=writer) == 0


def test_provenance_records_each_sources_share() -> None:
    files = [CorpusFile("c/train/gutenberg/emma.txt", "a", 10, 300), CorpusFile("c/train/gutenberg/alice.txt", "b", 10, 100),
             CorpusFile("c/train/written/rain.txt", "c", 10, 100)]
    shares = Corpus(torch.zeros(500, dtype=torch.int64), files).provenance()["shares"]
    assert shares == {"gutenberg": 0.8, "written": 0.2}
