"""Document sync under random edits: after every `textDocument/didChange` the server's text is the client's.

The client's model here owes nothing to the server's code: it keeps the text as a Python string, edits it by string
offsets and turns offsets into LSP positions itself (a line ends at CR, LF or CRLF, nothing else; a character
counts UTF-16 or UTF-8 code units). Sequences mix full and incremental changes over emoji (astral ones too), ZWJ
sequences, combining marks, CJK and all three line breaks, with empty edits, edits at the very end, deletions
across line breaks and positions past a line's end. In process, 1,000 sequences (hypothesis, derandomized) go
through the server's own `didOpen` / `didChange` handlers under both encodings; end to end, a few dozen go to
`python -m lsp_server` through pytest-lsp. `benchmarks/fuzz_edits.py` runs many more.
"""

from __future__ import annotations

import bisect
import json
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import pytest
import pytest_lsp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient

T = TypeVar("T")

ENCODINGS = ("utf-16", "utf-8")
LARGEST = 2**31 - 1
"""The largest `uinteger`, a character a client may send to mean "the end of the line"."""
ATOMS = ("a", "b", "Z", " ", ".", "\t", "\n", "\r\n", "\r", "é", "e\u0301", "a\u0308\u0323", "😋", "🌧️",
         "👩\u200d👩\u200d👧", "👍🏽", "🇫🇷", "汉", "字", "港口", "𝔘", "\U0010fffd", "\u00a0", "\ufeff",
         "\u2028", "\u2029", "\u0085", "\x0b", "\x0c", "\x1c")
"""Pieces of text: the last six are line breaks to `str.splitlines` but not to LSP."""
URI = "file:///fuzz/notes.txt"
LANGUAGE = "fuzz"
"""A language id the server does not annotate: the handlers only keep the text."""


class Choices(Protocol):
    """Where the generator's choices come from: hypothesis (which shrinks them) or a seeded `random.Random`."""

    def integer(self, low: int, high: int) -> int: ...

    def pick(self, options: Sequence[T]) -> T: ...


class Drawn:
    def __init__(self, draw: Callable[[st.SearchStrategy[Any]], Any]) -> None:
        self.draw = draw

    def integer(self, low: int, high: int) -> int:
        return int(self.draw(st.integers(low, high)))

    def pick(self, options: Sequence[T]) -> T:
        return options[self.integer(0, len(options) - 1)]


class Seeded:
    def __init__(self, seed: int) -> None:
        self.rnd = random.Random(seed)

    def integer(self, low: int, high: int) -> int:
        return self.rnd.randint(low, high)

    def pick(self, options: Sequence[T]) -> T:
        return options[self.rnd.randrange(len(options))]


@dataclass(frozen=True)
class Edit:
    """One content change in string offsets: `text[start:end]` becomes `new` (with `full`, the whole text does)."""

    start: int = 0
    end: int = 0
    new: str = ""
    full: bool = False
    start_over: int = 0
    """Code units the start position names past the end of its line (only where `start` is a line's end)."""
    end_over: int = 0
    beyond: int = 0
    """Lines the end position names past the last one (only where `end` is the end of the text)."""
    range_length: bool = False
    """Send the deprecated `rangeLength` too."""

    def apply(self, text: str) -> str:
        return self.new if self.full else text[:self.start] + self.new + text[self.end:]


@dataclass(frozen=True)
class EditSequence:
    """A document opened with `text`, then one `didChange` per item of `changes`, each with its changes in order."""

    text: str
    changes: tuple[tuple[Edit, ...], ...]

    def texts(self) -> list[str]:
        """The client's text after each `didChange`."""
        out, text = [], self.text
        for batch in self.changes:
            for edit in batch:
                text = edit.apply(text)
            out.append(text)
        return out

    @property
    def edits(self) -> int:
        return sum(len(batch) for batch in self.changes)


def width(text: str, encoding: str) -> int:
    """Length of `text` in the code units of `encoding`."""
    if encoding == "utf-8":
        return len(text.encode("utf-8"))
    return len(text.encode("utf-16-le")) // 2


def lines(text: str) -> list[tuple[int, int]]:
    """(start, end of content) of each LSP line of `text`."""
    spans, start, i = [], 0, 0
    while i < len(text):
        if text[i] in "\r\n":
            spans.append((start, i))
            i += 2 if text.startswith("\r\n", i) else 1
            start = i
        else:
            i += 1
    spans.append((start, len(text)))
    return spans


def places(text: str) -> list[int]:
    """The offsets a client can name: every one but the middle of a CRLF."""
    return [i for i in range(len(text) + 1) if not (0 < i < len(text) and text[i - 1:i + 1] == "\r\n")]


def position(text: str, offset: int, encoding: str, over: int = 0, beyond: int = 0) -> dict[str, int]:
    """The client's position of `offset`, as JSON, overshooting as the edit asks where it can."""
    spans = lines(text)
    line = bisect.bisect_right([s for s, _ in spans], offset) - 1
    start, end = spans[line]
    assert offset <= end, "an offset inside a line break"
    if beyond and offset == len(text):
        return {"line": len(spans) - 1 + beyond, "character": over}
    character = width(text[start:offset], encoding)
    if over and offset == end:
        character = min(LARGEST, character + over)
    return {"line": line, "character": character}


def wire(edit: Edit, text: str, encoding: str) -> dict[str, Any]:
    """`edit` of `text` as a client sends it in `contentChanges`."""
    if edit.full:
        return {"text": edit.new}
    change: dict[str, Any] = {"range": {
        "start": position(text, edit.start, encoding, edit.start_over),
        "end": position(text, edit.end, encoding, edit.end_over, edit.beyond)}, "text": edit.new}
    if edit.range_length:
        change["rangeLength"] = width(text[edit.start:edit.end], "utf-16")
    return change


def notifications(seq: EditSequence, encoding: str) -> list[dict[str, Any]]:
    """The `didChange` params of `seq` under `encoding`, as JSON (versions 2, 3, ...)."""
    out, text = [], seq.text
    for version, batch in enumerate(seq.changes, start=2):
        changes = []
        for edit in batch:
            changes.append(wire(edit, text, encoding))
            text = edit.apply(text)
        out.append({"textDocument": {"uri": URI, "version": version}, "contentChanges": changes})
    return out


def fragment(choose: Choices, most: int) -> str:
    parts = []
    for _ in range(choose.integer(0, most)):
        if choose.integer(0, 7):
            parts.append(choose.pick(ATOMS))
        else:  # any code point but a surrogate
            code = choose.integer(0, 0x10FFFF - 0x800)
            parts.append(chr(code + 0x800 if code >= 0xD800 else code))
    return "".join(parts)


def overshoot(choose: Choices) -> int:
    return choose.pick((0, 0, 0, 1, 3, LARGEST))


def edit(choose: Choices, text: str) -> Edit:
    """One change a client could send for `text`."""
    spots = places(text)
    kind = choose.integer(0, 6)
    if kind == 0:
        return Edit(new=fragment(choose, 12) if choose.integer(0, 4) else text, full=True)
    a, b = sorted((choose.pick(spots), choose.pick(spots)))
    new = fragment(choose, 4)
    if kind == 1:  # empty: nothing replaced by nothing
        b, new = a, ""
    elif kind == 2:  # at the very end
        a = choose.pick(spots[-3:])
        b = len(text)
    elif kind == 3:  # across a line break
        breaks = [end for _, end in lines(text)[:-1]]
        if breaks:
            at = choose.pick(breaks)
            a = choose.pick([s for s in spots if at - 3 <= s <= at])
            b = choose.pick([s for s in spots if at < s <= at + 4])
            new = new if choose.integer(0, 1) else ""
    elif kind == 4:  # a pure insertion
        b = a
    return Edit(a, b, new, start_over=overshoot(choose), end_over=overshoot(choose),
                beyond=choose.pick((0, 0, 0, 1, 5)), range_length=choose.integer(0, 3) == 0)


def generate(choose: Choices) -> EditSequence:
    """A random document and up to eight `didChange`s of up to three changes each."""
    start = text = fragment(choose, 40)
    changes = []
    for _ in range(choose.integer(1, 8)):
        batch = []
        for _ in range(choose.integer(1, 3)):
            batch.append(edit(choose, text))
            text = batch[-1].apply(text)
        changes.append(tuple(batch))
    return EditSequence(start, tuple(changes))


class InProcess:
    """The server's own `didOpen` / `didChange` handlers, called directly with the params pygls would structure
    from the wire (no transport, no engine). Close it to stop the server's worker thread."""

    def __init__(self) -> None:
        from pygls.protocol import default_converter

        from lsp_server.__main__ import create_server

        self.server = create_server()
        self.converter = default_converter()
        features = self.server.protocol.fm.features
        self.did_open = features[types.TEXT_DOCUMENT_DID_OPEN]
        self.did_change = features[types.TEXT_DOCUMENT_DID_CHANGE]

    def close(self) -> None:
        self.server.worker.stop()

    def use(self, encoding: str) -> None:
        """Act as if `initialize` had negotiated `encoding`."""
        from pygls.workspace import Workspace

        self.server.protocol._workspace = Workspace(None, position_encoding=encoding)

    def check(self, seq: EditSequence, encoding: str) -> None:
        """Replay `seq` under `encoding`; an AssertionError names the first `didChange` after which the server's
        text (or version) differs from the client's."""
        self.use(encoding)
        self.did_open(self.converter.structure(
            {"textDocument": {"uri": URI, "languageId": LANGUAGE, "version": 1, "text": seq.text}},
            types.DidOpenTextDocumentParams))
        state = self.server.docs[URI]
        assert state.doc.text == seq.text
        for i, (params, expected) in enumerate(zip(notifications(seq, encoding), seq.texts(), strict=True)):
            wired = json.loads(json.dumps(params))
            self.did_change(self.converter.structure(wired, types.DidChangeTextDocumentParams))
            assert state.doc.text == expected, (
                f"{encoding}: after didChange {i + 1} the server has {state.doc.text!r}, the client {expected!r} "
                f"(changes {params['contentChanges']!r})")
            assert state.doc.version == params["textDocument"]["version"]
            assert state.last_edit is not None and 0 <= state.last_edit <= len(expected)


@pytest.fixture(scope="module")
def in_process() -> Any:
    replay = InProcess()
    yield replay
    replay.close()


@st.composite
def sequences(draw: Callable[[st.SearchStrategy[Any]], Any]) -> EditSequence:
    return generate(Drawn(draw))


@settings(max_examples=1000, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(sequences())
def test_server_text_follows_random_changes(in_process: InProcess, seq: EditSequence) -> None:
    for encoding in ENCODINGS:
        in_process.check(seq, encoding)


def test_model_counts_lsp_lines_and_units() -> None:
    text = "a😋\r\nb\rc\n\u2028汉"
    assert lines(text) == [(0, 2), (4, 5), (6, 7), (8, 10)]
    assert places(text) == [0, 1, 2, 4, 5, 6, 7, 8, 9, 10]
    assert position(text, 2, "utf-16") == {"line": 0, "character": 3}
    assert position(text, 2, "utf-8") == {"line": 0, "character": 5}
    assert position(text, 10, "utf-8") == {"line": 3, "character": 6}
    assert position(text, 10, "utf-16", over=2, beyond=1) == {"line": 4, "character": 2}
    assert position(text, 5, "utf-16", over=LARGEST) == {"line": 1, "character": LARGEST}


def test_reference_cases(in_process: InProcess) -> None:
    cases = [  # (text, edit, client's text after it)
        ("ab\r\ncd", Edit(1, 5), "ad"),
        ("x\r", Edit(2, 2, "\n"), "x\r\n"),
        ("👩\u200d👩\u200d👧!", Edit(1, 2), "👩👩\u200d👧!"),
        ("e\u0301\n", Edit(1, 2, "", end_over=LARGEST), "e\n"),
        ("汉\u2028字", Edit(3, 3, "?", beyond=2, end_over=1), "汉\u2028字?"),
    ]
    for text, change, expected in cases:
        seq = EditSequence(text, ((change,),))
        assert seq.texts() == [expected]
        for encoding in ENCODINGS:
            in_process.check(seq, encoding)


END_TO_END = 100
"""Sequences sent to the real server per client."""


def client_capabilities(offered: list[str] | None) -> types.ClientCapabilities:
    return types.ClientCapabilities(general=types.GeneralClientCapabilities(position_encodings=offered))


@pytest_lsp.fixture(config=ClientServerConfig(server_command=[sys.executable, "-m", "lsp_server"]),
                    params=[(["utf-32", "utf-8", "utf-16"], "utf-8"), (None, "utf-16")], scope="module")
async def client(lsp_client: LanguageClient, request: pytest.FixtureRequest,
                 tmp_path_factory: pytest.TempPathFactory) -> Any:
    offered, expected = request.param
    result = await lsp_client.initialize_session(types.InitializeParams(
        capabilities=client_capabilities(offered),
        initialization_options={"model": str(tmp_path_factory.mktemp("fuzz") / "no-model"), "sae": "none"}))
    assert result.capabilities.position_encoding == expected
    lsp_client.encoding = expected  # type: ignore[attr-defined]
    yield
    await lsp_client.shutdown_session()


async def test_real_server_text_follows_random_changes(client: LanguageClient) -> None:
    from pygls.protocol import default_converter

    encoding, converter = client.encoding, default_converter()  # type: ignore[attr-defined]
    for n in range(END_TO_END):
        seq = generate(Seeded(n))
        client.text_document_did_open(types.DidOpenTextDocumentParams(text_document=types.TextDocumentItem(
            uri=URI, language_id=LANGUAGE, version=1, text=seq.text)))
        for i, (params, expected) in enumerate(zip(notifications(seq, encoding), seq.texts(), strict=True)):
            client.text_document_did_change(converter.structure(params, types.DidChangeTextDocumentParams))
            doc = await client.workspace_execute_command_async(
                types.ExecuteCommandParams(command="tinymorph.document", arguments=[{"uri": URI}]))
            assert doc["text"] == expected, f"sequence {n}, didChange {i + 1}, {encoding}: {params!r}"
            assert doc["version"] == i + 2
        client.text_document_did_close(types.DidCloseTextDocumentParams(
            text_document=types.TextDocumentIdentifier(uri=URI)))
