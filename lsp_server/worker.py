"""The engine worker: one thread owns the model and runs jobs one at a time, most urgent first.

The server never touches the model on its event loop. It submits a job (a function of the engine) and awaits a
future. The worker skips a job whose future was cancelled before it started and never interrupts one that runs; a
generation stops at its next decode step when its cancel token is set. What to cancel the callers decide:
`TinymorphServer.run_engine` cancels the future (and the token) when the task awaiting it is cancelled,
`pipeline.schedule` cancels a document's pending annotation when a newer change arrives, and
`generation.generate` cancels the document's older generation when another continuation is asked for.

A job that returns a batched `Request` (`Engine.start`) is a continuation decoded together with the others: the
worker runs decode steps for all of them while no more urgent job waits (completions and suggestions join the batch
between steps; reading waits until it is done), and the job's future gets the text when its request finishes.
"""

from __future__ import annotations

import concurrent.futures
import gc
import itertools
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import torch

from steering.config import EngineConfig, SamplingConfig
from steering.engine import EngineInfo, ExampleFeature, FeatureCard, FeatureExplanation, SearchHit
from steering.fast.batched import Request
from steering.features.annotate import Annotation
from steering.features.featuremap import FeatureMap
from steering.features.selfexplain import SelfExplanation
from steering.runtime.decode import CancelToken
from steering.runtime.interventions import Intervention
from steering.runtime.presets import StyleVector

log = logging.getLogger(__name__)

T = TypeVar("T")

# Lower runs first. WHOLE: reading the rest of a long document (`whole`), after every other document's annotation.
LOAD, INTERACTIVE, SUGGEST, ANNOTATE, WHOLE = 0, 1, 2, 3, 4


class EngineAPI(Protocol):
    """The methods of `steering.Engine` that the server's jobs call on the worker thread: all the server asks of the
    loaded model goes through them (`load_engine` makes the engine; elsewhere the server imports only `steering`'s
    data types and model-free helpers)."""

    def info(self) -> EngineInfo: ...

    def annotate(self, text: str, *, top_k: int = 5, paragraph_top: int = 8, granularity: str = "paragraph",
                 session: str | None = None, watch: Sequence[int] = ()) -> Annotation: ...

    def generate(self, prompt: str, steering: Sequence[Intervention] = (), sampling: SamplingConfig | None = None,
                 cancel: CancelToken | None = None, session: str | None = None) -> Iterator[str]: ...

    def start(self, prompt: str, steering: Sequence[Intervention] = (), sampling: SamplingConfig | None = None,
              cancel: CancelToken | None = None, session: str | None = None) -> Request | None: ...

    def step(self) -> list[Request]: ...

    def drop_batch(self) -> None: ...

    def read_ahead(self, text: str, session: str, tokens: int = 128, *, seconds: float | None = None,
                   pause: Callable[[], bool] | None = None) -> bool: ...

    def refresh(self, session: str, *, seconds: float = 0.05) -> bool: ...

    def prefetch(self, prompt: str, session: str, *, seconds: float = 0.05) -> bool: ...

    def forget(self, session: str) -> None: ...

    def explain(self, feature: int, *, top: int = 10) -> FeatureExplanation: ...

    def cards(self, features: Sequence[int], *, lens_limit: int = 256) -> dict[int, FeatureCard]: ...

    def self_explain(self, feature: int) -> SelfExplanation: ...

    def search(self, query: str, limit: int = 20) -> list[SearchHit]: ...

    def label(self, feature: int) -> str: ...

    def style_vector(self, text: str, start: int, end: int) -> StyleVector: ...

    def nll(self, prompt: str, texts: Sequence[str]) -> list[float]: ...

    def complete_word(self, prompt: str, partial: str, session: str | None = None, steps: int = 4) -> str: ...

    def features_by_example(self, text: str, start: int = 0, end: int | None = None, *, top: int = 8,
                            session: str | None = None) -> list[ExampleFeature]: ...

    def feature_map(self, text: str, *, title: str = "document", per_paragraph: int = 4,
                    session: str | None = None) -> FeatureMap: ...



Loader = Callable[[EngineConfig, Callable[[str], None]], EngineAPI]


def load_engine(config: EngineConfig, progress: Callable[[str], None]) -> EngineAPI:
    from steering.engine import Engine

    gc.unfreeze()  # a replaced engine's objects can be collected again
    engine = Engine.load(config, progress=progress)
    if engine.sae is not None:
        progress("reading the SAE's labels")
        engine.specificity()  # now, not inside the first annotation that a completion would wait behind
    progress("warming up")
    engine.warm_up()  # likewise the first passes' one-time costs
    settle_heap()
    return engine


def settle_heap() -> None:
    """Collect once, then leave what is alive now (the model, the tokenizer, the labels: about 400,000 objects)
    out of the cyclic collector's later passes (`gc.freeze`). Each full pass walked them all: 184 ms on the 2-core
    CPU, at a moment set by allocation counts, inside whatever ran then (an annotation after typing took 237 ms
    instead of 40); frozen, a pass takes well under a millisecond."""
    gc.collect()
    gc.freeze()


_STOP = "stop"


def release_memory() -> None:
    """After an out-of-memory failure: hand the allocator's cached blocks back, so the next job can get them."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


READ_SECONDS = 0.05
"""Seconds of background work a more urgent job waits for at most on the fast path: one block of a document's
read (which stops between blocks when such a job waits, and after this long when one as urgent does:
`EngineWorker.urgent`), one piece of a continuation window's (the engine sizes both from what the last reads
cost)."""


TRACE_ENV = "TINYMORPH_TRACE"
"""A file the worker appends a JSON line to for each job it runs and each batched decode step (kind, priority,
`time.monotonic()` when queued, started and ended): what a slow request waited behind (`TINYMORPH_TRACE=trace.jsonl
python benchmarks/soak_lsp.py`: the soak's JSON says when it started on that clock)."""


class EngineUnavailable(RuntimeError):
    """The engine is loading, failed to load, or was never configured."""


@dataclass(order=True)
class _Job:
    priority: int
    seq: int
    kind: str = field(compare=False)
    fn: Callable[[Any], Any] = field(compare=False)
    future: concurrent.futures.Future[Any] = field(compare=False)
    queued: float = field(compare=False, default_factory=time.monotonic)


class EngineWorker:
    """Owns the engine on one thread. `state` is `idle`, `loading`, `ready` or `failed`."""

    def __init__(self, loader: Loader = load_engine) -> None:
        self._loader = loader
        self._queue: queue.PriorityQueue[_Job] = queue.PriorityQueue()
        self._seq = itertools.count()
        self.engine: EngineAPI | None = None
        self.info: EngineInfo | None = None
        """What the engine said of itself when it loaded (read it instead of calling the engine off its thread)."""
        self.state = "idle"
        self.error: str | None = None
        self.latency_ms: dict[str, float] = {}
        self.running: str | None = None
        self._started = 0.0
        """When the running job started (`time.monotonic()`)."""
        self._streams: dict[int, tuple[Request, str, float, concurrent.futures.Future[Any]]] = {}
        """Batched continuations decoding, by id of their request: (request, job kind, start time, future)."""
        trace = os.environ.get(TRACE_ENV)
        self._trace = open(trace, "a", encoding="utf-8", buffering=1) if trace else None  # noqa: SIM115
        self._thread = threading.Thread(target=self._run, name="tinymorph-engine", daemon=True)
        self._thread.start()

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    @property
    def batched(self) -> int:
        """Continuations decoding together now."""
        return len(self._streams)

    def urgent(self, priority: int) -> Callable[[], bool]:
        """A test, for a job of `priority` to call while it runs, that it should make way (a background read then
        stops at its next block: `EngineAPI.read_ahead`'s `pause`): a more urgent job waits, or one as urgent does
        and this one has run `READ_SECONDS` (jobs of one priority take turns, as short pieces did)."""

        def waiting() -> bool:
            with self._queue.mutex:
                head = self._queue.queue[0].priority if self._queue.queue else None
            return head is not None and (head < priority or (
                head == priority and time.monotonic() - self._started >= READ_SECONDS))

        return waiting

    def submit(self, kind: str, fn: Callable[[EngineAPI], T], priority: int = INTERACTIVE,
               ) -> concurrent.futures.Future[T]:
        """Run `fn(engine)` on the worker thread."""
        return self._submit_raw(kind, fn, priority)

    def load(self, config: EngineConfig, progress: Callable[[str], None]) -> concurrent.futures.Future[EngineInfo]:
        """Replace the engine with one loaded from `config` (the old one serves until the new one is ready)."""
        self.state = "loading"

        def run(_: Any) -> EngineInfo:
            self._fail_streams(EngineUnavailable("The model was replaced while this continuation was decoding."))
            try:
                engine = self._loader(config, progress)
                info = engine.info()
            except BaseException as exc:
                self.state, self.error = "failed", str(exc) or type(exc).__name__
                self.engine, self.info = None, None
                raise
            self.engine, self.info, self.state, self.error = engine, info, "ready", None
            return info

        return self._submit_raw("load", run, LOAD)

    def _submit_raw(self, kind: str, fn: Callable[[Any], T], priority: int) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._queue.put(_Job(priority, next(self._seq), kind, fn, future))
        return future

    def stop(self) -> None:
        """End the thread after the jobs already running (pending ones are dropped)."""
        self._submit_raw(_STOP, lambda _: None, -1)

    def _next(self) -> _Job | None:
        """The next job to run; None when batched continuations should take a decode step first."""
        if not self._streams:
            return self._queue.get()
        with self._queue.mutex:
            head = self._queue.queue[0] if self._queue.queue else None
        if head is None or head.priority > SUGGEST:
            return None
        return self._queue.get_nowait()

    def _advance(self) -> None:
        """One decode step of the batched continuations; the finished ones answer their futures."""
        assert self.engine is not None
        self.running = "+".join(sorted({kind for _, kind, _, _ in self._streams.values()}))
        start = time.monotonic()
        try:
            finished = self.engine.step()
        except BaseException as exc:
            log.debug("batched decode step failed: %s", exc)
            self.engine.drop_batch()
            release_memory()
            self._fail_streams(exc)
            return
        finally:
            self._traced(self.running, SUGGEST, start, start)
            self.running = None
        for request in finished:
            entry = self._streams.pop(id(request), None)
            if entry is not None:
                _, kind, start, future = entry
                self.latency_ms[kind] = round((time.perf_counter() - start) * 1000, 1)
                future.set_result(request.text)

    def _fail_streams(self, exc: BaseException) -> None:
        streams, self._streams = self._streams, {}
        for _, _, _, future in streams.values():
            future.set_exception(exc)

    def _run(self) -> None:
        while True:
            job = self._next()
            if job is None:
                self._advance()
                continue
            if job.kind == _STOP:
                self._fail_streams(EngineUnavailable("The server is shutting down."))
                return
            if not job.future.set_running_or_notify_cancel():
                continue
            try:
                if job.kind != "load":
                    if self.engine is None:
                        raise EngineUnavailable(self.unavailable_reason())
                    target: Any = self.engine
                else:
                    target = None
                self.running = job.kind
                start = time.perf_counter()
                started = self._started = time.monotonic()
                try:
                    result = job.fn(target)
                finally:
                    self._traced(job.kind, job.priority, job.queued, started)
                if isinstance(result, Request):  # decoded with the others, between the more urgent jobs
                    self._streams[id(result)] = (result, job.kind, start, job.future)
                    continue
                self.latency_ms[job.kind] = round((time.perf_counter() - start) * 1000, 1)
                job.future.set_result(result)
            except BaseException as exc:
                if job.kind != "load":
                    log.debug("engine job %s failed: %s", job.kind, exc)
                if isinstance(exc, torch.OutOfMemoryError | MemoryError):
                    release_memory()
                job.future.set_exception(exc)
            finally:
                self.running = None

    def _traced(self, kind: str, priority: int, queued: float, started: float) -> None:
        if self._trace is not None:
            self._trace.write(json.dumps({"kind": kind, "priority": priority, "queued": round(queued, 4),
                                          "start": round(started, 4), "end": round(time.monotonic(), 4)}) + "\n")

    def unavailable_reason(self) -> str:
        if self.state == "loading":
            return "The model is still loading."
        if self.state == "failed":
            return f"The model failed to load: {self.error}"
        return "No model is loaded."
