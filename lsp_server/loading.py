"""Settings and the engine: applying new settings (and reacting to what changed), loading the model and SAE on the
worker with progress in the editor."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from lsprotocol import types

from .config import Settings, parse_settings
from .pipeline import schedule
from .progress import begin

TRUST_TIMEOUT = 300.0
"""Seconds to wait for the writer's answer to "run this model's own code?" (no answer: no)."""
RUN_CODE = "Run its code"

if TYPE_CHECKING:
    from .server import TinymorphServer

log = logging.getLogger(__name__)


def apply_settings(server: TinymorphServer, raw: Any, *, react: bool = True) -> None:
    """Settings from `raw` on top of the current ones; with `react`, reload the engine or re-annotate as the change
    needs (at start-up nothing is loaded yet, so there is nothing to react to)."""
    settings, problems = parse_settings(raw, server.settings)
    if problems:
        server.tell("invalid settings: " + "; ".join(problems))
    old, server.settings = server.settings, settings
    if not react:
        return
    if settings.engine_key() != server.loaded_key:
        start_loading(server)
    elif settings.annotation_key() != old.annotation_key():
        for state in server.docs.values():
            schedule(server, state, 0)
        server.refresh_hints()


def start_loading(server: TinymorphServer) -> None:
    """Load the engine the settings describe; a load still running is cancelled."""
    server.loaded_key = server.settings.engine_key()
    if server.load_task is not None and not server.load_task.done():
        server.load_task.cancel()
    server.load_task = server.spawn(_load(server, server.settings), "load engine")


async def remote_code_allowed(server: TinymorphServer, model: str) -> bool:
    """Whether the writer allows `model`'s own code to run: settings alone cannot turn `trustRemoteCode` on (a
    cloned project's settings file could), so the server asks once per model and session
    (`window/showMessageRequest`). No answer, or a client that cannot ask, is no."""
    if model in server.trusted_models:
        return True
    ask = types.ShowMessageRequestParams(
        type=types.MessageType.Warning, actions=[types.MessageActionItem(RUN_CODE), types.MessageActionItem("Don't")],
        message=f"tinymorph: the settings ask to run the code that comes with the model {model!r} "
                f"(trustRemoteCode). Only allow this for a model you trust: its code can do anything you can.")
    try:
        answer = await asyncio.wait_for(server.window_show_message_request_async(ask), TRUST_TIMEOUT)
    except Exception as exc:  # TimeoutError included
        log.info("no answer about the model's code: %s", exc or type(exc).__name__)
        answer = None
    if answer is not None and answer.title == RUN_CODE:
        server.trusted_models.add(model)
        return True
    server.tell(f"the code that comes with {model!r} was not run (trustRemoteCode was not allowed); loading it "
                f"without.")
    return False


async def _load(server: TinymorphServer, settings: Settings) -> None:
    trust = settings.trust_remote_code and await remote_code_allowed(server, settings.model)
    config = dataclasses.replace(settings.engine_config(), trust_remote_code=trust)
    loop = asyncio.get_running_loop()
    token = await begin(server, f"loading {settings.model}")

    def progress(stage: str) -> None:
        log.info("load: %s", stage)
        if token is not None:
            loop.call_soon_threadsafe(server.work_done_progress.report, token,
                                      types.WorkDoneProgressReport(message=stage))

    try:
        info = await asyncio.wrap_future(server.worker.load(config, progress))
    except Exception as exc:
        if token is not None:
            server.work_done_progress.end(token, types.WorkDoneProgressEnd(message="failed"))
        server.tell(f"the model failed to load: {exc}", types.MessageType.Error)
        return
    if token is not None:
        server.work_done_progress.end(token, types.WorkDoneProgressEnd(message="ready"))
    server.cards.clear()
    log.info("engine ready: %s", info.to_dict())
    if info.sae is not None and not (info.feature_stats and info.labels):
        missing = " and ".join(x for x, have in (("feature statistics", info.feature_stats), ("labels", info.labels))
                               if not have)
        server.tell(f"the SAE {settings.sae} has no {missing} yet: hints show no words and Amplify uses a fallback "
                    f"scale until it has. Prepare it once over your own writing (it resumes if stopped): "
                    f"tinymorph prepare --sae {settings.sae} --corpus FILES", types.MessageType.Info)
    for state in server.docs.values():
        state.annotated = state.whole = None
        state.pieces = {}
        schedule(server, state, 0)
