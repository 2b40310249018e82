"""initialize / initialized / configuration changes / shutdown."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import TYPE_CHECKING, Any

from lsprotocol import types

from .generation import drop_stale
from .loading import apply_settings, start_loading

if TYPE_CHECKING:
    from .server import TinymorphServer

log = logging.getLogger(__name__)


async def pull_configuration(server: TinymorphServer) -> Any:
    """The client's `tinymorph` section, or None when it has none or cannot be asked."""
    if not server.supports("workspace.configuration"):
        return None
    try:
        result = await server.workspace_configuration_async(
            types.ConfigurationParams(items=[types.ConfigurationItem(section="tinymorph")]))
    except Exception as exc:
        log.info("workspace/configuration failed: %s", exc)
        return None
    return result[0] if result and isinstance(result[0], dict) and result[0] else None


def register(server: TinymorphServer) -> None:
    @server.feature(types.INITIALIZE)
    def initialize(ls: TinymorphServer, params: types.InitializeParams) -> None:
        ls.loop, ls.loop_thread = asyncio.get_running_loop(), threading.get_ident()
        apply_settings(ls, params.initialization_options, react=False)

    @server.feature(types.INITIALIZED)
    async def initialized(ls: TinymorphServer, params: types.InitializedParams) -> None:
        pulled = await pull_configuration(ls)
        if pulled is not None:  # the client's settings override the initialization options
            apply_settings(ls, pulled, react=False)
        start_loading(ls)

    @server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
    async def changed(ls: TinymorphServer, params: types.DidChangeConfigurationParams) -> None:
        raw = await pull_configuration(ls)
        if raw is None and isinstance(params.settings, dict):
            raw = params.settings.get("tinymorph", params.settings)
        if raw is not None:
            apply_settings(ls, raw)

    @server.feature(types.SHUTDOWN)
    def shutdown(ls: TinymorphServer, params: Any) -> None:
        for state in ls.docs.values():
            drop_stale(state)
        ls.worker.stop()

