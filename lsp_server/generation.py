"""Steered generation for a document: the continuation behind completions, inline completions, rewrites and the
suggestion hint, under the workspace's steering. One generation per document: the same continuation asked twice is
decoded once, a different one cancels the older, and an edit cancels it before its next decode step."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from pygls.exceptions import JsonRpcInvalidRequest

from steering.config import SamplingConfig
from steering.errors import TinymorphError
from steering.fast.batched import Request
from steering.runtime.decode import CancelToken
from steering.runtime.interventions import Intervention

from .config import Settings
from .state import DocState, Running
from .text import common_prefix
from .worker import INTERACTIVE, READ_SECONDS, WHOLE, EngineAPI, EngineUnavailable

if TYPE_CHECKING:
    from .server import TinymorphServer

PROMPT_CHARS = 2000
"""Characters of text before the cursor that a continuation reads through the transformers forward."""
WINDOW_CHARS = 4000
"""... and on the fast path, where a window's cache is kept while the writer types: a window grows from
`FRESH_CHARS` to 1.5 times this (about 1,400 tokens of prose) before it moves on. Held-out CE of a continuation
after 1,024 tokens is within 0.002 nats of 2,048 (`benchmarks/bench_window.py`)."""
FRESH_CHARS = 2000
"""The fast path's new window: about 450 tokens, a cold read of 0.47 s on a 2-core CPU against 0.95 s at twice
the size, for 0.05 nats more CE on the first continuations there (`bench_window.py`); typing on, it grows."""
HEAD_CHARS = 80
"""The window's start is remembered by its first characters, found again after edits above it."""
SPLICE_CHARS = 400
"""An edit inside the window of at most this many characters (about 100 tokens) is spliced over on the fast path:
only its own tokens are read (`steering.fast.model.FastModel.splice`)."""

class Superseded(Exception):
    """A generation cancelled because a newer request for the same document arrived."""


class OutOfMemory(Exception):
    """The device ran out of memory during a generation (the user was told once; the next request tries again)."""


OOM_QUIET_S = 60.0
"""After telling the user of an out-of-memory generation, further ones within this many seconds go unsaid."""
_told_oom: dict[int, float] = {}


def out_of_memory(server: TinymorphServer, exc: BaseException) -> OutOfMemory:
    """Tell the user (once a minute at most) that a generation ran out of memory; the error to raise."""
    now = time.monotonic()
    if now - _told_oom.get(id(server), -OOM_QUIET_S) >= OOM_QUIET_S:
        _told_oom[id(server)] = now
        server.tell("a continuation ran out of memory and was dropped; hints still work. Lower maxTokens, close "
                    "large documents or use a smaller model if it happens again.")
    return OutOfMemory(str(exc) or type(exc).__name__)


def prompt_window(text: str, offset: int, size: int = PROMPT_CHARS, head: str | None = None,
                  fresh: int | None = None) -> tuple[str, str]:
    """The prompt of a continuation at `offset`, and the head that keeps its start: all the text before `offset`
    when that is at most 1.5 `fresh` characters (`fresh` defaults to `size`), else a window from the start `head`
    marks (the first characters of the last window, searched for again so that an edit above the window does not
    move it) while it lies between `fresh` / 2 and 1.5 `size` characters before the cursor, else from a new start
    about `fresh` characters before it (a paragraph's or a sentence's start where there is one near). Typing on, and
    editing anywhere but inside the window, keep the prompt's tokens so far and with them the prefix cache of the
    window."""
    fresh = size if fresh is None else min(fresh, size)
    if offset <= fresh + fresh // 2:
        return text[:offset], ""
    if head:
        at = text.rfind(head, max(0, offset - size - size // 2), offset)
        if at != -1 and offset - at >= fresh // 2:
            return text[at:offset], head
    lo = offset - fresh
    for mark in ("\n\n", ". ", "\n", " "):
        cut = text.find(mark, lo, lo + fresh // 4)
        if cut != -1:
            lo = cut + len(mark)
            break
    return text[lo:offset], text[lo : lo + HEAD_CHARS]


def spliced(prompt: str, before: str) -> bool:
    """Whether `prompt` is `before` with one edit of at most `SPLICE_CHARS` characters (then typing at the end): the
    text after the first change is found again that close to it."""
    at = common_prefix(prompt, before)
    probe = 40
    for skip in range(0, SPLICE_CHARS + 1, probe):
        after = before[at + skip:at + skip + probe]
        if len(after) < probe:
            return False
        if prompt.find(after, at, at + SPLICE_CHARS + probe) != -1:
            return True
    return False


def relocated(text: str, offset: int, before: str, size: int, fresh: int) -> tuple[str, str] | None:
    """The last window (`before`) found again after an edit in its first characters (which `prompt_window` finds
    it by): its start is where a later piece of it is, less that piece's place in it. None where no piece of it is
    found, or the window would be shorter than `fresh` / 2 or longer than 1.5 `size` characters."""
    lo = max(0, offset - size - size // 2)
    for skip in (HEAD_CHARS, 2 * HEAD_CHARS, 4 * HEAD_CHARS):
        piece = before[skip:skip + HEAD_CHARS]
        if len(piece) < HEAD_CHARS:
            return None
        at = text.rfind(piece, lo, offset)
        if at != -1:
            start = at - skip
            if start < lo or offset - start < fresh // 2:
                return None
            space = max(text.rfind(c, max(lo, start - 40), start) for c in (" ", "\n"))
            start = space + 1 if space != -1 else start  # the start of the word the window began in
            return text[start:offset], text[start:start + HEAD_CHARS]
    return None


def at_window_end(state: DocState, offset: int) -> bool:
    """Whether `offset` is at or past the end of the writer's last continuation window (typing on there), not above
    it: where that window's last characters are found, ending at most at `offset`."""
    before = state.window_text
    if not before:
        return True
    return state.doc.text.rfind(before[-HEAD_CHARS:], 0, offset) != -1


def prompt_at(server: TinymorphServer, state: DocState, offset: int, *, keep: bool = True) -> str:
    """The prompt of a continuation at `offset` in the document (`prompt_window`), the window's start kept for the
    next one unless `keep` is False (a rewrite elsewhere leaves the writer's window where it is)."""
    fast = server.on_fast_path()
    size, fresh = (WINDOW_CHARS, FRESH_CHARS) if fast else (PROMPT_CHARS, None)
    text = state.doc.text
    prompt, head = prompt_window(text, offset, size, state.window_head, fresh)
    splices = fast and server.splices()
    if splices and head and state.window_head and head != state.window_head and (moved := relocated(
            text, offset, state.window_text, size, FRESH_CHARS)) is not None:
        prompt, head = moved  # an edit touched the window's first characters: the cache splices over it
    if fast and head and head == state.window_head:
        # after an edit inside the window far above the cursor that the cache cannot splice over, a new window reads
        # less than the kept one would again: take it where it reads less than two thirds as much
        unread = len(prompt) - common_prefix(prompt, state.window_text)
        # a new window is at least 3/4 of FRESH_CHARS: below this it never reads less
        if unread > FRESH_CHARS and not (splices and spliced(prompt, state.window_text)):
            other, other_head = prompt_window(text, offset, size, None, fresh)
            if 3 * len(other) < 2 * unread:
                prompt, head = other, other_head
    if keep:
        state.window_head, state.window_text = head, prompt
    return prompt


def prompt_session(uri: str) -> str:
    """The fast path's cache of a document's continuation windows (the document's own cache holds its reading)."""
    return f"{uri}#continuation"


def elsewhere_session(uri: str) -> str:
    """The fast path's cache of a suggestion's window away from the writer's (after an edit above the cursor): kept
    apart, so that the window the writer types in stays read."""
    return f"{uri}#elsewhere"


def heal_session(uri: str) -> str:
    """The fast path's cache of the text before a half word (`completion.heal_context`), healed unsteered apart
    from the continuation's steered cache."""
    return f"{uri}#heal"


def sampling(settings: Settings, *, max_tokens: int | None = None, stop: tuple[str, ...] = ()) -> SamplingConfig:
    return SamplingConfig(max_tokens=max_tokens or settings.max_tokens, temperature=settings.temperature, stop=stop,
                          seed=0, repetition_penalty=settings.repetition_penalty)


async def generate(server: TinymorphServer, uri: str, prompt: str, *, kind: str, max_tokens: int | None = None,
                   stop: tuple[str, ...] = (), priority: int = INTERACTIVE,
                   extra: Sequence[Intervention] = (), session: str | None = None) -> str:
    """A steered continuation of `prompt` (under the workspace's steering, with `extra` in place of its entries
    for the same features), read through `session`'s cache (the document's continuations', `prompt_session`, by
    default). One generation per document: a request for the same continuation (prompt, steering and sampling) as
    the running or last one shares its result (the suggestion hint and an inline completion at the same place are
    one decode), any other cancels it (Superseded)."""
    session = session or prompt_session(uri)
    state = server.state(uri)
    replaced = {i.feature for i in extra if i.feature is not None}
    steering = [i for i in server.interventions_for(uri) if i.feature is None or i.feature not in replaced]
    steering += extra
    how = sampling(server.settings, max_tokens=max_tokens, stop=stop)
    key = (prompt, tuple(i.signature() for i in steering), repr(how))
    running = state.running
    if running is None or running.key != key or running.cancel.cancelled or (running.task.done() and (
            running.task.cancelled() or running.task.exception() is not None)):
        if running is not None:
            running.cancel.cancel()
        cancel = CancelToken()

        def decode(engine: EngineAPI) -> str | Request:
            """Join the batch of continuations where the engine can; else decode alone."""
            request = engine.start(prompt, steering, how, cancel, session=session)
            return request if request is not None else "".join(engine.generate(prompt, steering, how, cancel,
                                                                              session=session))

        async def run() -> str:
            return await server.run_engine(kind, decode, priority, cancel)  # type: ignore[arg-type]

        task = asyncio.get_running_loop().create_task(run(), name=f"{kind} {uri}")
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # its requests report failures
        running = state.running = Running(key, task, cancel)
        server.generations += 1
    running.waiters += 1
    try:
        text = await asyncio.shield(running.task)
    except asyncio.CancelledError:
        if running.task.cancelled():
            raise Superseded(f"a newer request for {uri} took over") from None
        if running.waiters == 1:  # this request was cancelled and no other waits for the generation: stop it
            running.cancel.cancel()
            running.task.cancel()
        raise
    except TinymorphError as exc:  # e.g. steering with features the loaded SAE does not have
        raise JsonRpcInvalidRequest(f"tinymorph: {exc}") from None
    except (torch.OutOfMemoryError, MemoryError) as exc:
        raise out_of_memory(server, exc) from None
    finally:
        running.waiters -= 1
    if running.cancel.cancelled:
        raise Superseded(f"a newer request for {uri} took over")
    if not state.refreshing and server.splices():
        state.refreshing = True
        server.spawn(refresh(server, uri, state), f"refresh {uri}")
    return text


async def refresh(server: TinymorphServer, uri: str, state: DocState) -> None:
    """Read the tokens of the document's continuation windows that completions spliced over (edits above the
    cursor) again, exactly, `READ_SECONDS` per engine job and after every other job, so that a continuation never
    reads them in the foreground (`steering.fast.model.SPLICE_LIMIT`)."""
    try:
        for session in (prompt_session(uri), elsewhere_session(uri), heal_session(uri)):

            def piece(engine: EngineAPI, session: str = session) -> bool:
                return engine.refresh(session, seconds=READ_SECONDS)

            while not await server.run_engine("refresh", piece, WHOLE):
                if server.docs.get(uri) is not state:
                    return
    except EngineUnavailable:
        pass
    finally:
        state.refreshing = False


def drop_stale(state: DocState) -> None:
    """A keystroke made the document's generation pointless: stop it before its next decode step, and answer the
    completion requests waiting for it now, with nothing (`DocState.answering`)."""
    if state.running is not None and not state.running.task.done():
        state.running.cancel.cancel()
    for task in state.answering:
        task.cancel()
