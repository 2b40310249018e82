"""Progress bars (`window/workDoneProgress`) where the editor shows them: loading the model, reading a long
document whole.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import TYPE_CHECKING

from lsprotocol import types

if TYPE_CHECKING:
    from .server import TinymorphServer

log = logging.getLogger(__name__)

PROGRESS_TIMEOUT = 5.0
"""Seconds to wait for the editor to accept a progress token: a client that never answers gets no progress bar."""


async def begin(server: TinymorphServer, message: str, percentage: int | None = None) -> str | None:
    """A progress bar titled tinymorph showing `message`; its token, or None where the editor shows none."""
    if not server.supports("window.work_done_progress"):
        return None
    token = f"tinymorph-{uuid.uuid4()}"
    try:
        await asyncio.wait_for(server.work_done_progress.create_async(token), PROGRESS_TIMEOUT)
        server.work_done_progress.begin(token, types.WorkDoneProgressBegin(
            title="tinymorph", message=message, cancellable=False, percentage=percentage))
    except Exception as exc:  # TimeoutError included
        log.debug("no progress: %s", exc or type(exc).__name__)
        return None
    return token
