"""Spans and atomic writes: the one line-break rule shared with the server, and files replaced whole or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from lsp_server.text import LineIndex
from steering.atomic import replacing, write_text
from steering.spans import lines, paragraphs, sentences, split_spans

ODD = "one\x0cstill one\u2028and still\r\ntwo\rthree\n\nfour"


def test_lines_break_where_the_protocol_does() -> None:
    spans = lines(ODD)
    assert [ODD[a:b] for a, b in spans] == ["one\x0cstill one\u2028and still", "two", "three", "four"]
    index = LineIndex(ODD)  # the server's positions count the same lines
    assert [index.position(a).line for a, _ in spans] == [0, 1, 2, 4]


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_paragraphs_and_sentences_for_every_line_ending(newline: str) -> None:
    text = newline.join(["The rain fell.", "", "Gulls cried! Boats rocked.", "  ", "End"])
    assert [text[a:b] for a, b in paragraphs(text)] == ["The rain fell.", "Gulls cried! Boats rocked.", "End"]
    assert [text[a:b] for a, b in sentences(text)] == ["The rain fell.", "Gulls cried!", "Boats rocked.", "End"]
    one_break = "first line" + newline + "second line"
    assert len(paragraphs(one_break)) == 1  # a single line break never splits a paragraph
    with pytest.raises(ValueError, match="granularity"):
        split_spans(text, "chapter")


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "steering.json"
    write_text(target, "old")
    with pytest.raises(RuntimeError), replacing(target) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("disk full")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["steering.json"]
    write_text(target, "new")
    assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["steering.json"]


def test_atomic_folder_replacement(tmp_path: Path) -> None:
    folder = tmp_path / "sae"
    for version in ("one", "two"):
        with replacing(folder) as tmp:
            tmp.mkdir()
            (tmp / "cfg.json").write_text(version)
    assert (folder / "cfg.json").read_text() == "two"
    with pytest.raises(KeyboardInterrupt), replacing(folder) as tmp:
        tmp.mkdir()
        raise KeyboardInterrupt
    assert (folder / "cfg.json").read_text() == "two" and [p.name for p in tmp_path.iterdir()] == ["sae"]
