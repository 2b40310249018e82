"""The server on the real default model and the shipped default SAE: labelled hints, hover, a steered completion."""

from __future__ import annotations

import pytest
import pytest_lsp
from lsprotocol import types

from .conftest import SERVER, Client, command, open_doc, start, wait_annotated, wait_ready

pytestmark = pytest.mark.slow

TEXT = ("The storm broke over the harbour at dawn, and the fishing boats stayed tied to the quay.\n\n"
        "She opened the letter from the bank and read it twice before she understood")


@pytest_lsp.fixture(config=SERVER)
async def client(lsp_client: Client):
    yield
    await lsp_client.shutdown_session()


async def test_default_model_hints_hover_and_completion(client: Client, tmp_path) -> None:
    await start(client, "neovim", {"device": "cpu", "debounceMs": 0, "maxTokens": 8, "suggestion": False}, tmp_path)
    status = await wait_ready(client)
    assert status["engine"]["model"] == "SmolLM2-135M-Instruct"
    assert status["engine"]["sae"].endswith("default_sae") and status["engine"]["feature_stats"]
    uri = (tmp_path / "story.md").as_uri()
    open_doc(client, uri, TEXT)
    await wait_annotated(client, uri, 1)
    hints = await client.text_document_inlay_hint_async(types.InlayHintParams(
        text_document=types.TextDocumentIdentifier(uri=uri),
        range=types.Range(start=types.Position(line=0, character=0), end=types.Position(line=3, character=0))))
    assert {h.position.line for h in hints} == {0, 2}
    for hint in hints:
        features = [p for p in hint.label if p.command is not None]
        assert 1 <= len(features) <= 3
        for part in features:  # labels in words from the SAE's labels.json, never fragments or numbers
            assert all(w.rstrip("…").replace("-", "").replace("'", "").isalpha() for w in part.value.split(", "))
    hover = await client.text_document_hover_async(types.HoverParams(
        text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(line=0, character=6)))
    assert hover is not None and hover.contents.value.startswith("**tinymorph** · `")
    end = types.Position(line=2, character=len(TEXT.splitlines()[2]))
    plain = await client.text_document_completion_async(types.CompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), position=end))
    assert plain.items and plain.items[0].text_edit.new_text.startswith("understood")
    feature = hints[0].label[1].command.arguments[0]["feature"]
    await command(client, "tinymorph.steer.add", {"feature": feature, "strength": 1})
    steered = await client.text_document_completion_async(types.CompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), position=end))
    assert steered.items[0].text_edit.new_text != plain.items[0].text_edit.new_text
    assert steered.items[0].detail.startswith(f"tinymorph · {feature} (") and steered.items[0].detail.endswith("+1")
