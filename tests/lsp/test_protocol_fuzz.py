"""The protocol under abuse, in raw bytes over stdio: malformed JSON, wrong `Content-Length`s, wrong parameter types
for every method and command the server registers, unknown methods, a 10 MB message, requests before `initialize`
and after `shutdown`, duplicate ids, cancels of unknown ids. Every frame the server writes is parsed strictly (a
stray byte on stdout fails the test), and after all of it the server still answers.

The server runs on a model path that does not exist (as in `test_transport`): no model loads, documents sync.
`benchmarks/fuzz_protocol.py` sends thousands of random messages the same way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from lsprotocol import types

ANSWER_TIMEOUT = 10.0
"""Seconds to wait for the answer to a request (the server answers these in milliseconds)."""
QUIET = 0.5
"""Seconds of silence that count as "no answer" where none is due."""
LANGUAGE = "fuzz"
"""A language id the server does not annotate."""
BAD_PARAMS: list[Any] = [
    None, 42, "text", True, [], [1, "two"], {},
    {"textDocument": 5, "position": "start", "range": [1], "context": 3, "settings": [], "contentChanges": {},
     "command": 7, "arguments": 5, "items": "x", "value": 9, "event": None, "token": {}, "title": 1},
    {"textDocument": {"uri": 42, "version": "one", "languageId": [], "text": 5},
     "position": {"line": -1, "character": "x"}, "range": {"start": 1, "end": None}},
]
"""Params of the wrong type for any LSP method."""
NOT_ONE_OBJECT: list[Any] = [[42], ["text"], [[]], [None], [True], [{}, {}]]
"""`arguments` of the wrong type for any command (each takes one object, or none)."""
BAD_ARGUMENTS = [*NOT_ONE_OBJECT, [{"uri": 5, "version": "three", "feature": "x", "strength": "big", "mode": 3,
                                    "query": 7, "limit": "many", "self": "yes", "name": 5, "id": [], "range": 5,
                                    "enabled": "no", "value": []}]]
"""The same and one object whose fields (those any command reads) have the wrong types."""
HEADER_LIMIT = 65536
"""Bytes a header line of the server may take (a longer one is not a header)."""


class FrameError(Exception):
    """Bytes on the server's stdout that are not a well-formed LSP frame."""


def read_frame(stream: Any) -> dict[str, Any] | None:
    """The next message on `stream` (None at its end), checked strictly: `Name: value` header lines ending in CRLF,
    a numeric Content-Length, an optional JSON-RPC Content-Type, exactly that many bytes of UTF-8 JSON holding one
    JSON-RPC 2.0 message."""
    headers: dict[str, str] = {}
    while True:
        line = stream.readline(HEADER_LIMIT)
        if not line:
            if headers:
                raise FrameError("the stream ended inside a header")
            return None
        if line == b"\r\n":
            break
        if not line.endswith(b"\r\n") or b": " not in line:
            raise FrameError(f"not a header line: {line[:120]!r}")
        name, value = line[:-2].decode("ascii").split(": ", 1)
        headers[name.lower()] = value
    length = headers.pop("content-length", "")
    if not length.isdigit():
        raise FrameError(f"Content-Length {length!r}")
    kind = headers.pop("content-type", "application/vscode-jsonrpc; charset=utf-8")
    if not kind.startswith("application/vscode-jsonrpc") or "utf-8" not in kind.replace("utf8", "utf-8"):
        raise FrameError(f"Content-Type {kind!r}")
    if headers:
        raise FrameError(f"unknown headers {headers}")
    body = stream.read(int(length))
    if len(body) != int(length):
        raise FrameError(f"a body of {len(body)} bytes, not {length}")
    message = json.loads(body.decode("utf-8"))
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
        raise FrameError(f"not a JSON-RPC 2.0 message: {body[:200]!r}")
    if "method" in message:
        if not isinstance(message["method"], str) or "result" in message or "error" in message:
            raise FrameError(f"a malformed request or notification: {body[:200]!r}")
    elif "id" not in message or ("result" in message) == ("error" in message):
        raise FrameError(f"a malformed response: {body[:200]!r}")
    elif "error" in message:
        error = message["error"]
        if not isinstance(error, dict) or not isinstance(error.get("code"), int) or \
                not isinstance(error.get("message"), str):
            raise FrameError(f"a malformed error: {body[:200]!r}")
    return message


def frame(message: Any) -> bytes:
    body = json.dumps(message).encode()
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


def raw_frame(body: bytes, length: int | bytes | None = None) -> bytes:
    """`body` under a Content-Length header saying `length` (its true length unless given)."""
    said = str(len(body) if length is None else length).encode() if not isinstance(length, bytes) else length
    return b"Content-Length: " + said + b"\r\n\r\n" + body


def is_request(method: str) -> bool:
    """Whether `method` is a request (else a notification) in the LSP specification."""
    message_type = types.METHOD_TO_TYPES.get(method, (None,))[0]
    return message_type is None or not message_type.__name__.endswith("Notification")


def registered() -> tuple[list[str], list[str], list[str]]:
    """(request methods, notification methods, commands) the server registers, read from the server itself."""
    from lsp_server.__main__ import create_server

    server = create_server()
    try:
        fm = server.protocol.fm
        methods = sorted(set(fm.features) | set(fm.builtin_features))
        return ([m for m in methods if is_request(m)], [m for m in methods if not is_request(m)],
                sorted(fm.commands))
    finally:
        server.worker.stop()


class Wire:
    """`python -m lsp_server` spoken to in raw bytes. A thread reads every frame it writes (`messages`), answers
    its requests with null, and records a malformed frame in `problems` (and stops reading there)."""

    def __init__(self, log: Path) -> None:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        self.log = log.open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "lsp_server", "-v"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, env=env)
        self.messages: list[dict[str, Any]] = []
        self.problems: list[str] = []
        self.ended = False
        self.changed = threading.Condition()
        self.writing = threading.Lock()
        self.next_id = 0
        self.reader = threading.Thread(target=self._read, name="fuzz-reader", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            while (message := read_frame(self.proc.stdout)) is not None:
                if "method" in message and "id" in message:
                    self.send({"jsonrpc": "2.0", "id": message["id"], "result": None})
                with self.changed:
                    self.messages.append(message)
                    self.changed.notify_all()
        except (FrameError, ValueError) as exc:
            self.problems.append(str(exc))
        except OSError:
            pass
        with self.changed:
            self.ended = True
            self.changed.notify_all()

    def write(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        with self.writing:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()

    def send(self, message: Any) -> None:
        self.write(frame(message))

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def request(self, method: str, params: Any = ..., msg_id: Any = None) -> Any:
        """Send a request (without `params` when not given); returns its id."""
        msg_id = self.new_id() if msg_id is None else msg_id
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": msg_id, "method": method}
        if params is not ...:
            message["params"] = params
        self.send(message)
        return msg_id

    def notify(self, method: str, params: Any = ...) -> None:
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not ...:
            message["params"] = params
        self.send(message)

    def mark(self) -> int:
        """A point in the stream of messages to look for answers after."""
        with self.changed:
            return len(self.messages)

    def responses(self, msg_id: Any, since: int = 0) -> list[dict[str, Any]]:
        with self.changed:
            return [m for m in self.messages[since:] if "method" not in m and m.get("id") == msg_id
                    and type(m.get("id")) is type(msg_id)]

    def wait(self, check: Callable[[], Any], timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not (result := check()) and not self.ended:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.changed.wait(left)
            return result

    def answer(self, msg_id: Any, since: int = 0, timeout: float = ANSWER_TIMEOUT) -> dict[str, Any] | None:
        """The first response to `msg_id` after `since`, or None when none comes within `timeout`."""
        found = self.wait(lambda: self.responses(msg_id, since), timeout)
        return found[0] if found else None

    def call(self, method: str, params: Any = ..., timeout: float = ANSWER_TIMEOUT) -> dict[str, Any] | None:
        since = self.mark()
        return self.answer(self.request(method, params), since, timeout)

    def initialize(self, model: str) -> dict[str, Any]:
        reply = self.call("initialize", {"processId": os.getpid(), "rootUri": None, "capabilities": {},
                                         "initializationOptions": {"model": model, "sae": "none"}}, timeout=60)
        assert reply is not None and "result" in reply, reply
        self.notify("initialized", {})
        return dict(reply["result"])

    def alive(self, timeout: float = ANSWER_TIMEOUT) -> bool:
        """Whether the server answers `tinymorph.status` correctly."""
        reply = self.call(types.WORKSPACE_EXECUTE_COMMAND, {"command": "tinymorph.status"}, timeout)
        return reply is not None and isinstance(reply.get("result"), dict) and "state" in reply["result"]

    def close(self, graceful: bool = True) -> int:
        """End the session (with `graceful`, shutdown and exit; then the end of its stdin) and return the exit
        code; kill the server if it does not end."""
        assert self.proc.stdin is not None
        try:
            if graceful and self.proc.poll() is None:
                self.call("shutdown", timeout=5)
                self.notify("exit")
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            code = self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(timeout=20)
        self.reader.join(timeout=5)
        self.log.close()
        return code


def probe(wire: Wire, tries: int = 3, timeout: float = 2.0) -> bool:
    """Whether the server answers one of `tries` requests (an unknown method: no initialize needed) in turn."""
    for _ in range(tries):
        since = wire.mark()
        msg_id = wire.request("tinymorph/probe", {})
        if wire.answer(msg_id, since, timeout) is not None:
            return True
    return False


def error_code(reply: dict[str, Any] | None) -> int | str:
    if reply is None:
        return "no answer"
    return int(reply["error"]["code"]) if "error" in reply else "a result"


class Session:
    """One server for the module: a request and a notification sent before `initialize`, then initialized."""

    def __init__(self, wire: Wire, model: str) -> None:
        self.wire = wire
        self.before = wire.call(types.TEXT_DOCUMENT_HOVER, {
            "textDocument": {"uri": "file:///early.txt"}, "position": {"line": 0, "character": 0}})
        wire.notify(types.TEXT_DOCUMENT_DID_OPEN, {"textDocument": {
            "uri": "file:///early.txt", "languageId": LANGUAGE, "version": 1, "text": "early"}})
        self.capabilities = wire.initialize(model)["capabilities"]
        self.requests, self.notifications, self.commands = registered()


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    folder = tmp_path_factory.mktemp("protocol")
    wire = Wire(folder / "server.log")
    try:
        yield Session(wire, str(folder / "no-model"))
    finally:
        code = wire.close()
    assert wire.problems == []
    assert code == 0


def test_before_initialize(session: Session) -> None:
    assert error_code(session.before) == types.ErrorCodes.ServerNotInitialized
    reply = session.wire.call(types.WORKSPACE_EXECUTE_COMMAND, {
        "command": "tinymorph.document", "arguments": [{"uri": "file:///early.txt"}]})
    assert error_code(reply) == types.ErrorCodes.InvalidParams  # the early didOpen was dropped


def test_registered_commands_are_announced(session: Session) -> None:
    assert session.commands
    assert sorted(session.capabilities["executeCommandProvider"]["commands"]) == session.commands
    assert types.TEXT_DOCUMENT_HOVER in session.requests and types.TEXT_DOCUMENT_DID_CHANGE in session.notifications


def test_malformed_json_is_ignored_or_a_parse_error(session: Session) -> None:
    wire = session.wire
    since = wire.mark()
    bodies = [b"{not json", b"{", b'{"jsonrpc": "2.0", "id": 900, "method": ', b"\xff\xfe\x00", b"null", b"42",
              b'"text"', b"[]", b'[{"jsonrpc": "2.0", "id": 901, "method": "shutdown"}]', b"[" * 100_000,
              b'{"jsonrpc": "2.0"}', b'{"jsonrpc": "1.0", "id": 902, "method": "shutdown"}', b'{"id": 903}',
              b'{"jsonrpc": "2.0", "id": 904, "method": 5}', b'{"jsonrpc": "2.0", "id": {"a": 1}, "method": "x"}',
              b'{"jsonrpc": "2.0", "id": 905, "method": "tinymorph/x", "params": {}, "result": 1}', b" " * 100]
    for body in bodies:
        wire.write(raw_frame(body))
    assert probe(wire, tries=1, timeout=ANSWER_TIMEOUT), "the server no longer answers"
    assert [m for m in wire.messages[since:-1] if "result" in m] == []  # errors at most, before the probe's
    popups = [m for m in wire.messages[since:] if m.get("method") == types.WINDOW_SHOW_MESSAGE]
    assert popups == []  # the log has what could not be read; a pop-up would mean nothing to a writer
    assert wire.alive()  # `shutdown` inside an array, under JSON-RPC 1.0 or with a result did not shut it down


def unanswered(session: Session, sends: list[tuple[str, Any]]) -> list[str]:
    """Send each (method, params) request; what is wrong with the answers (each must be an InvalidParams error)."""
    wire = session.wire
    since = wire.mark()
    sent = [(wire.request(method, params), method, params) for method, params in sends]
    wire.wait(lambda: all(wire.responses(msg_id, since) for msg_id, _, _ in sent), ANSWER_TIMEOUT)
    wrong = []
    for msg_id, method, params in sent:
        reply = next(iter(wire.responses(msg_id, since)), None)
        if error_code(reply) != types.ErrorCodes.InvalidParams:
            wrong.append(f"{method} {json.dumps(params)[:80]}: {error_code(reply)}")
    return wrong


def test_wrong_param_types_for_every_request(session: Session) -> None:
    skip = {types.INITIALIZE, types.SHUTDOWN}
    sends = [(method, params) for method in session.requests if method not in skip for params in BAD_PARAMS]
    assert unanswered(session, sends) == []
    assert session.wire.alive()


def wrong_arguments(session: Session, commands: list[str], arguments: list[Any]) -> list[str]:
    return unanswered(session, [(types.WORKSPACE_EXECUTE_COMMAND, {"command": command, "arguments": a})
                                for command in commands for a in arguments])


TAKES_NO_FIELDS = {"tinymorph.status"}
"""Commands whose object argument has no fields: only arguments that are not one object are wrong."""


def test_wrong_argument_types_for_every_command(session: Session) -> None:
    commands = [c for c in session.commands if c not in TAKES_NO_FIELDS]
    assert wrong_arguments(session, commands, BAD_ARGUMENTS) == []
    assert wrong_arguments(session, sorted(TAKES_NO_FIELDS), NOT_ONE_OBJECT) == []
    assert session.wire.alive()


def test_odd_positions_for_every_request_are_never_an_internal_error(session: Session) -> None:
    wire = session.wire
    uri = "file:///odd.txt"
    wire.notify(types.TEXT_DOCUMENT_DID_OPEN, {"textDocument": {
        "uri": uri, "languageId": LANGUAGE, "version": 1, "text": "Rain 😋\r\non the 港口.\n"}})

    def at(line: int, character: int) -> dict[str, int]:
        return {"line": line, "character": character}

    odd = [(at(0, 6), at(1, 3), at(0, 0)),  # inside the emoji's surrogate pair; a range ending before it starts
           (at(99, 99), at(0, 0), at(99, 99)),  # past the last line
           (at(0, 2**31 - 1), at(2**31 - 1, 0), at(2**31 - 1, 2**31 - 1))]
    since = wire.mark()
    sent = [(wire.request(method, {"textDocument": {"uri": uri}, "position": position,
                                   "range": {"start": start, "end": end},
                                   "context": {"diagnostics": [], "triggerKind": 1}}), method, position, start, end)
            for method in session.requests if method.startswith("textDocument/")
            for position, start, end in odd]
    wire.wait(lambda: all(wire.responses(msg_id, since) for msg_id, *_ in sent), ANSWER_TIMEOUT)
    wrong = [f"{method} {rest}: {error_code(next(iter(wire.responses(msg_id, since)), None))}"
             for msg_id, method, *rest in sent
             if error_code(next(iter(wire.responses(msg_id, since)), None)) in ("no answer", -32603)]
    assert wrong == []


def test_wrong_param_types_for_every_notification_are_silent(session: Session) -> None:
    wire = session.wire
    since = wire.mark()
    for method in session.notifications:
        if method != types.EXIT:
            for params in BAD_PARAMS:
                wire.notify(method, params)
    assert wire.alive()
    assert len([m for m in wire.messages[since:] if "method" not in m]) == 1  # only the answer to `alive`


def test_unknown_methods(session: Session) -> None:
    wire = session.wire
    since = wire.mark()
    for method in ("tinymorph/nothing", "$/tinymorph/nothing"):
        wire.notify(method, {"x": 1})
        assert error_code(wire.call(method, {"x": 1})) == types.ErrorCodes.MethodNotFound
    unregistered = {"textDocument": {"uri": "file:///x.txt"}, "position": {"line": 0, "character": 0}}
    assert error_code(wire.call(types.TEXT_DOCUMENT_DEFINITION, unregistered)) == types.ErrorCodes.MethodNotFound
    assert wire.alive()
    assert len([m for m in wire.messages[since:] if "method" not in m]) == 4  # three errors and `alive`


def test_unknown_methods_without_params(session: Session) -> None:
    for method in ("tinymorph/nothing", "$/tinymorph/nothing"):
        assert error_code(session.wire.call(method, timeout=3)) == types.ErrorCodes.MethodNotFound


def test_json_rpc_lookalikes_inside_params(session: Session) -> None:
    lookalikes = [{"jsonrpc": "2.0", "method": "exit"}, {"jsonrpc": "x"}, {"jsonrpc": "2.0", "id": 3, "result": 1}]
    for lookalike in lookalikes:
        reply = session.wire.call(types.WORKSPACE_EXECUTE_COMMAND, {
            "command": "tinymorph.steer.list", "arguments": [{"uri": "file:///x.md", "note": lookalike}]}, timeout=3)
        assert reply is not None and "steering" in reply.get("result", {}), (lookalike, reply)


def test_ten_megabyte_messages(session: Session) -> None:
    wire = session.wire
    text = "Rain on the 港口 😋.\r\n" * (10 * 2**20 // 24)
    uri = "file:///big.txt"
    wire.notify(types.TEXT_DOCUMENT_DID_OPEN, {"textDocument": {
        "uri": uri, "languageId": LANGUAGE, "version": 1, "text": text}})
    reply = wire.call(types.WORKSPACE_EXECUTE_COMMAND,
                      {"command": "tinymorph.document", "arguments": [{"uri": uri}]}, timeout=60)
    assert reply is not None and reply["result"]["text"] == text
    wire.notify(types.TEXT_DOCUMENT_DID_CLOSE, {"textDocument": {"uri": uri}})
    reply = wire.call("tinymorph/nothing", {"padding": "x" * 10 * 2**20}, timeout=60)
    assert error_code(reply) == types.ErrorCodes.MethodNotFound
    assert wire.alive()


def test_duplicate_ids(session: Session) -> None:
    wire = session.wire
    since = wire.mark()
    msg_id = wire.new_id()
    for command in ("tinymorph.status", "tinymorph.steer.list", "tinymorph.status"):
        wire.request(types.WORKSPACE_EXECUTE_COMMAND, {"command": command}, msg_id=msg_id)
    wire.request("tinymorph/nothing", {}, msg_id=str(msg_id))
    wire.wait(lambda: len(wire.responses(msg_id, since)) == 3, ANSWER_TIMEOUT)
    answers = wire.responses(msg_id, since)
    assert len(answers) == 3 and all("result" in a for a in answers), answers
    assert error_code(wire.answer(str(msg_id), since)) == types.ErrorCodes.MethodNotFound
    assert wire.alive()


def test_cancel_unknown_ids(session: Session) -> None:
    wire = session.wire
    since = wire.mark()
    done = wire.request(types.WORKSPACE_EXECUTE_COMMAND, {"command": "tinymorph.steer.list"})
    assert wire.answer(done, since) is not None
    for params in ({"id": 987654}, {"id": "never-sent"}, {"id": done}, {"id": None}, {"id": [1]}, {}, None, 7):
        wire.notify(types.CANCEL_REQUEST, params)
    time.sleep(QUIET)
    assert wire.alive()
    after = [m for m in wire.messages[since:] if "method" not in m]
    assert len(after) == 2, after  # the answers to `done` and to `alive`: none to the cancels


FRAMINGS = {
    "non-numeric": lambda body: raw_frame(body, b"many"),
    "negative": lambda body: raw_frame(body, -5),
    "too short": lambda body: raw_frame(body, len(body) - 7),
    "too long": lambda body: raw_frame(body, len(body) + 7),
}


@pytest.mark.parametrize("framing", list(FRAMINGS))
def test_wrong_content_length_then_recovers(framing: str, tmp_path: Path) -> None:
    wire = Wire(tmp_path / "server.log")
    try:
        assert probe(wire, tries=1, timeout=60)  # the server has started
        wire.write(FRAMINGS[framing](json.dumps({"jsonrpc": "2.0", "id": 0, "method": "tinymorph/x"}).encode()))
        assert probe(wire, timeout=1.0), "the server never answers again"
    finally:
        wire.close(graceful=False)
        assert wire.problems == []


def test_content_type_header_and_split_writes(tmp_path: Path) -> None:
    wire = Wire(tmp_path / "server.log")
    try:
        wire.initialize(str(tmp_path / "no-model"))
        body = json.dumps({"jsonrpc": "2.0", "id": "split", "method": "tinymorph/x", "params": {}}).encode()
        data = (b"Content-Length: %d\r\nContent-Type: application/vscode-jsonrpc; charset=utf-8\r\n\r\n"
                % len(body) + body)
        for i in range(0, len(data), 7):
            wire.write(data[i:i + 7])
            time.sleep(0.001)
        assert error_code(wire.answer("split")) == types.ErrorCodes.MethodNotFound
    finally:
        assert wire.close() == 0
        assert wire.problems == []


def test_requests_after_shutdown(tmp_path: Path) -> None:
    wire = Wire(tmp_path / "server.log")
    try:
        wire.initialize(str(tmp_path / "no-model"))
        assert wire.call("shutdown") == {"jsonrpc": "2.0", "id": wire.next_id, "result": None}
        wire.notify(types.TEXT_DOCUMENT_DID_OPEN, {"textDocument": {
            "uri": "file:///late.txt", "languageId": LANGUAGE, "version": 1, "text": "late"}})
        assert error_code(wire.call(types.TEXT_DOCUMENT_HOVER, {
            "textDocument": {"uri": "file:///late.txt"}, "position": {"line": 0, "character": 0}},
            timeout=3)) == types.ErrorCodes.InvalidRequest
    finally:
        wire.notify("exit")
        assert wire.proc.wait(timeout=20) == 0
        wire.close()
        assert wire.problems == []


def test_alive_after_all(session: Session) -> None:
    """Last in the module: after every test above, the server still answers and wrote only well-formed frames."""
    assert session.wire.alive()
    assert session.wire.problems == []
    assert session.wire.proc.poll() is None
