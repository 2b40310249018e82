"""Inlay hints: the top features at the end of each paragraph (or sentence, or line), and the steered suggestion.

Answered from the last finished annotation, never waiting for the model. Spans whose text changed since that
annotation get no hint until the next one arrives.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lsprotocol import types

from steering.features.annotate import SpanFeature, SpanFeatures
from steering.features.ranking import pick_hints

from .cards import card, promoted
from .pipeline import schedule
from .state import DocState

if TYPE_CHECKING:
    from .server import TinymorphServer

LABEL_CHARS = 22
SUGGESTION_CHARS = 60


def short(label: str, limit: int = LABEL_CHARS) -> str:
    label = " ".join(label.split())
    return label if len(label) <= limit else label[: limit - 1] + "…"


def steer_command(server: TinymorphServer, feature: int, uri: str) -> types.Command:
    strength = server.settings.amplify_strength
    return types.Command(title=f"Steer toward feature {feature} (+{strength:g})", command="tinymorph.steer.add",
                         arguments=[{"feature": feature, "strength": strength, "mode": "add", "uri": uri}])


def span_hint(server: TinymorphServer, state: DocState, at: int, span: SpanFeatures,
              count: int | None = None) -> list[tuple[SpanFeature, str]]:
    """The features the hint of `span` (starting at `at` in the current text) shows, with the words it shows for
    each: what the code actions there offer first, by the same words."""
    cards = {f.feature: card(server.cards, f.feature) for f in span.features}
    return pick_hints(span.features, {f: c.label for f, c in cards.items()},
                      server.settings.hint_count if count is None else count,
                      names={f: c.names for f, c in cards.items()},
                      text=state.doc.text[at:at + span.end - span.start])


def feature_hints(server: TinymorphServer, state: DocState, lo: int, hi: int) -> list[types.InlayHint]:
    count = server.settings.hint_count
    if count == 0:
        return []
    index, uri = state.doc.index, state.doc.uri
    hints = []
    for _, at, span in state.readings():
        end = at + span.end - span.start
        # a hint names what the span is about in words: features without a word label, and dense, punctuation and
        # position features, stay in the tooltip
        if not lo <= end <= hi:
            continue
        typed = state.last_edit
        if typed is not None and end <= typed and "\n" not in state.doc.text[end:typed]:
            # the writer is typing at or past the span's end: its hint would sit between old and new text, or where
            # the ghost text of a suggestion starts; it comes back once the writer starts another paragraph
            continue
        shown = span_hint(server, state, at, span)
        if not shown:
            continue
        parts = [types.InlayHintLabelPart(value="⟨")]
        for i, (f, label) in enumerate(shown):
            c = card(server.cards, f.feature)
            if i:
                parts.append(types.InlayHintLabelPart(value=" · "))
            parts.append(types.InlayHintLabelPart(
                value=short(label),
                tooltip=types.MarkupContent(kind=types.MarkupKind.Markdown, value=(
                    f"**{c.label}** (feature {f.feature})\n\npromotes {promoted(c)}\n\n"
                    f"peak {f.max:.2f} · sum {f.total:.2f} over {f.count} tokens\n\n"
                    f"Click to steer toward it (+{server.settings.amplify_strength:g}).")),
                command=steer_command(server, f.feature, uri)))
        parts.append(types.InlayHintLabelPart(value="⟩"))
        rows = [f"| {f.feature} | {short(card(server.cards, f.feature).label, 40) or '—'} | {f.max:.2f} | "
                f"{f.total:.2f} | {promoted(card(server.cards, f.feature))} |" for f in span.features]
        tooltip = "\n".join(["**tinymorph**: features of this " + server.settings.hint_granularity, "",
                             "| feature | label | peak | sum | promotes |", "|---:|---|---:|---:|---|", *rows])
        hints.append(types.InlayHint(
            position=index.position(end), label=parts, padding_left=True,
            tooltip=types.MarkupContent(kind=types.MarkupKind.Markdown, value=tooltip)))
    return hints


def suggestion_hint(server: TinymorphServer, state: DocState, lo: int, hi: int) -> list[types.InlayHint]:
    """The suggestion as a hint; not for a client that shows inline completions (its ghost text at the same place
    shows the same continuation)."""
    s = state.suggestion
    if server.supports("text_document.inline_completion"):
        return []
    if s is None or s.version != state.doc.version or not lo <= s.offset <= hi:
        return []
    first = short(s.text.replace("\n", " ⏎ "), SUGGESTION_CHARS)
    steering = server.steering_for(state.doc.uri)
    how = f"steered by {steering.describe()}" if steering.active else "unsteered"
    return [types.InlayHint(
        position=state.doc.index.position(s.offset),
        label=[types.InlayHintLabelPart(
            value=f"⟶ {first}",
            command=types.Command(title="Accept the suggestion", command="tinymorph.suggestion.accept",
                                  arguments=[{"uri": state.doc.uri, "version": s.version}]))],
        padding_left=True,
        tooltip=types.MarkupContent(kind=types.MarkupKind.Markdown, value=(
            f"**tinymorph suggestion** ({how})\n\n```text\n{s.text}\n```\n\n"
            "Accept it with the code action *Accept suggestion* or by clicking the hint.")))]


def register(server: TinymorphServer) -> None:
    @server.feature(types.TEXT_DOCUMENT_INLAY_HINT)
    def inlay_hints(ls: TinymorphServer, params: types.InlayHintParams) -> list[types.InlayHint]:
        state = ls.state(params.text_document.uri)
        lo, hi = state.doc.index.offsets(params.range)
        state.visible = (lo, hi)
        annotated = state.annotated
        if annotated is not None and len(state.doc.text) > ls.settings.max_chars:
            covered = (annotated.base, annotated.base + len(annotated.annotation.text))
            fits = hi - lo <= ls.settings.max_chars
            running = state.pending is not None and not state.pending.done()
            reading = state.reading if running and state.reading is not None else covered
            if fits and (lo < covered[0] or hi > covered[1]) and (not running or lo < reading[0] or hi > reading[1]):
                schedule(ls, state, 0.05)  # the editor scrolled out of the window annotated (or being read)
        return feature_hints(ls, state, lo, hi) + suggestion_hint(ls, state, lo, hi)
