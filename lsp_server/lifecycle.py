"""initialize / initialized / configuration changes / shutdown, and the end of the process (after `exit`, when
the client's stdin closes, or when the client's process is gone)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import sys
import threading
from typing import TYPE_CHECKING, Any, NoReturn

from lsprotocol import types

from .generation import drop_stale
from .loading import apply_settings, start_loading

if TYPE_CHECKING:
    from .server import TinymorphServer

log = logging.getLogger(__name__)

CONFIGURATION_TIMEOUT = 5.0
"""Seconds to wait for the client's answer to `workspace/configuration` before going on without it (read at each
request: a test may set it lower)."""
PARENT_POLL = 3.0
"""Seconds between checks that the client's process (`processId` of `initialize`) still exists."""


def section_of(answer: Any) -> tuple[dict[str, Any] | None, str | None]:
    """(the `tinymorph` section, None) from an answer to `workspace/configuration`, or (None, why it is unusable).
    A null section is no section (the client has none), not a problem."""
    if not isinstance(answer, list | tuple) or not answer:
        return None, f"expected a list with one item, got {answer!r:.80}"
    first = answer[0]
    if first is None or first == {}:
        return None, None
    if not isinstance(first, dict):
        return None, f"expected an object or null, got {first!r:.80}"
    return first, None


async def pull_configuration(server: TinymorphServer) -> Any:
    """The client's `tinymorph` section, or None when it has none or cannot be asked. An answer that is late (past
    `CONFIGURATION_TIMEOUT`), an error or unusable gives None too, and one warning says the defaults are used."""
    if not server.supports("workspace.configuration"):
        return None
    request = server.workspace_configuration_async(
        types.ConfigurationParams(items=[types.ConfigurationItem(section="tinymorph")]))
    problem: str | None
    try:  # shielded: a late answer then finds its request still open instead of a cancelled one
        answer = await asyncio.wait_for(asyncio.shield(request), CONFIGURATION_TIMEOUT)
    except asyncio.TimeoutError:
        problem = f"no answer after {CONFIGURATION_TIMEOUT:g} s"
    except Exception as exc:
        problem = f"the client answered with an error: {exc}"
    else:
        section, problem = section_of(answer)
        if problem is None:
            return section
    log.warning("could not read the client's configuration (workspace/configuration: %s); using the defaults "
                "(and the initialization options)", problem)
    return None


def parent_alive(pid: int) -> bool:
    """Whether process `pid` exists (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno != errno.ESRCH
    return True


async def watch_parent(server: TinymorphServer, pid: int) -> None:
    """End the process once the client's process `pid` is gone (an editor that died cannot send `exit`)."""
    while parent_alive(pid):
        await asyncio.sleep(PARENT_POLL)
    log.warning("the client's process %d is gone: exiting", pid)
    end_process(server)


def end_process(server: TinymorphServer) -> NoReturn:
    """Stop the engine and end the process: exit code 0 after a `shutdown` request, else 1.

    `os._exit` rather than a normal interpreter exit, which would tear down torch while the engine thread may still
    be in a decode step (the C++ runtime then aborts the process) and would wait on a stdin reader that never
    returns.
    """
    for state in server.docs.values():
        drop_stale(state)
    server.worker.stop()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # closed by `exit`, or the client is gone
            stream.flush()
    os._exit(0 if server.shut_down else 1)


def register(server: TinymorphServer) -> None:
    @server.feature(types.INITIALIZE)
    def initialize(ls: TinymorphServer, params: types.InitializeParams) -> None:
        ls.loop, ls.loop_thread = asyncio.get_running_loop(), threading.get_ident()
        apply_settings(ls, params.initialization_options, react=False)
        pid = params.process_id
        if pid is None or pid <= 0 or os.name == "nt":  # on Windows os.kill(pid, 0) would end that process
            return
        if parent_alive(pid):
            ls.spawn(watch_parent(ls, pid), "watch the client's process")
        else:  # e.g. a client in another PID namespace (a container): its id means nothing here
            log.info("the client's process %d is not visible from here; not watching it", pid)

    @server.feature(types.INITIALIZED)
    async def initialized(ls: TinymorphServer, params: types.InitializedParams) -> None:
        if ls.loaded_key is not None:  # sent again: the engine is loaded or loading already
            log.info("`initialized` again: ignored")
            return
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
        ls.shut_down = True
        for state in ls.docs.values():
            drop_stale(state)
        ls.worker.stop()
