"""Odd clients: a `workspace/configuration` answer that is null, garbage, an error or never comes; a client that goes
away mid-generation (stdin closed, its process dead); an edit the client refuses; a client that announces nothing."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from typing import Any

import pytest
import pytest_lsp
from lsprotocol import types
from pygls.exceptions import FeatureRequestError
from pytest_lsp import ClientServerConfig

from .conftest import (
    SERVER,
    Client,
    command,
    converter,
    init_options,
    open_doc,
    start,
    typed_with_suggestion,
    wait_annotated,
    wait_for,
    wait_ready,
)

TIMEOUT = 1.0
"""The server's wait for `workspace/configuration` in these tests (`lifecycle.CONFIGURATION_TIMEOUT`)."""
TEXT = "The rain fell on the quiet harbour and"
UNREADABLE = "could not read the client's configuration"
SILENCE = "no answer"
ERROR = "an error"


class OddClient(Client):
    """The tests' client, answering `workspace/configuration` and `workspace/applyEdit` as told."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.configuration: Any = [None]
        """The answer, as JSON, or SILENCE (an answer only after the server stopped waiting), or ERROR."""
        self.answered_late = asyncio.Event()
        self.apply_answer: Any = types.ApplyWorkspaceEditResult(applied=False, failure_reason="the user said no")
        """The answer to `workspace/applyEdit`, as JSON, or an exception to answer with an error."""

    def report_server_error(self, error: Exception, source: Any) -> None:
        if source is not FeatureRequestError:  # the errors these tests answer with on purpose
            super().report_server_error(error, source)


def make_odd_client() -> OddClient:
    from pytest_lsp.client import DEFAULT_CLIENT_FEATURES, register_lsp_features

    client = OddClient(converter_factory=converter)
    register_lsp_features(client, {m: f for m, f in DEFAULT_CLIENT_FEATURES.items()
                                   if m != types.WORKSPACE_CONFIGURATION})

    @client.feature(types.WORKSPACE_CONFIGURATION)
    async def configuration(ls: OddClient, params: types.ConfigurationParams) -> Any:
        if ls.configuration == SILENCE:
            await asyncio.sleep(TIMEOUT + 0.5)
            ls.answered_late.set()
            return [{"maxTokens": 3}]
        if ls.configuration == ERROR:
            raise RuntimeError("no configuration here")
        return ls.configuration  # sent as it is: the client's converter knows no type for this answer

    @client.feature(types.WORKSPACE_INLAY_HINT_REFRESH)
    def refresh(ls: OddClient, params: None) -> None:
        ls.refreshes += 1

    @client.feature(types.WORKSPACE_APPLY_EDIT)
    def apply(ls: OddClient, params: types.ApplyWorkspaceEditParams) -> types.ApplyWorkspaceEditResult:
        ls.applied.append(params)
        if isinstance(ls.apply_answer, Exception):
            raise ls.apply_answer
        return ls.apply_answer

    return client


LAUNCH = ("import lsp_server.lifecycle as lifecycle; "
          f"lifecycle.CONFIGURATION_TIMEOUT = {TIMEOUT}; "
          "from lsp_server.__main__ import main; main(['-v'])")
ODD = ClientServerConfig(server_command=[sys.executable, "-c", LAUNCH], client_factory=make_odd_client)


def process(client: Client) -> asyncio.subprocess.Process:
    """The server's process (pygls' client keeps it; pytest-lsp offers no other handle)."""
    server = client._server
    assert server is not None
    return server


async def exit_time(client: Client, limit: float = 10.0) -> tuple[int, float]:
    """(exit code, seconds) of the server's exit, timed from now."""
    began = time.monotonic()
    code = await asyncio.wait_for(process(client).wait(), limit)
    return code, time.monotonic() - began


async def completion(client: Client, uri: str) -> types.CompletionList:
    return await client.text_document_completion_async(types.CompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(line=0, character=len(TEXT))))


async def hints(client: Client, uri: str) -> list[types.InlayHint]:
    whole = types.Range(start=types.Position(line=0, character=0), end=types.Position(line=1, character=0))
    return await client.text_document_inlay_hint_async(types.InlayHintParams(
        text_document=types.TextDocumentIdentifier(uri=uri), range=whole)) or []


async def serves(client: Client, uri: str) -> dict[str, Any]:
    """The engine loads and the document gets hints and a completion; the status, once it does."""
    status = await wait_ready(client)
    open_doc(client, uri, TEXT + "\n")
    await wait_annotated(client, uri, 1)
    assert await hints(client, uri)
    assert len((await completion(client, uri)).items) == 1
    return status


UNUSABLE = {"null": None, "a string": "tinymorph", "numbers": [1, 2], "wrong-typed items": [["maxTokens", 9]],
            "an error": ERROR, "no answer": SILENCE}


@pytest_lsp.fixture(config=ODD, params=list(UNUSABLE))
async def unusable(lsp_client: OddClient, request: pytest.FixtureRequest):
    lsp_client.configuration = UNUSABLE[request.param]
    yield
    await lsp_client.shutdown_session()


async def test_an_unusable_configuration_answer_means_defaults_and_one_warning(unusable: OddClient, assets,
                                                                               tmp_path) -> None:
    began = time.monotonic()
    await start(unusable, "neovim", init_options(assets), tmp_path)
    status = await serves(unusable, "file:///odd.md")
    assert time.monotonic() - began < 30  # no waiting forever: at most the timeout, then the load
    settings = status["settings"]
    assert settings["maxTokens"] == 8 and settings["hintCount"] == 3  # the initialization options, the defaults
    warnings = [m for m in unusable.log_messages if UNREADABLE in m.message]
    assert len(warnings) == 1 and warnings[0].type == types.MessageType.Warning
    assert "using the defaults" in warnings[0].message
    errors = [m for m in [*unusable.log_messages, *unusable.messages] if m.type == types.MessageType.Error]
    assert errors == []
    if unusable.configuration == SILENCE:  # the answer the server stopped waiting for comes: it is left alone
        await asyncio.wait_for(unusable.answered_late.wait(), 10)
        status = await command(unusable, "tinymorph.status")
        assert status["state"] == "ready" and status["settings"]["maxTokens"] == 8


@pytest_lsp.fixture(config=ODD)
async def odd(lsp_client: OddClient):
    yield
    await lsp_client.shutdown_session()


async def test_wrong_typed_values_fall_back_to_their_defaults(odd: OddClient, assets, tmp_path) -> None:
    odd.configuration = [{"maxTokens": "many", "hintCount": 2}]
    await start(odd, "emacs", init_options(assets), tmp_path)
    settings = (await serves(odd, "file:///typed.md"))["settings"]
    assert settings["hintCount"] == 2 and settings["maxTokens"] == 24  # the usable part used, the rest defaulted
    assert any("maxTokens" in m.message for m in odd.messages)
    assert not any(UNREADABLE in m.message for m in odd.log_messages)  # read fine; only a value was bad


async def test_a_refused_edit_is_told_to_the_user(odd: OddClient, assets, tmp_path) -> None:
    await start(odd, "neovim", init_options(assets), tmp_path)
    await wait_ready(odd)
    uri = "file:///refused.md"
    await typed_with_suggestion(odd, uri, TEXT, " the")

    async def accept(answer: Any, message: str) -> dict[str, Any]:
        odd.apply_answer, odd.messages[:] = answer, []
        result = await asyncio.wait_for(
            command(odd, "tinymorph.suggestion.accept", {"uri": uri, "version": 2}), 10)
        told = [m.message for m in odd.messages if m.type == types.MessageType.Warning]
        assert len(told) == 1 and "\u201cAccept tinymorph suggestion\u201d" in told[0] and message in told[0], told
        return result

    result = await accept(types.ApplyWorkspaceEditResult(applied=False, failure_reason="the user said no"),
                          "did not apply")
    assert result == {"applied": False, "reason": "the user said no"}
    result = await accept(RuntimeError("the buffer is read-only"), "could not apply")
    assert result["applied"] is False and "read-only" in result["reason"]
    result = await accept(None, "malformed answer")  # pygls would drop this answer and wait for another forever
    assert result["applied"] is False
    assert (await command(odd, "tinymorph.status"))["state"] == "ready"  # and it goes on serving


async def test_a_client_announcing_nothing_is_served_without_refreshes(odd: OddClient, assets) -> None:
    await odd.initialize_session(types.InitializeParams(
        capabilities=types.ClientCapabilities(), initialization_options=init_options(assets)))
    uri = "file:///bare.md"
    await serves(odd, uri)
    await command(odd, "tinymorph.steer.add", {"feature": 1, "uri": uri})  # a change that refreshes hints
    assert odd.refreshes == 0 and (await command(odd, "tinymorph.status"))["hintRefreshes"] == 0
    assert not any(UNREADABLE in m.message for m in odd.log_messages)  # it was not asked: nothing to warn of


@pytest_lsp.fixture(config=SERVER)
async def leaving(lsp_client: Client):
    yield  # each test ends the server itself
    if process(lsp_client).returncode is None:  # the test failed: do not leave the server behind
        process(lsp_client).kill()


async def busy_completion(client: Client, assets, tmp_path) -> asyncio.Task[Any]:
    """A completion decoding (512 tokens, no repetition penalty: the tiny model keeps going) on a started server."""
    await start(client, "neovim", init_options(assets, maxTokens=512, repetitionPenalty=1.0, suggestion=False),
                tmp_path)
    await wait_ready(client)
    uri = "file:///long.md"
    open_doc(client, uri, TEXT)
    task = asyncio.ensure_future(completion(client, uri))

    async def decoding() -> bool:
        status = await command(client, "tinymorph.status")
        return status["running"] == "completion" or status["batched"] > 0

    await wait_for(decoding, timeout=30, what="the completion to decode")
    return task


async def test_stdin_closed_mid_completion_exits_1_promptly(leaving: Client, assets, tmp_path) -> None:
    task = await busy_completion(leaving, assets, tmp_path)
    server = process(leaving)
    assert server.stdin is not None
    server.stdin.close()
    code, seconds = await exit_time(leaving)
    assert code == 1, f"exit code {code} (negative: killed by a signal)"
    assert seconds < 2, f"took {seconds:.2f} s"
    await asyncio.gather(task, return_exceptions=True)  # answered empty (cancelled) or failed: either will do


async def test_shutdown_then_exit_mid_completion_exits_0(leaving: Client, assets, tmp_path) -> None:
    task = await busy_completion(leaving, assets, tmp_path)
    await leaving.shutdown_async(None)
    leaving.exit(None)
    code, seconds = await exit_time(leaving)
    assert code == 0 and seconds < 2, (code, seconds)
    task.cancel()


async def test_exit_without_shutdown_exits_1(leaving: Client, assets, tmp_path) -> None:
    await start(leaving, "emacs", init_options(assets), tmp_path)
    leaving.exit(None)
    code, seconds = await exit_time(leaving)
    assert code == 1 and seconds < 2, (code, seconds)


@pytest.mark.skipif(os.name == "nt", reason="the server does not watch its client's process on Windows")
async def test_the_server_exits_when_its_client_process_dies(leaving: Client, assets, tmp_path) -> None:
    from lsp_server.lifecycle import PARENT_POLL, parent_alive

    parent = subprocess.Popen(["sleep", "60"])
    try:
        await leaving.initialize_session(types.InitializeParams(
            capabilities=types.ClientCapabilities(), initialization_options=init_options(assets),
            process_id=parent.pid))
        await wait_ready(leaving)
        assert parent_alive(parent.pid)
    finally:
        parent.kill()
        parent.wait()  # reaped: a zombie would still count as alive
    assert not parent_alive(parent.pid)
    code, seconds = await exit_time(leaving, PARENT_POLL + 10)
    assert code == 1 and seconds < PARENT_POLL + 2, (code, seconds)


@pytest.mark.skipif(os.name == "nt", reason="the server does not watch its client's process on Windows")
async def test_a_client_process_invisible_at_start_is_not_watched(odd: OddClient, assets) -> None:
    """A client in another PID namespace (a container) sends an id that means nothing here: no exit for that."""
    from lsp_server.lifecycle import PARENT_POLL

    gone = subprocess.Popen(["true"])
    gone.wait()
    await odd.initialize_session(types.InitializeParams(
        capabilities=types.ClientCapabilities(), initialization_options=init_options(assets), process_id=gone.pid))
    await asyncio.sleep(PARENT_POLL + 1)
    assert process(odd).returncode is None
    assert (await command(odd, "tinymorph.status"))["state"] in ("loading", "ready")
