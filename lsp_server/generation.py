"""Steered generation for a document: the continuation behind completions, inline completions, rewrites and the
suggestion hint, under the workspace's steering. A newer generation for the same document cancels the older one."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pygls.exceptions import JsonRpcInvalidRequest

from steering.config import SamplingConfig
from steering.errors import TinymorphError
from steering.generate import CancelToken

from .config import Settings
from .worker import INTERACTIVE

if TYPE_CHECKING:
    from .server import TinymorphServer

PROMPT_CHARS = 2000
"""Characters of text before the cursor that a completion, rewrite or suggestion reads."""


class Superseded(Exception):
    """A generation cancelled because a newer request for the same document arrived."""


def prompt_before(text: str, offset: int) -> str:
    """The prompt for a continuation at `offset`: up to `PROMPT_CHARS` characters before it."""
    return text[max(0, offset - PROMPT_CHARS):offset]


def sampling(settings: Settings, *, max_tokens: int | None = None, stop: tuple[str, ...] = ()) -> SamplingConfig:
    return SamplingConfig(max_tokens=max_tokens or settings.max_tokens, temperature=settings.temperature, stop=stop,
                          seed=0, repetition_penalty=settings.repetition_penalty)


async def generate(server: TinymorphServer, uri: str, prompt: str, *, kind: str, max_tokens: int | None = None,
                   stop: tuple[str, ...] = ()) -> str:
    """A steered continuation of `prompt`; a newer generation for the same document cancels this one (Superseded)."""
    state = server.state(uri)
    if state.generation is not None:
        state.generation.cancel()
    cancel = state.generation = CancelToken()
    steering = server.interventions_for(uri)
    how = sampling(server.settings, max_tokens=max_tokens, stop=stop)
    try:
        text = await server.run_engine(
            kind, lambda e: "".join(e.generate(prompt, steering, how, cancel)), INTERACTIVE, cancel)
    except TinymorphError as exc:  # e.g. steering with features the loaded SAE does not have
        raise JsonRpcInvalidRequest(f"tinymorph: {exc}") from None
    finally:
        if state.generation is cancel:
            state.generation = None
    if cancel.cancelled:
        raise Superseded(f"a newer request for {uri} took over")
    return text
