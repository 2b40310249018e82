"""The tinymorph language server: typed state, the engine worker, and the document pipeline.

LSP features live in their own modules (`documents`, `hints`, `hover`, `actions`, `completion`, `commands`), each
with a `register(server)`; `create_server()` wires them up.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import threading
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlparse

from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams, JsonRpcInvalidRequest
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol
from pygls.protocol.language_server import lsp_method

from steering.annotate import Annotation
from steering.config import EngineConfig
from steering.errors import TinymorphError
from steering.generate import CancelToken

from .config import Settings, parse_settings
from .incremental import merge as merge_annotations
from .incremental import plan as incremental_plan
from .incremental import rereads as reread_plans
from .state import Annotated, DocState, SteeringSet, Suggestion
from .worker import (
    ANNOTATE,
    INTERACTIVE,
    SUGGEST,
    EngineAPI,
    EngineUnavailable,
    EngineWorker,
    Loader,
    load_engine,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

VERSION = "0.1.0"
FULL_REREAD_DELAY = 2.0
"""Seconds of quiet after an incremental annotation before the whole document is read again."""
PROMPT_CHARS = 2000
"""Characters of text before the cursor that a completion or suggestion reads."""


class Superseded(Exception):
    """A generation cancelled because a newer request for the same document arrived."""


class TinymorphProtocol(LanguageServerProtocol):
    """pygls' protocol with two changes: UTF-8 positions when the client offers them (else UTF-16), and document
    text kept by the server itself (`lsp_server.text.Document`, LSP line breaks only)."""

    @lsp_method(types.INITIALIZE)
    def lsp_initialize(self, params: types.InitializeParams) -> Any:
        general = params.capabilities.general
        if general is not None and general.position_encodings:
            offered = general.position_encodings
            general.position_encodings = [types.PositionEncodingKind.Utf8] if types.PositionEncodingKind.Utf8 in \
                offered else [types.PositionEncodingKind.Utf16]
        return (yield from super().lsp_initialize(params))

    @lsp_method(types.TEXT_DOCUMENT_DID_OPEN)
    def lsp_text_document__did_open(self, params: types.DidOpenTextDocumentParams) -> Any:
        if (handler := self.fm.features.get(types.TEXT_DOCUMENT_DID_OPEN)) is not None:
            yield handler, (params,), None

    @lsp_method(types.TEXT_DOCUMENT_DID_CHANGE)
    def lsp_text_document__did_change(self, params: types.DidChangeTextDocumentParams) -> Any:
        if (handler := self.fm.features.get(types.TEXT_DOCUMENT_DID_CHANGE)) is not None:
            yield handler, (params,), None

    @lsp_method(types.TEXT_DOCUMENT_DID_CLOSE)
    def lsp_text_document__did_close(self, params: types.DidCloseTextDocumentParams) -> Any:
        if (handler := self.fm.features.get(types.TEXT_DOCUMENT_DID_CLOSE)) is not None:
            yield handler, (params,), None


@dataclass(frozen=True)
class FeatureCard:
    """What hints and hover show of a feature: its label and the tokens it promotes."""

    label: str
    promoted: tuple[str, ...]


def uri_path(uri: str) -> Path | None:
    parsed = urlparse(uri)
    return Path(unquote(parsed.path)) if parsed.scheme == "file" else None


class TinymorphServer(LanguageServer):
    def __init__(self, loader: Loader = load_engine) -> None:
        super().__init__("tinymorph", VERSION, protocol_cls=TinymorphProtocol,
                         text_document_sync_kind=types.TextDocumentSyncKind.Incremental)
        self.settings = Settings()
        self.worker = EngineWorker(loader)
        self.docs: dict[str, DocState] = {}
        self.steering_sets: dict[Path | None, SteeringSet] = {}
        self.cards: dict[int, FeatureCard] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        self.loaded_key: tuple[Any, ...] | None = None
        self.load_task: asyncio.Task[Any] | None = None
        self.hint_refreshes = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.loop_thread: int | None = None

    # ------------------------------------------------------------------------------------------ plumbing
    @property
    def encoding(self) -> str:
        try:
            encoding = self.workspace.position_encoding or types.PositionEncodingKind.Utf16
            return str(getattr(encoding, "value", encoding))
        except RuntimeError:
            return types.PositionEncodingKind.Utf16

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run `coro` in the background, keeping a reference and logging its failure."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self.tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("background task %s failed", name, exc_info=t.exception())

        task.add_done_callback(done)
        return task

    async def run_engine(self, kind: str, fn: Callable[[EngineAPI], T], priority: int = INTERACTIVE,
                         cancel: CancelToken | None = None) -> T:
        """Run `fn(engine)` on the worker; cancelling the awaiting task cancels the job (or its decode loop)."""
        future: concurrent.futures.Future[T] = self.worker.submit(kind, fn, priority)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()
            if cancel is not None:
                cancel.cancel()
            raise

    def tell(self, message: str, kind: types.MessageType = types.MessageType.Warning) -> None:
        """A pop-up for what the user must act on."""
        log.warning(message) if kind != types.MessageType.Info else log.info(message)
        self.window_show_message(types.ShowMessageParams(type=kind, message=f"tinymorph: {message}"))

    def client_supports(self, path: str) -> bool:
        node: Any = self.client_capabilities
        for part in path.split("."):
            node = getattr(node, part, None)
            if node is None:
                return False
        return bool(node)

    def refresh_hints(self) -> None:
        if self.client_supports("workspace.inlay_hint.refresh_support"):
            self.hint_refreshes += 1
            self.workspace_inlay_hint_refresh(None)

    # ------------------------------------------------------------------------------------------ documents
    def state(self, uri: str) -> DocState:
        state = self.docs.get(uri)
        if state is None:
            raise JsonRpcInvalidParams(f"Unknown document {uri}: open it first (textDocument/didOpen).")
        return state

    def handles(self, language_id: str) -> bool:
        return language_id in self.settings.filetypes

    def steering_for(self, uri: str | None = None) -> SteeringSet:
        """The steering set of the workspace folder holding `uri` (or of the first folder, or in memory)."""
        folders: list[Path] = []
        try:
            folders = [p for f in self.workspace.folders.values() if (p := uri_path(f.uri)) is not None]
            if not folders and self.workspace.root_path:
                folders = [Path(self.workspace.root_path)]
        except RuntimeError:
            pass
        chosen: Path | None = folders[0] if folders else None
        path = uri_path(uri) if uri else None
        if path is not None:
            inside = [f for f in folders if path == f or f in path.parents]
            chosen = max(inside, key=lambda f: len(f.parts)) if inside else chosen
        if chosen not in self.steering_sets:
            steering = SteeringSet(chosen)
            self.steering_sets[chosen] = steering
            if steering.load_error:
                self.tell(steering.load_error)
        return self.steering_sets[chosen]

    def schedule(self, state: DocState, delay: float | None = None) -> None:
        """(Re)start the document's debounce timer; the older pending run is cancelled."""
        if state.pending is not None and not state.pending.done():
            state.pending.cancel()
        if not self.handles(state.doc.language_id):
            return
        wait = self.settings.debounce_ms / 1000 if delay is None else delay
        state.pending = self.spawn(self._annotate_later(state, wait), f"annotate {state.doc.uri}")

    def window(self, state: DocState) -> tuple[int, int]:
        """The part of the document to annotate: all of it, or for long documents a window of `maxChars` around
        the visible range (or the last edit), cut at paragraph breaks."""
        text, limit = state.doc.text, self.settings.max_chars
        if len(text) <= limit:
            return 0, len(text)
        if state.visible is not None:
            focus = (state.visible[0] + state.visible[1]) // 2
        else:
            focus = state.last_edit or 0
        lo = max(0, min(focus - limit // 2, len(text) - limit))
        hi = min(len(text), lo + limit)
        cut = text.find("\n\n", lo, focus)
        if lo > 0 and cut != -1:
            lo = cut + 2
        cut = text.rfind("\n\n", max(focus, lo), hi)
        if hi < len(text) and cut != -1:
            hi = cut
        return lo, hi

    async def _annotate_later(self, state: DocState, wait: float) -> None:
        """The debounced pipeline: read the document (only the edited spans when possible), refresh the hints,
        compute the suggestion, and after an incremental read, read everything again once the writer pauses."""
        await asyncio.sleep(wait)
        partial = await self._annotate(state)
        if self.settings.suggestion and state.last_edit is not None and state.annotated is not None:
            await self._suggest(state)
        if partial:
            await asyncio.sleep(FULL_REREAD_DELAY)
            await self._reread(state)

    async def _reread(self, state: DocState) -> None:
        """Read an incrementally annotated document again, a few spans per engine job."""
        annotated = state.annotated
        if annotated is None:
            return
        version, text = annotated.version, annotated.annotation.text
        for step in reread_plans(annotated.annotation):
            current = state.annotated
            if current is None or state.doc.version != version or self.docs.get(state.doc.uri) is not state:
                return
            piece, old, granularity = text[step.start:step.end], current.annotation, current.granularity

            known = set(self.cards)

            def job(engine: EngineAPI, piece: str = piece, old: Annotation = old, step: Any = step,
                    granularity: str = granularity, known: set[int] = known,
                    ) -> tuple[Annotation, dict[int, FeatureCard]]:
                fresh = self.read(engine, piece, granularity)
                return merge_annotations(old, text, step, fresh), cards_of(engine, new_features(fresh, known))

            try:
                merged, cards = await self.run_engine("reread", job, ANNOTATE)
            except Exception as exc:
                log.debug("re-reading %s stopped: %s", state.doc.uri, exc)
                return
            self.cards.update(cards)
            if state.doc.version != version or state.annotated is not current:
                return
            state.annotated = dataclasses.replace(current, annotation=merged)
        if state.annotated is not None and state.doc.version == version:
            state.annotated = dataclasses.replace(state.annotated, partial=False)
            self.refresh_hints()

    def read(self, engine: EngineAPI, text: str, granularity: str) -> Annotation:
        """The one annotate call of the server (runs on the worker): enough span features for hints and tooltips."""
        return engine.annotate(text, top_k=5, paragraph_top=max(8, self.settings.hint_count + 5),
                               granularity=granularity)

    async def _annotate(self, state: DocState) -> bool:
        """Annotate the document's current version, reading only the edited spans where the previous annotation
        allows it; True when it did."""
        doc = state.doc
        if self.docs.get(doc.uri) is not state or self.worker.engine is None:
            return False
        version, (base, end) = doc.version, self.window(state)
        text, doc_length = doc.text[base:end], len(doc.text)
        granularity = self.settings.hint_granularity
        known = set(self.cards)
        previous = state.annotated
        the_plan = None
        if previous is not None and previous.base == 0 and base == 0 and end == doc_length and \
                previous.doc_length == len(previous.annotation.text) and previous.granularity == granularity:
            the_plan = incremental_plan(previous.annotation, text, granularity)
        if the_plan is not None and previous is not None:
            old, step = previous.annotation, the_plan
            piece = text[step.start:step.end]
        else:
            old, step, piece = None, None, text

        def job(engine: EngineAPI) -> tuple[Annotation, dict[int, FeatureCard]]:
            fresh = None
            if step is None or step.dirty:
                fresh = self.read(engine, piece, granularity)
            cards = cards_of(engine, new_features(fresh, known)) if fresh is not None else {}
            if step is None:
                assert fresh is not None
                return fresh, cards
            assert old is not None
            return merge_annotations(old, text, step, fresh), cards

        try:
            annotation, cards = await self.run_engine("annotate", job, ANNOTATE)
        except EngineUnavailable:
            return False
        except Exception as exc:
            log.warning("annotating %s failed: %s", doc.uri, exc)
            return False
        self.cards.update(cards)
        if self.docs.get(doc.uri) is not state or doc.version != version:
            return False  # outdated: a newer run is scheduled
        state.annotated = Annotated(version, base, doc_length, annotation, granularity, partial=step is not None)
        self.refresh_hints()
        return step is not None

    async def _suggest(self, state: DocState) -> None:
        doc = state.doc
        version, offset = doc.version, state.last_edit
        if offset is None:
            return
        prompt = doc.text[max(0, offset - PROMPT_CHARS):offset]
        if not prompt.strip():
            return
        steering = self.steering_for(doc.uri).interventions()
        cancel = CancelToken()
        sampling = self.sampling(stop=("\n\n",))
        try:
            text = await self.run_engine("suggest", lambda e: "".join(e.generate(prompt, steering, sampling, cancel)),
                                         SUGGEST, cancel)
        except EngineUnavailable:
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("suggestion for %s failed: %s", doc.uri, exc)
            return
        if doc.version == version and text.strip() and self.docs.get(doc.uri) is state:
            state.suggestion = Suggestion(version, offset, text)
            self.refresh_hints()

    def sampling(self, *, max_tokens: int | None = None, stop: tuple[str, ...] = ()) -> Any:
        from steering.config import SamplingConfig

        return SamplingConfig(max_tokens=max_tokens or self.settings.max_tokens,
                              temperature=self.settings.temperature, stop=stop, seed=0)

    async def generate(self, uri: str, prompt: str, *, kind: str, max_tokens: int | None = None,
                       stop: tuple[str, ...] = ()) -> str:
        """A steered continuation of `prompt`; a newer generation for the same document cancels this one."""
        state = self.state(uri)
        if state.generation is not None:
            state.generation.cancel()
        cancel = state.generation = CancelToken()
        steering = self.steering_for(uri).interventions()
        sampling = self.sampling(max_tokens=max_tokens, stop=stop)
        try:
            text = await self.run_engine(
                kind, lambda e: "".join(e.generate(prompt, steering, sampling, cancel)), INTERACTIVE, cancel)
        except TinymorphError as exc:  # e.g. steering with features the loaded SAE does not have
            raise JsonRpcInvalidRequest(f"tinymorph: {exc}") from None
        finally:
            if state.generation is cancel:
                state.generation = None
        if cancel.cancelled:
            raise Superseded(f"a newer request for {uri} took over")
        return text

    # ------------------------------------------------------------------------------------------ settings and engine
    def apply_settings(self, raw: Any, *, react: bool = True) -> None:
        """Settings from `raw` on top of the current ones; with `react`, reload the engine or re-annotate as the
        change needs (at start-up nothing is loaded yet, so there is nothing to react to)."""
        settings, problems = parse_settings(raw, self.settings)
        if problems:
            self.tell("invalid settings: " + "; ".join(problems))
        old, self.settings = self.settings, settings
        if not react:
            return
        if settings.engine_key() != self.loaded_key:
            self.start_loading()
        elif (old.hint_granularity, old.hint_count, old.suggestion, old.max_chars, old.filetypes) != (
                settings.hint_granularity, settings.hint_count, settings.suggestion, settings.max_chars,
                settings.filetypes):
            for state in self.docs.values():
                self.schedule(state, 0)
            self.refresh_hints()

    def start_loading(self) -> None:
        self.loaded_key = self.settings.engine_key()
        if self.load_task is not None and not self.load_task.done():
            self.load_task.cancel()
        self.load_task = self.spawn(self._load(self.settings), "load engine")

    async def _load(self, settings: Settings) -> None:
        config = EngineConfig(model=settings.model, sae=settings.sae, device=settings.device,
                              dtype=settings.dtype, trust_remote_code=settings.trust_remote_code)  # type: ignore[arg-type]
        token: str | None = None
        loop = asyncio.get_running_loop()
        if self.client_supports("window.work_done_progress"):
            token = f"tinymorph-load-{uuid.uuid4()}"
            try:
                await self.work_done_progress.create_async(token)
                self.work_done_progress.begin(token, types.WorkDoneProgressBegin(
                    title="tinymorph", message=f"loading {settings.model}", cancellable=False))
            except Exception as exc:
                log.debug("no progress: %s", exc)
                token = None

        def progress(stage: str) -> None:
            log.info("load: %s", stage)
            if token is not None:
                loop.call_soon_threadsafe(self.work_done_progress.report, token,
                                          types.WorkDoneProgressReport(message=stage))

        try:
            info = await asyncio.wrap_future(self.worker.load(config, progress))
        except Exception as exc:
            if token is not None:
                self.work_done_progress.end(token, types.WorkDoneProgressEnd(message="failed"))
            self.tell(f"the model failed to load: {exc}", types.MessageType.Error)
            return
        if token is not None:
            self.work_done_progress.end(token, types.WorkDoneProgressEnd(message="ready"))
        self.cards.clear()
        log.info("engine ready: %s", info.to_dict())
        for state in self.docs.values():
            state.annotated = None
            self.schedule(state, 0)


def new_features(annotation: Annotation, known: set[int]) -> list[int]:
    """Features of `annotation` (spans first, then tokens) that have no card yet, each once."""
    wanted = [f.feature for span in annotation.paragraphs for f in span.features]
    wanted += [f.feature for token in annotation.tokens for f in token.features]
    return [f for f in dict.fromkeys(wanted) if f not in known]


EXPLAIN_LIMIT = 256
"""Features without a labels.json entry explained (logit lens) per annotation; the rest wait for the next one."""


def cards_of(engine: EngineAPI, features: list[int]) -> dict[int, FeatureCard]:
    """Labels and promoted tokens: from the SAE's labels.json where it has them, else from the logit lens."""
    entries = (engine.labels() or {}).get("features", {})
    cards, explained = {}, 0
    for feature in features:
        entry = entries.get(str(feature))
        if entry:
            cards[feature] = FeatureCard(entry.get("label", f"#{feature}"), tuple(entry.get("promoted", ())[:5]))
        elif explained < EXPLAIN_LIMIT:
            explained += 1
            explanation = engine.explain(feature, top=5)
            cards[feature] = FeatureCard(explanation.label, tuple(t.token for t in explanation.lens.promoted[:5]))
    return cards


class LogForwarder(logging.Handler):
    """Sends warnings and errors of the server's loggers to the client's log (`window/logMessage`)."""

    def __init__(self, server: TinymorphServer) -> None:
        super().__init__(logging.WARNING)
        self.server = server

    def emit(self, record: logging.LogRecord) -> None:
        try:
            kind = types.MessageType.Error if record.levelno >= logging.ERROR else types.MessageType.Warning
            params = types.LogMessageParams(type=kind, message=self.format(record))
            loop = self.server.loop
            if loop is None:
                return  # not connected yet: stderr and the log file have it
            if threading.get_ident() == self.server.loop_thread:
                self.server.window_log_message(params)
            else:  # the engine thread logs too; only the event loop may write to the client
                loop.call_soon_threadsafe(self.server.window_log_message, params)
        except Exception:  # logging must never break the server
            pass


def create_server(loader: Loader = load_engine) -> TinymorphServer:
    """The server with every feature registered; a feature that fails to register is logged and left out."""
    from . import actions, commands, completion, documents, hints, hover, lifecycle

    server = TinymorphServer(loader)
    for module in (lifecycle, documents, hints, hover, actions, completion, commands):
        try:
            module.register(server)
        except Exception:
            log.exception("could not register %s", module.__name__)
    return server
