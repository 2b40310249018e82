"""A client that shows inline completions (Neovim 0.12's ghost text): the suggestion is not drawn as a hint on top
of the ghost text, and an inline completion where the suggestion was made reuses its generation."""

from __future__ import annotations

from lsprotocol import types

from .conftest import INLINE, client_fixture, command, typed_with_suggestion

client = client_fixture([INLINE])

TEXT = "The rain fell on the quiet harbour and"


async def test_inline_completion_reuses_the_suggestion_and_no_hint_covers_it(client) -> None:
    uri = "file:///ghost.md"
    suggestion = await typed_with_suggestion(client, uri, TEXT, " the")
    end = types.Position(line=0, character=len(TEXT) + 4)
    hints = await client.text_document_inlay_hint_async(types.InlayHintParams(
        text_document=types.TextDocumentIdentifier(uri=uri),
        range=types.Range(start=types.Position(line=0, character=0), end=end)))
    assert not [h for h in hints or [] if h.label[0].value.startswith("⟶")]
    before = (await command(client, "tinymorph.status"))["generations"]
    inline = await client.text_document_inline_completion_async(types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), position=end,
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic)))
    assert [item.insert_text for item in inline.items] == [suggestion["text"]]
    assert (await command(client, "tinymorph.status"))["generations"] == before, "the suggestion was decoded again"
    # the code action still offers the suggestion
    actions = await client.text_document_code_action_async(types.CodeActionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), range=types.Range(start=end, end=end),
        context=types.CodeActionContext(diagnostics=[])))
    assert any(a.title.startswith("Accept suggestion") for a in actions)
