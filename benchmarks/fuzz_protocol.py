"""Thousands of random protocol messages at the language server, in raw bytes over stdio: what does it answer?

    python benchmarks/fuzz_protocol.py [--messages 5000] [--seed 0] [--framing] [--out FILE]

A `python -m lsp_server` child (on a model path that does not exist: no model loads) is initialized, then gets
`--messages` seeded random messages: requests to every method it registers with random or nearly valid params,
`workspace/executeCommand` for every command it announces with random arguments, notifications with random params,
unknown methods (with and without params), malformed JSON, `$/cancelRequest` for random ids, duplicate ids, and
with `--framing` frames whose Content-Length is wrong (a frame too long eats the start of the next one). Then one
`tinymorph.status`, a pause for late answers, `shutdown` and `exit`.

One JSON object: messages sent by kind, requests answered (results, errors by code) and unanswered (by method),
what the server sent unasked (by method), malformed frames on stdout (should be 0), whether it was alive at the end,
its exit code, seconds. Every frame is parsed strictly (`tests.lsp.test_protocol_fuzz.read_frame`).
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import emit

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("textDocument", "uri", "position", "range", "start", "end", "line", "character", "context", "command",
        "arguments", "text", "version", "contentChanges", "settings", "tinymorph", "id", "value", "items",
        "triggerKind", "diagnostics", "languageId", "feature", "query", "jsonrpc", "method", "params")
STRINGS = ("", "x", "file:///fuzz.md", "markdown", "😋🌧️港口\r\n", "\u0000\u2028", "a" * 300, "2.0", "-1")
SETTLE = 3.0
"""Seconds to wait for late answers once the last request is answered."""


def random_json(rnd: random.Random, depth: int = 3) -> Any:
    kind = rnd.randrange(8 if depth > 0 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rnd.random() < 0.5
    if kind == 2:
        return rnd.choice((0, 1, -1, 7, 2**31 - 1, 2**31, 2**63, -(2**40)))
    if kind == 3:
        return rnd.choice((0.5, -0.0, 1e308, 3.0))
    if kind in (4, 5):
        return rnd.choice(STRINGS)
    if kind == 6:
        return [random_json(rnd, depth - 1) for _ in range(rnd.randrange(4))]
    return {rnd.choice(KEYS): random_json(rnd, depth - 1) for _ in range(rnd.randrange(5))}


def number(rnd: random.Random) -> Any:
    return rnd.choice((0, 0, 1, 3, 40, 2**31 - 1, -1, "2", 1.5, None))


def nearly_valid(rnd: random.Random, uris: list[str]) -> dict[str, Any]:
    """Params that fit most `textDocument/*` requests (extra fields are ignored), with random numbers."""

    def position() -> dict[str, Any]:
        return {"line": number(rnd), "character": number(rnd)}

    return {"textDocument": {"uri": rnd.choice(uris)}, "position": position(),
            "range": {"start": position(), "end": position()},
            "context": {"diagnostics": [], "triggerKind": rnd.choice((1, 2, 3))}}


class Fuzzer:
    """Sends the random messages and keeps the books: for each request id, how many answers are due."""

    def __init__(self, wire: Any, requests: list[str], notifications: list[str], commands: list[str],
                 seed: int, framing: bool) -> None:
        from tests.lsp.test_protocol_fuzz import BAD_ARGUMENTS, BAD_PARAMS, FRAMINGS

        self.wire = wire
        self.rnd = random.Random(seed)
        self.requests = [m for m in requests if m not in ("initialize", "shutdown")]
        self.notifications = [m for m in notifications if m != "exit"]
        self.commands = commands
        self.bad_params, self.bad_arguments, self.framings = BAD_PARAMS, BAD_ARGUMENTS, FRAMINGS
        self.kinds = ["request", "command", "notification", "document", "unknown", "malformed", "cancel",
                      "duplicate"] + (["framing"] if framing else [])
        self.weights = [25, 20, 15, 10, 8, 8, 7, 5] + ([2] if framing else [])
        self.due: collections.Counter[Any] = collections.Counter()
        self.method_of: dict[Any, str] = {}
        self.params_of: dict[Any, Any] = {}
        self.sent: collections.Counter[str] = collections.Counter()
        self.uris = [f"file:///fuzz/{i}.{ext}" for i, ext in enumerate(("md", "txt", "fuzz"))]

    def params(self) -> Any:
        pick = self.rnd.randrange(3)
        if pick == 0:
            return self.rnd.choice(self.bad_params)
        return random_json(self.rnd) if pick == 1 else nearly_valid(self.rnd, self.uris)

    def request(self, method: str, params: Any = ..., msg_id: Any = None) -> None:
        msg_id = self.wire.request(method, params, msg_id)
        self.due[msg_id] += 1
        self.method_of[msg_id] = method
        self.params_of[msg_id] = params

    def one(self) -> None:
        rnd, wire = self.rnd, self.wire
        kind = rnd.choices(self.kinds, self.weights)[0]
        self.sent[kind] += 1
        if kind == "request":
            self.request(rnd.choice(self.requests), self.params())
        elif kind == "command":
            command = rnd.choice([*self.commands, "tinymorph.nothing"])
            arguments = rnd.choice([*self.bad_arguments, [{"uri": rnd.choice(self.uris)}], [random_json(rnd)]])
            self.request("workspace/executeCommand", {"command": command, "arguments": arguments})
        elif kind == "notification":
            wire.notify(rnd.choice(self.notifications), self.params())
        elif kind == "document":
            uri = rnd.choice(self.uris)
            language = uri.rsplit(".", 1)[1].replace("md", "markdown").replace("txt", "plaintext")
            if rnd.random() < 0.3:
                wire.notify("textDocument/didOpen", {"textDocument": {
                    "uri": uri, "languageId": language, "version": 1, "text": rnd.choice(STRINGS) * 3}})
            else:
                change = nearly_valid(rnd, [uri])["range"]
                wire.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": rnd.randrange(99)},
                                                       "contentChanges": [{"range": change,
                                                                           "text": rnd.choice(STRINGS)}]})
        elif kind == "unknown":
            method = rnd.choice(("tinymorph/nothing", "$/tinymorph/nothing", "textDocument/nothing"))
            params = random_json(rnd) if rnd.random() < 0.7 else ...
            if rnd.random() < 0.5:
                self.request(method, params)
            else:
                wire.notify(method, params)
        elif kind == "malformed":
            body = json.dumps({"jsonrpc": "2.0", "id": wire.new_id(), "method": rnd.choice(self.requests),
                               "params": random_json(rnd)}).encode()
            cut = body[:rnd.randrange(len(body))] if rnd.random() < 0.6 else rnd.randbytes(rnd.randrange(1, 64))
            wire.write(b"Content-Length: %d\r\n\r\n" % len(cut) + cut)
        elif kind == "cancel":
            target = rnd.choice([*list(self.method_of)[-5:], 10**9, "nobody", None, -1])
            wire.notify("$/cancelRequest", {"id": target} if rnd.random() < 0.9 else random_json(rnd))
        elif kind == "duplicate" and self.method_of:
            msg_id = rnd.choice(list(self.method_of)[-20:])
            self.request("workspace/executeCommand", {"command": "tinymorph.steer.list"}, msg_id)
        elif kind == "framing":
            body = json.dumps({"jsonrpc": "2.0", "id": wire.new_id(), "method": "tinymorph/nothing"}).encode()
            wire.write(self.framings[rnd.choice(list(self.framings))](body))

    def unanswered(self) -> collections.Counter[str]:
        got: collections.Counter[Any] = collections.Counter()
        with self.wire.changed:
            for m in self.wire.messages:
                if "method" not in m and m.get("id") in self.due:
                    got[m["id"]] += 1
        missing: collections.Counter[str] = collections.Counter()
        for msg_id, due in self.due.items():
            if got[msg_id] < due:
                missing[self.method_of[msg_id]] += due - got[msg_id]
        return missing


def run(messages: int, seed: int, framing: bool) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from tests.lsp.test_protocol_fuzz import Wire, registered

    requests, notifications, commands = registered()
    folder = Path(tempfile.mkdtemp(prefix="fuzz-protocol-"))
    wire = Wire(folder / "server.log")
    start = time.perf_counter()
    wire.initialize(str(folder / "no-model"))
    fuzzer = Fuzzer(wire, requests, notifications, commands, seed, framing)
    for _ in range(messages):
        fuzzer.one()
    sent_at = time.perf_counter()
    alive = wire.alive(timeout=60)
    deadline = time.monotonic() + SETTLE
    while fuzzer.unanswered() and time.monotonic() < deadline:
        time.sleep(0.1)
    missing = fuzzer.unanswered()
    answered: collections.Counter[str] = collections.Counter()
    unasked: collections.Counter[str] = collections.Counter()
    internal: list[dict[str, Any]] = []
    with wire.changed:
        for m in wire.messages:
            if "method" in m:
                unasked[m["method"]] += 1
            elif m.get("id") in fuzzer.due:
                answered["result" if "result" in m else f"error {m['error']['code']}"] += 1
                if "error" in m and m["error"]["code"] == -32603 and len(internal) < 5:
                    internal.append({"method": fuzzer.method_of[m["id"]], "params": fuzzer.params_of[m["id"]],
                                     "message": m["error"]["message"][:300]})
    code = wire.close()
    return {"messages": messages, "seed": seed, "framing": framing, "sent": dict(fuzzer.sent),
            "requests": sum(fuzzer.due.values()), "answered": dict(sorted(answered.items())),
            "unanswered": sum(missing.values()), "unanswered_by_method": dict(missing.most_common()),
            "internal_errors": internal, "from_server_unasked": dict(unasked.most_common()), "malformed_frames": len(wire.problems),
            "problems": wire.problems[:3], "alive": alive, "exit_code": code,
            "seconds_sending": round(sent_at - start, 2), "seconds": round(time.perf_counter() - start, 2),
            "server_log": str(folder / "server.log")}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=5000, help="random messages to send (default 5000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--framing", action="store_true", help="also send frames whose Content-Length is wrong")
    ap.add_argument("--out", help="also write the JSON result here")
    return ap


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    emit(run(args.messages, args.seed, args.framing), args.out)


if __name__ == "__main__":
    main()
