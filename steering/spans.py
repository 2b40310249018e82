"""Where a text's paragraphs, sentences and lines are: the one place that says what a line break is.

A line break is `\\r\\n`, `\\r` or `\\n`, as in the Language Server Protocol (not the other separators
`str.splitlines` knows, such as form feed or U+2028), so the engine's spans and the editor's lines always agree.
No torch here: the language server imports this at start-up.
"""

from __future__ import annotations

import re

LINE_BREAK = re.compile(r"\r\n|\r(?!\n)|\n")
"""One line break: CRLF, a lone CR, or LF."""

GRANULARITIES = ("paragraph", "sentence", "line")
"""Span kinds a document can be split into."""

_BREAK = LINE_BREAK.pattern
_PARAGRAPH_BREAK = re.compile(rf"(?:{_BREAK})[ \t]*(?:{_BREAK})")
_SENTENCE_END = re.compile(rf"[.!?…][\"')\]»”’]*(\s+)|((?:{_BREAK})[ \t]*(?:{_BREAK}))")


def _trimmed(text: str, cuts: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The non-blank pieces `text[start:end]`, surrounding white space trimmed."""
    out = []
    for start, end in cuts:
        chunk = text[start:end]
        if chunk.strip():
            lead = len(chunk) - len(chunk.lstrip())
            out.append((start + lead, start + lead + len(chunk.strip())))
    return out


def _between(text: str, separators: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The trimmed pieces of `text` between the `(start, end)` separator matches."""
    cuts, pos = [], 0
    for start, end in separators:
        cuts.append((pos, start))
        pos = end
    cuts.append((pos, len(text)))
    return _trimmed(text, cuts)


def paragraphs(text: str) -> list[tuple[int, int]]:
    """Character spans of the paragraphs: runs of text separated by blank lines, surrounding space trimmed."""
    return _between(text, [m.span() for m in _PARAGRAPH_BREAK.finditer(text)])


def sentences(text: str) -> list[tuple[int, int]]:
    """Character spans of the sentences: text up to `.`, `!`, `?` or `…` (and closing quotes) plus space, or a
    paragraph break."""
    ends = [(m.start(1) if m.group(1) is not None else m.start(2), m.end()) for m in _SENTENCE_END.finditer(text)]
    return _between(text, ends)


def lines(text: str) -> list[tuple[int, int]]:
    """Character spans of the non-blank lines."""
    return _between(text, [m.span() for m in LINE_BREAK.finditer(text)])


def split_spans(text: str, granularity: str = "paragraph") -> list[tuple[int, int]]:
    """Spans of `text` at `granularity`: `paragraph`, `sentence` or `line`."""
    if granularity == "paragraph":
        return paragraphs(text)
    if granularity == "sentence":
        return sentences(text)
    if granularity == "line":
        return lines(text)
    raise ValueError(f"Unknown granularity {granularity!r}: use one of {', '.join(GRANULARITIES)}.")
