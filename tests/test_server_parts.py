"""Server parts that need no client: the engine worker's ordering and cancellation, and log forwarding from the
engine thread."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import pytest

from lsp_server.server import LogForwarder, TinymorphServer
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
