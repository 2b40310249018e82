"""Completions: steered continuations at the cursor (completion and inline completion), steering changes them, a
newer request and `$/cancelRequest` stop a running generation, and hover / hints stay answered meanwhile."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from lsprotocol import types

from .conftest import client_fixture, command, insert, open_doc, wait_annotated, wait_for

client = client_fixture(suggestion=False)

TEXT = "The rain fell on the quiet harbour and"


def at_end(uri: str) -> dict:
    return {"text_document": types.TextDocumentIdentifier(uri=uri),
            "position": types.Position(line=0, character=len(TEXT))}


async def set_max_tokens(client, n: int) -> None:
    # no repetition penalty: penalised, the tiny random model soon runs into its end-of-sequence token, and these
    # tests need a generation that runs
    values = {"maxTokens": n, "repetitionPenalty": 1.0}
    client.set_configuration(values, section="tinymorph")
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings={"tinymorph": values}))

    async def applied():
        return (await command(client, "tinymorph.status"))["settings"]["maxTokens"] == n

    await wait_for(applied, what="the new setting")


async def running(client, kind: str) -> None:
    async def busy():
        return (await command(client, "tinymorph.status"))["running"] == kind

    await wait_for(busy, timeout=30, what=f"a running {kind}")


async def test_completion_continues_the_text_at_the_cursor(client) -> None:
    uri = "file:///complete.md"
    open_doc(client, uri, TEXT)
    result = await client.text_document_completion_async(types.CompletionParams(**at_end(uri)))
    assert len(result.items) == 1
    item = result.items[0]
    prefix = "and"  # the word before the cursor is part of the edit, so client-side filtering keeps the item
    assert item.text_edit.range == types.Range(start=types.Position(line=0, character=len(TEXT) - len(prefix)),
                                               end=types.Position(line=0, character=len(TEXT)))
    assert item.text_edit.new_text.startswith(prefix) and len(item.text_edit.new_text) > len(prefix)
    assert "unsteered" in item.detail
    inline = await client.text_document_inline_completion_async(types.InlineCompletionParams(
        **at_end(uri), context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked)))
    assert len(inline.items) == 1
    assert inline.items[0].insert_text == item.text_edit.new_text[len(prefix):]  # greedy: the same continuation
    assert inline.items[0].range.start == inline.items[0].range.end == at_end(uri)["position"]


async def test_steering_changes_the_completion(client) -> None:
    uri = "file:///steer.md"
    open_doc(client, uri, TEXT)
    plain = (await client.text_document_completion_async(types.CompletionParams(**at_end(uri)))).items[0]
    info = (await command(client, "tinymorph.status"))["engine"]
    changed = None
    for feature in range(info["d_sae"]):
        await command(client, "tinymorph.steer.clear")
        await command(client, "tinymorph.steer.add", {"feature": feature, "strength": 2})
        steered = (await client.text_document_completion_async(types.CompletionParams(**at_end(uri)))).items[0]
        if steered.text_edit.new_text != plain.text_edit.new_text:
            changed = steered
            break
    await command(client, "tinymorph.steer.clear")
    assert changed is not None, "no feature changed the greedy continuation"
    assert f"{feature} " in changed.detail


@contextlib.asynccontextmanager
async def completing(client, uri: str, max_tokens: int = 500):
    """A completion at the end of a fresh document, already running on the worker (maxTokens reset afterwards)."""
    open_doc(client, uri, TEXT)
    await set_max_tokens(client, max_tokens)
    try:
        first = asyncio.ensure_future(client.text_document_completion_async(types.CompletionParams(**at_end(uri))))
        await running(client, "completion")
        yield first
    finally:
        await set_max_tokens(client, 8)


async def test_newer_request_cancels_the_older(client) -> None:
    uri = "file:///cancel.md"
    async with completing(client, uri) as first:
        elsewhere = {**at_end(uri), "position": types.Position(line=0, character=len(TEXT) - 4)}
        second = asyncio.ensure_future(client.text_document_completion_async(types.CompletionParams(**elsewhere)))
        old = await first
        assert len(old.items) == 0 and old.is_incomplete
        assert len((await second).items) == 1


async def test_the_same_request_twice_shares_one_generation(client) -> None:
    uri = "file:///twice.md"
    before = (await command(client, "tinymorph.status"))["generations"]
    async with completing(client, uri, 200) as first:
        second = asyncio.ensure_future(client.text_document_completion_async(types.CompletionParams(**at_end(uri))))
        one, two = await first, await second
        assert len(one.items) == len(two.items) == 1
        assert one.items[0].text_edit.new_text == two.items[0].text_edit.new_text
        assert (await command(client, "tinymorph.status"))["generations"] == before + 1


async def test_completions_in_two_documents_decode_together(client) -> None:
    alone = {}
    await set_max_tokens(client, 24)
    for uri in ("file:///alone-a.md", "file:///alone-b.md"):
        open_doc(client, uri, TEXT if uri.endswith("a.md") else TEXT + " the")
        position = types.Position(line=0, character=len(TEXT) + (0 if uri.endswith("a.md") else 4))
        result = await client.text_document_completion_async(types.CompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri), position=position))
        alone[uri] = result.items[0].text_edit.new_text
    await set_max_tokens(client, 200)
    try:
        pending = [asyncio.ensure_future(client.text_document_completion_async(types.CompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            position=types.Position(line=0, character=len(TEXT) + (0 if uri.endswith("a.md") else 4)))))
            for uri in alone]

        async def together():
            return (await command(client, "tinymorph.status"))["batched"] == 2

        await wait_for(together, timeout=30, what="two completions in one batch")
        texts = [r.items[0].text_edit.new_text for r in await asyncio.gather(*pending)]
        for text, first in zip(texts, alone.values(), strict=True):
            assert text.startswith(first.rstrip())  # the same continuation, only longer
    finally:
        await set_max_tokens(client, 8)


async def test_an_edit_drops_the_running_completion(client) -> None:
    uri = "file:///stale.md"
    async with completing(client, uri) as pending:
        insert(client, uri, 0, len(TEXT), " x", version=2)
        stale = await asyncio.wait_for(pending, timeout=10)
        assert len(stale.items) == 0 and stale.is_incomplete


async def test_cancel_request_stops_the_generation(client) -> None:
    uri = "file:///cancel-request.md"
    open_doc(client, uri, TEXT)
    await set_max_tokens(client, 500)
    try:
        msg_id = "cancel-me"
        future = asyncio.ensure_future(client.protocol.send_request_async(
            types.TEXT_DOCUMENT_COMPLETION, types.CompletionParams(**at_end(uri)), msg_id=msg_id))
        await running(client, "completion")
        client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id=msg_id))
        with pytest.raises(Exception, match="cancel"):
            await future

        async def idle():
            status = await command(client, "tinymorph.status")
            return status["running"] is None and status["queueDepth"] == 0

        await wait_for(idle, timeout=5, what="the worker to stop")
    finally:
        await set_max_tokens(client, 8)


async def test_hover_and_hints_answer_while_a_generation_runs(client) -> None:
    uri = "file:///busy.md"
    open_doc(client, uri, TEXT)
    await wait_annotated(client, uri, 1)
    await set_max_tokens(client, 500)
    try:
        gen = asyncio.ensure_future(client.text_document_completion_async(types.CompletionParams(**at_end(uri))))
        await running(client, "completion")
        hover = await client.text_document_hover_async(types.HoverParams(
            text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(line=0, character=5)))
        hints = await client.text_document_inlay_hint_async(types.InlayHintParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            range=types.Range(start=types.Position(line=0, character=0), end=types.Position(line=1, character=0))))
        assert not gen.done(), "the generation ended before hover and hints were answered"
        assert hover is not None and hints
        assert (await command(client, "tinymorph.status"))["running"] == "completion"
        await gen
    finally:
        await set_max_tokens(client, 8)


async def test_completion_in_an_unknown_document_is_an_error(client) -> None:
    with pytest.raises(Exception, match="Unknown document"):
        await client.text_document_completion_async(types.CompletionParams(**at_end("file:///nope.md")))


async def test_a_continuation_asked_again_after_an_edit_was_undone_is_answered(client) -> None:
    uri = "file:///undo.md"
    async with completing(client, uri) as pending:
        insert(client, uri, 0, len(TEXT), " x", version=2)  # drops the running completion
        assert not (await pending).items
        client.text_document_did_change(types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=3),
            content_changes=[types.TextDocumentContentChangeWholeDocument(text=TEXT)]))
        again = await client.text_document_completion_async(types.CompletionParams(**at_end(uri)))
        assert len(again.items) == 1
