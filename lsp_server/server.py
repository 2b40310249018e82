"""The tinymorph language server: its typed state, with the plumbing every feature shares.

Plumbing (imports no feature module): the JSON-RPC reading rules live in `protocol`, stdio and TCP in `transport`,
what the client can do in `capabilities`, the engine's thread in `worker`, settings in `config`, documents and
positions in `text`, per-document state in `state`, the workspaces' steering sets on disk in `workspace`, feature
labels in `cards`, incremental annotation in `incremental`, the C allocator in `memory`.

Features (import the server type only under TYPE_CHECKING): the document pipeline in `pipeline`, engine loading in
`loading`, generation in `generation`, watched features' diagnostics in `findings`, and the LSP features in their
own modules, each with a `register(server)`; `create_server()` (in the entry module, `__main__`) wires them up.
`tests/test_imports.py` holds these rules.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from lsprotocol import types
from pygls.exceptions import FeatureRequestError, JsonRpcInvalidParams
from pygls.lsp.server import LanguageServer

from steering.engine import FeatureCard
from steering.runtime.decode import CancelToken
from steering.runtime.interventions import Intervention

from .capabilities import announced
from .config import Settings
from .protocol import TinymorphProtocol
from .state import DocState
from .text import uri_path
from .worker import INTERACTIVE, EngineAPI, EngineWorker, Loader, load_engine
from .workspace import SteeringSet, Workspaces

log = logging.getLogger(__name__)
T = TypeVar("T")

VERSION = "0.1.0"


class TinymorphServer(LanguageServer):
    def __init__(self, loader: Loader = load_engine) -> None:
        super().__init__("tinymorph", VERSION, protocol_cls=TinymorphProtocol,
                         text_document_sync_kind=types.TextDocumentSyncKind.Incremental)
        self.settings = Settings()
        self.worker = EngineWorker(loader)
        self.docs: dict[str, DocState] = {}
        self.workspaces = Workspaces(self.tell)
        self.told_presets: set[str] = set()
        self.trusted_models: set[str] = set()
        """Models whose own code the writer allowed to run (`loading.remote_code_allowed`) this session."""
        self.cards: dict[int, FeatureCard] = {}
        """Labels of the features seen so far (cleared when another model or SAE loads)."""
        self.tasks: set[asyncio.Task[Any]] = set()
        self.loaded_key: tuple[Any, ...] | None = None
        self.load_task: asyncio.Task[Any] | None = None
        self.hint_refreshes = 0
        self.generations = 0
        """Generations started (a request sharing a running or finished one starts none)."""
        self.loop: asyncio.AbstractEventLoop | None = None
        self.loop_thread: int | None = None
        self.shut_down = False
        """The client sent `shutdown`: the process exits with code 0 (else 1)."""
        self.pulls_diagnostics = False
        """The client pulls diagnostics and takes refreshes (`capabilities.pulls`); else they are published."""

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

    def report_server_error(self, error: Exception, source: Any) -> None:
        """A message the server could not read, or a notification handler that failed: the log has it (pygls
        would pop up "Error in server" with the exception's text, which means nothing to a writer). A failed
        request is in its answer already."""
        if source is not FeatureRequestError:
            log.error("%s: %s", getattr(source, "__name__", source), error)

    async def workspace_apply_edit_async(self, params: types.ApplyWorkspaceEditParams,
                                         ) -> types.ApplyWorkspaceEditResult:
        """pygls' `workspace/applyEdit`, and a message naming the edit when the client refuses or fails it."""
        what = f"\u201c{params.label}\u201d" if params.label else "the edit"
        try:
            result = await super().workspace_apply_edit_async(params)
        except Exception as exc:
            self.tell(f"The editor could not apply {what}: {exc}")
            raise
        if result is None or not result.applied:
            reason = (result.failure_reason if result is not None else None) or "no reason given"
            self.tell(f"The editor did not apply {what}: {reason}.")
        return result

    def supports(self, capability: str) -> bool:
        """Whether the client announced `capability` (a dotted path such as `workspace.configuration`)."""
        try:
            capabilities = self.client_capabilities
        except (AttributeError, RuntimeError):
            return False
        return announced(capabilities, capability)

    def on_fast_path(self) -> bool:
        """Whether the loaded engine runs on the fast path (a cache per document: long prompts are cheap)."""
        return self.worker.info is not None and self.worker.info.fast_path

    def splices(self) -> bool:
        """Whether a continuation's cache splices over edits above the cursor (`steering.fast.model.FastModel.splice`):
        a short edit inside the window then costs only its own tokens."""
        return self.worker.info is not None and self.worker.info.splices

    def refresh_hints(self) -> None:
        if self.supports("workspace.inlay_hint.refresh_support"):
            self.hint_refreshes += 1
            self.workspace_inlay_hint_refresh(None)

    def state(self, uri: str) -> DocState:
        state = self.docs.get(uri)
        if state is None:
            raise JsonRpcInvalidParams(f"Unknown document {uri}: open it first (textDocument/didOpen).")
        return state

    def handles(self, language_id: str) -> bool:
        return language_id in self.settings.filetypes

    def engine_identity(self) -> tuple[str, str] | None:
        """(model, hook point) of the loaded engine, which a preset's vector must have been read at."""
        info = self.worker.info if self.worker.engine is not None else None
        return None if info is None or info.hook is None else (info.model, info.hook)

    def interventions_for(self, uri: str) -> list[Intervention]:
        """What generation for `uri` applies: the workspace's feature steering and the enabled presets made for the
        loaded model (a preset made under another one is left off, with one message saying so)."""
        steering = self.steering_for(uri)
        identity = self.engine_identity()
        for p in steering.presets:
            if p.enabled and not p.fits(identity) and p.id not in self.told_presets:
                self.told_presets.add(p.id)
                self.tell(f"Preset \u201c{p.name}\u201d was made with {p.model} at {p.hook}; the loaded model is "
                          f"{identity[0] if identity else '-'}, so it is left off.")
        return steering.interventions(identity)

    def folders(self) -> list[Path]:
        """The workspace folders on disk the client named (or its root path)."""
        try:
            folders = [p for f in self.workspace.folders.values() if (p := uri_path(f.uri)) is not None]
            return folders or ([Path(self.workspace.root_path)] if self.workspace.root_path else [])
        except RuntimeError:  # not initialized yet
            return []

    def steering_for(self, uri: str | None = None) -> SteeringSet:
        """The steering set of the workspace folder holding `uri` (`Workspaces.for_uri`)."""
        return self.workspaces.for_uri(uri, self.folders())
