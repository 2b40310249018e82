"""Documents and positions: the one place where LSP positions (UTF-16, UTF-8 or UTF-32 code units) meet Python
string offsets (code points).

LSP counts lines by `\\n`, `\\r\\n` and `\\r` only (not by the other separators `str.splitlines` knows), and a
character past the end of a line means the end of that line.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from pathlib import Path

from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams
from pygls.uris import to_fs_path

from steering.spans import LINE_BREAK


def uri_path(uri: str) -> Path | None:
    """The file system path of a `file:` URI (None for other schemes)."""
    path = to_fs_path(uri) if uri.startswith("file:") else None
    return Path(path) if path else None


class PositionError(JsonRpcInvalidParams, ValueError):
    """A position or range that names no place in the document (past the last line, inside a character, ending
    before it starts): the request that sent it is answered with InvalidParams even where no handler catches it."""


def units(text: str, encoding: str) -> int:
    """Length of `text` in the code units of `encoding`."""
    if encoding == types.PositionEncodingKind.Utf32 or text.isascii():
        return len(text)
    if encoding == types.PositionEncodingKind.Utf8:
        return len(text.encode("utf-8", "surrogatepass"))
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


class LineIndex:
    """Line starts of one text, for converting both ways in O(line length)."""

    def __init__(self, text: str, encoding: str = types.PositionEncodingKind.Utf16) -> None:
        self.text = text
        self.encoding = encoding
        self.starts = [0]
        self.ends = []  # end of each line's content, before its line break
        for match in LINE_BREAK.finditer(text):
            self.ends.append(match.start())
            self.starts.append(match.end())
        self.ends.append(len(text))

    @property
    def n_lines(self) -> int:
        return len(self.starts)

    def position(self, offset: int) -> types.Position:
        """The position of string offset `offset` (clamped to the text)."""
        offset = max(0, min(offset, len(self.text)))
        line = bisect.bisect_right(self.starts, offset) - 1
        start = self.starts[line]
        offset = min(offset, self.ends[line])  # inside a line break: the end of the line's content
        return types.Position(line=line, character=units(self.text[start:offset], self.encoding))

    def offset(self, position: types.Position, *, strict: bool = False) -> int:
        """The string offset of `position`. A character past the line's end means its end; a line past the last
        one means the end of the text (or, with `strict`, a PositionError); a position inside a character rounds
        down (or, with `strict`, a PositionError)."""
        if position.line < 0 or position.character < 0:
            raise PositionError(f"Negative position {position.line}:{position.character}.")
        if position.line >= self.n_lines:
            if strict:
                raise PositionError(f"Line {position.line} is past the end of the document "
                                    f"({self.n_lines} lines).")
            return len(self.text)
        start, end = self.starts[position.line], self.ends[position.line]
        line = self.text[start:end]
        if self.encoding == types.PositionEncodingKind.Utf32 or line.isascii():
            return start + min(position.character, len(line))
        counted = 0
        for i, ch in enumerate(line):
            if counted == position.character:
                return start + i
            counted += units(ch, self.encoding)
            if counted > position.character:
                if strict:
                    raise PositionError(f"Character {position.character} of line {position.line} falls inside "
                                        f"{ch!r} ({self.encoding} code units).")
                return start + i
        return end

    def range(self, start: int, end: int) -> types.Range:
        return types.Range(start=self.position(start), end=self.position(end))

    def offsets(self, rng: types.Range, *, strict: bool = False) -> tuple[int, int]:
        a, b = self.offset(rng.start, strict=strict), self.offset(rng.end, strict=strict)
        if b < a:
            raise PositionError("The range ends before it starts.")
        return a, b


@dataclass
class Document:
    """One open document as the server knows it."""

    uri: str
    language_id: str
    version: int
    text: str
    encoding: str = types.PositionEncodingKind.Utf16
    _index: LineIndex | None = field(default=None, repr=False)

    @property
    def index(self) -> LineIndex:
        if self._index is None or self._index.text is not self.text:
            self._index = LineIndex(self.text, self.encoding)
        return self._index

    def apply(self, change: types.TextDocumentContentChangeEvent) -> tuple[int, int]:
        """Apply one content change; returns the changed span `(start, end)` of the new text. Positions past the
        end clamp to the end, as the protocol says; a range inside a character rounds to its start."""
        if isinstance(change, types.TextDocumentContentChangePartial):
            start, end = self.index.offsets(change.range) if _ordered(change.range) else \
                self.index.offsets(types.Range(start=change.range.end, end=change.range.start))
            self.text = self.text[:start] + change.text + self.text[end:]
            return start, start + len(change.text)
        old, new = self.text, change.text
        self.text = new
        prefix = common_prefix(old, new)
        suffix = common_suffix(old[prefix:], new[prefix:])
        return prefix, len(new) - suffix


def _ordered(rng: types.Range) -> bool:
    return (rng.start.line, rng.start.character) <= (rng.end.line, rng.end.character)


def common_prefix(a: str, b: str) -> int:
    """Length of the longest common prefix of `a` and `b`."""
    n = min(len(a), len(b))
    i = 0
    step = 4096
    while i < n:  # compare in blocks first (in C), then character by character inside the first unequal block
        j = min(n, i + step)
        if a[i:j] == b[i:j]:
            i = j
            continue
        while a[i] == b[i]:
            i += 1
        return i
    return n


def common_suffix(a: str, b: str) -> int:
    """Length of the longest common suffix of `a` and `b`."""
    return common_prefix(a[::-1], b[::-1])
