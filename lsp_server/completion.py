"""Steered completions at the cursor: `textDocument/completion` and, as ghost text, `textDocument/inlineCompletion`.

A newer request for the same document cancels the older one (its decode loop stops at the next step), and
`$/cancelRequest` does the same.
"""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING

from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams

from .generation import OutOfMemory, Superseded, generate, heal_session, prompt_at, prompt_session
from .hints import short
from .text import PositionError
from .worker import EngineUnavailable

if TYPE_CHECKING:
    from .server import TinymorphServer
    from .state import DocState

_WORD_BEFORE = re.compile(r"\w+$")
_LETTERS_BEFORE = re.compile(r"(?<![\w'’-])[A-Za-z]{1,24}$")
"""The letters of a word the cursor ends (the whole word: none after a digit, an apostrophe or a hyphen)."""
STOP = ("\n\n",)
"""A completion ends with its paragraph."""
HEAL_CHARS = 600
"""At most about this much text before a half word is read to heal it (`heal_context`), at least half of it."""
HEAL_STEP = 100
"""Without a sentence start to begin at, the healing context begins at a word after a multiple of this many
characters into the prompt."""


def heal_context(prompt: str) -> str:
    """The end of `prompt` that token healing reads when the continuation is steered: all of a short prompt, else
    from the first paragraph or sentence start between `HEAL_CHARS` and half as many characters before the end
    (where there is none, the word after the next multiple of `HEAL_STEP` characters). The word is healed
    unsteered, in a cache of its own (`generation.heal_session`), so the steered continuation's cache stays as it
    is: healed in the continuation's cache, a steered completion after a half word read its whole window again
    (`bench_typing.py --amplify`: 1.27 s p50 instead of 0.34); healed under the steering, the pull bent the words
    (`str` → `struttin'`, `bri` → `brite` under the sea, where this gives `street`, `bridge`). The start stays put
    while the writer types on, so only the new letters are read."""
    lo = len(prompt) - HEAL_CHARS
    if lo <= 0:
        return prompt
    hi = len(prompt) - HEAL_CHARS // 2
    starts = [at + len(mark) for mark in ("\n\n", ". ") if (at := prompt.find(mark, lo, hi)) != -1]
    if starts:
        return prompt[min(starts):]
    anchor = -(-lo // HEAL_STEP) * HEAL_STEP  # moves a step at a time, not with each letter
    space = prompt.find(" ", anchor, hi)
    return prompt[space + 1 if space != -1 else anchor:]


async def continuation(ls: TinymorphServer, uri: str, position: types.Position, kind: str,
                       ) -> tuple[str, int, int] | None:
    """(continuation, word start, cursor offset), or None when a newer request took over or the writer edited the
    document meanwhile: then at once, not when the engine reaches a continuation of text that is gone (a request
    queued behind another document's cold read waited a second and more for nothing)."""
    state = ls.state(uri)
    work = asyncio.ensure_future(_continue(ls, state, uri, position, kind))
    state.answering.add(work)
    try:
        return await work
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if work.cancelled() and (current is None or not current.cancelling()):
            return None  # an edit (`generation.drop_stale`): the editor asks again for the text as it is
        raise
    finally:
        state.answering.discard(work)


async def _continue(ls: TinymorphServer, state: DocState, uri: str, position: types.Position, kind: str,
                    ) -> tuple[str, int, int] | None:
    try:
        offset = state.doc.index.offset(position, strict=True)
    except PositionError as exc:
        raise JsonRpcInvalidParams(str(exc)) from None
    prompt = prompt_at(ls, state, offset)
    word = _WORD_BEFORE.search(prompt)
    start = offset - (len(word.group(0)) if word else 0)
    text, version = state.doc.text, state.doc.version
    partial = _LETTERS_BEFORE.search(prompt)
    healed = ""
    state.asked = prompt
    running = state.running
    asked_before = str(running.key[0]) if running is not None else ""
    if running is not None and not (asked_before.startswith(prompt) and
                                    (asked_before[len(prompt):].isalpha() or asked_before == prompt)):
        running.cancel.cancel()  # a continuation of another place: stop it now, not after this word is completed
    try:
        if partial and not text[offset:offset + 1].isalpha():  # the cursor ends a word: maybe half of one
            # unsteered, the continuation reads the prompt as healing does: one read serves both
            context, session = (heal_context(prompt), heal_session(uri)) if ls.interventions_for(uri) else \
                (prompt, prompt_session(uri))
            healed = await ls.run_engine(kind, lambda e: e.complete_word(context, partial.group(0), session=session))
            if state.asked != prompt:
                return None  # a request for another place came while the word was completed: it answers
        out = await generate(ls, uri, prompt + healed, kind=kind, stop=STOP)
    except (Superseded, EngineUnavailable, OutOfMemory):  # a newer request took over, the model is not loaded
        return None                                         # (yet), or the device ran out of memory (user told)
    if state.doc.version != version:
        return None  # the writer typed on while it ran: a newer request answers for the text as it is
    return healed + out, start, offset


def register(server: TinymorphServer) -> None:
    @server.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions(trigger_characters=[]))
    async def completion(ls: TinymorphServer, params: types.CompletionParams) -> types.CompletionList:
        got = await continuation(ls, params.text_document.uri, params.position, "completion")
        if got is None or not got[0].strip():
            return types.CompletionList(is_incomplete=True, items=[])
        text, start, offset = got
        doc = ls.state(params.text_document.uri).doc
        prefix = doc.text[start:offset]
        steering = ls.steering_for(doc.uri)
        detail = "tinymorph · " + (steering.describe() if steering.active else "unsteered")
        item = types.CompletionItem(
            label=short(prefix + text.split("\n", 1)[0], 60), kind=types.CompletionItemKind.Text, detail=detail,
            documentation=types.MarkupContent(kind=types.MarkupKind.Markdown, value=f"```text\n{text}\n```"),
            filter_text=prefix + text, sort_text="0",
            text_edit=types.TextEdit(range=doc.index.range(start, offset), new_text=prefix + text))
        return types.CompletionList(is_incomplete=False, items=[item])

    @server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
    async def inline_completion(ls: TinymorphServer, params: types.InlineCompletionParams,
                                ) -> types.InlineCompletionList | None:
        got = await continuation(ls, params.text_document.uri, params.position, "inline")
        if got is None or not got[0].strip():
            return types.InlineCompletionList(items=[])
        text, _start, offset = got
        doc = ls.state(params.text_document.uri).doc
        return types.InlineCompletionList(items=[types.InlineCompletionItem(
            insert_text=text, range=doc.index.range(offset, offset))])



