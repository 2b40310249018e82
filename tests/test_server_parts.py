"""Server parts that need no client: the engine worker's ordering and cancellation, and log forwarding from the
engine thread."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from lsp_server.__main__ import LogForwarder
from lsp_server.server import TinymorphServer
from lsp_server.worker import ANNOTATE, INTERACTIVE, SUGGEST, EngineUnavailable, EngineWorker
from steering.config import EngineConfig


class FakeEngine:
    def info(self) -> Any:
        return "fake"


def test_worker_runs_urgent_jobs_first_and_skips_cancelled_ones() -> None:
    worker = EngineWorker(lambda config, progress: FakeEngine())  # type: ignore[arg-type,return-value]
    assert worker.load(EngineConfig(), lambda s: None).result(timeout=10) == "fake"
    gate = threading.Event()
    order: list[str] = []
    blocker = worker.submit("block", lambda e: gate.wait(10), ANNOTATE)
    time.sleep(0.1)  # the blocker is running; the rest queue up behind it
    late = worker.submit("annotate", lambda e: order.append("annotate"), ANNOTATE)
    suggest = worker.submit("suggest", lambda e: order.append("suggest"), SUGGEST)
    dropped = worker.submit("dropped", lambda e: order.append("dropped"), INTERACTIVE)
    urgent = worker.submit("completion", lambda e: order.append("completion"), INTERACTIVE)
    assert dropped.cancel()
    assert worker.queue_depth == 4
    gate.set()
    for f in (blocker, late, suggest, urgent):
        f.result(timeout=10)
    assert order == ["completion", "suggest", "annotate"]
    assert set(worker.latency_ms) >= {"block", "annotate", "suggest", "completion"}
    worker.stop()


def test_worker_without_engine_says_why() -> None:
    def fail(config: EngineConfig, progress: Any) -> Any:
        raise RuntimeError("no such model")

    worker = EngineWorker(fail)
    with pytest.raises(RuntimeError):
        worker.load(EngineConfig(), lambda s: None).result(timeout=10)
    assert worker.state == "failed"
    with pytest.raises(EngineUnavailable, match="failed to load: no such model"):
        worker.submit("annotate", lambda e: None).result(timeout=10)
    worker.stop()


def test_log_records_from_the_engine_thread_reach_the_client_through_the_loop() -> None:
    server = TinymorphServer()
    sent: list[tuple[int, str]] = []
    server.window_log_message = lambda params: sent.append((threading.get_ident(), params.message))  # type: ignore
    handler = LogForwarder(server)
    logger = logging.getLogger("tests.forwarding")
    logger.addHandler(handler)
    try:
        logger.warning("before connecting")  # no loop yet: nothing is sent
        loop = asyncio.new_event_loop()
        server.loop, server.loop_thread = loop, threading.get_ident()
        thread = threading.Thread(target=lambda: logger.warning("from the engine thread"))
        thread.start()
        thread.join()
        assert sent == []  # not written from the engine thread itself
        loop.run_until_complete(asyncio.sleep(0.01))
        logger.error("from the loop")
        loop.close()
    finally:
        logger.removeHandler(handler)
        server.worker.stop()
    assert [m for _, m in sent] == ["from the engine thread", "from the loop"]
    assert all(ident == threading.get_ident() for ident, _ in sent)


def test_the_server_module_stays_small() -> None:
    """The server class holds typed state and shared plumbing; the rest lives in its own modules (the import rules
    between them: tests/test_imports.py)."""
    from pathlib import Path

    import lsp_server

    root = Path(lsp_server.__file__).parent
    assert len((root / "server.py").read_text(encoding="utf-8").splitlines()) < 250


def test_uri_paths() -> None:
    from pathlib import Path

    from lsp_server.text import uri_path

    assert uri_path("file:///tmp/a%20b/notes.md") == Path("/tmp/a b/notes.md")
    assert uri_path("untitled:Untitled-1") is None


def test_debounce_follows_the_typing_rhythm_within_bounds() -> None:
    from lsp_server.config import Settings
    from lsp_server.pipeline import debounce, typed
    from lsp_server.state import DocState
    from lsp_server.text import Document

    settings = Settings(debounce_ms=300)
    state = DocState(Document("file:///d.md", "markdown", 1, "", "utf-16"))
    assert debounce(settings, state) == pytest.approx(0.3)  # rhythm unknown
    for i in range(20):  # a fast typist: 0.12 s between keys
        typed(state, 100 + 0.12 * i)
    assert debounce(settings, state) == pytest.approx(0.18, abs=0.005)
    typed(state, 200)  # a long pause is not typing
    assert debounce(settings, state) == pytest.approx(0.18, abs=0.005)
    for i in range(20):  # a slow typist: 0.5 s between keys, capped at twice the setting
        typed(state, 300 + 0.5 * i)
    assert debounce(settings, state) == pytest.approx(0.6)
    for i in range(30):  # very fast: floored at half the setting
        typed(state, 400 + 0.02 * i)
    assert debounce(settings, state) == pytest.approx(0.15)


def test_a_long_document_is_read_from_just_above_the_view_and_its_visible_part_first() -> None:
    from lsp_server.config import Settings
    from lsp_server.pipeline import FIRST_SCREEN, visible_first, window
    from lsp_server.state import Annotated, DocState
    from lsp_server.text import Document
    from steering.features.annotate import Annotation

    text = "\n\n".join(f"{i}. The rain fell on the quiet harbour and the gulls cried." for i in range(800))
    settings = Settings(max_chars=12_000)
    state = DocState(Document("file:///long.md", "markdown", 1, text, "utf-16"))
    until = visible_first(settings, state)
    assert until == FIRST_SCREEN, "nothing shown yet: the first screen"
    lo, hi = window(settings, state, until)
    assert lo == 0 and FIRST_SCREEN <= hi < FIRST_SCREEN + 80 and text[hi : hi + 2] == "\n\n"
    assert window(settings, state) == (0, text.rfind("\n\n", 0, 12_000))

    state.visible = (20_000, 22_000)
    until = visible_first(settings, state)
    assert until == 22_000
    lo, hi = window(settings, state, until)
    assert text[lo - 2 : lo] == "\n\n" and 20_000 - 12_000 // 4 <= lo <= 20_000 and 22_000 <= hi < 22_080
    full = window(settings, state)
    assert full[0] == lo and full[1] - lo <= 12_000, "the rest of the window starts where the first part did"

    state.annotated = Annotated(1, full[0], len(text), Annotation(text[full[0] : full[1]], "blocks.1", (), ()))
    assert visible_first(settings, state) is None, "already read there"
    assert visible_first(Settings(max_chars=len(text)), state) is None, "read whole"


def test_the_prompt_window_keeps_its_start_while_typing_and_after_edits_outside_it() -> None:
    from lsp_server.generation import prompt_window

    sentences = [f"Sentence {i} is about the harbour and word{i}." for i in range(600)]
    text = "\n\n".join(" ".join(sentences[i : i + 5]) for i in range(0, 600, 5))
    size = 2000
    assert prompt_window(text, 2500, size) == (text[:2500], ""), "a short text is read whole"

    offset = 20_000
    prompt, head = prompt_window(text, offset, size)
    start = offset - len(prompt)
    assert text[:offset].endswith(prompt) and size * 3 // 4 <= len(prompt) <= size
    assert text[start - 2 : start] == "\n\n" or text[start - 2 : start] == ". ", "it starts a paragraph or sentence"
    assert text.startswith(head, start)

    for typed in range(0, size // 2, 37):  # typing on at the cursor: the same start
        more = text[:offset] + "x" * typed
        assert prompt_window(more, offset + typed, size, head)[0] == prompt + "x" * typed

    above = "A new paragraph written far above. " * 20
    edited = text[:500] + above + text[500:]  # an edit above the window moves it, not its text
    assert prompt_window(edited, offset + len(above), size, head) == (prompt, head)
    inside = text[: start + 300] + "CHANGED" + text[start + 300 : offset]  # an edit inside keeps the start
    assert prompt_window(inside, offset + 7, size, head)[0] == inside[start:]

    far, far_head = prompt_window(text, 9_000, size, head)  # the cursor jumped up: a new window there
    assert far_head != head and text[:9_000].endswith(far) and size * 3 // 4 <= len(far) <= size
    assert prompt_window(text, offset + size, size, head)[1] != head, "typed on too far: the window moves on"


async def test_out_of_memory_in_a_generation_is_said_once_and_the_next_one_works() -> None:
    import torch

    from lsp_server import generation
    from lsp_server.config import Settings
    from lsp_server.state import DocState
    from lsp_server.text import Document

    answers: list[Any] = [torch.OutOfMemoryError("CUDA out of memory"), MemoryError(), "and then the sea"]
    told: list[str] = []

    class Server:
        settings = Settings()
        generations = 0

        def __init__(self) -> None:
            self.doc = DocState(Document("file:///oom.md", "markdown", 1, "Rain", "utf-16"))

        def state(self, uri: str) -> DocState:
            return self.doc

        def interventions_for(self, uri: str) -> list[Any]:
            return []

        def tell(self, message: str, kind: Any = None) -> None:
            told.append(message)

        async def run_engine(self, kind: str, fn: Any, priority: int, cancel: Any) -> str:
            answer = answers.pop(0)
            if isinstance(answer, BaseException):
                raise answer
            return answer

    server = Server()
    for prompt in ("Rain", "Rain fell"):
        with pytest.raises(generation.OutOfMemory):
            await generation.generate(server, "file:///oom.md", prompt, kind="completion")
    assert len(told) == 1 and "ran out of memory" in told[0] and "hints still work" in told[0]
    assert await generation.generate(server, "file:///oom.md", "Rain, and", kind="completion") == \
        "and then the sea"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_the_allocator_is_tuned_unless_the_user_chose() -> None:
    """Two arenas and a fixed mapping threshold (`lsp_server.memory`); a variable the user set, or
    TINYMORPH_ALLOCATOR=system, is left as it is."""
    script = "import json; from lsp_server.memory import tune_allocator; print(json.dumps(tune_allocator()))"

    def applied(**env: str) -> dict:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "TINYMORPH_ALLOCATOR"))}
        out = subprocess.run([sys.executable, "-c", script], env={**base, **env}, capture_output=True, text=True,
                             check=True)
        return json.loads(out.stdout)

    assert applied() == {"MALLOC_ARENA_MAX": 2, "MALLOC_MMAP_THRESHOLD_": 1 << 20}
    assert applied(MALLOC_ARENA_MAX="8") == {"MALLOC_MMAP_THRESHOLD_": 1 << 20}
    assert applied(TINYMORPH_ALLOCATOR="system") == {}
