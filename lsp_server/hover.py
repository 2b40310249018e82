"""Hover: the features active at the token under the cursor, with activation, label and promoted tokens; a feature
the writer watches says so, and the last line points at the code actions that steer or watch them."""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING

from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams

from steering.features.annotate import TokenFeatures
from steering.runtime.guidance import steers

from .cards import card, promoted
from .hints import short
from .state import DocState
from .text import PositionError
from .workspace import SteeringSet

if TYPE_CHECKING:
    from .server import TinymorphServer

NEIGHBOURHOOD = 16
"""Characters around a token that must be unchanged since the annotation for its features to be shown."""


def token_at(state: DocState, offset: int) -> tuple[TokenFeatures, int] | None:
    """The annotated token covering `offset` and where it starts in the current text."""
    found = state.reading_at(offset)
    if found is None:
        return None
    annotated = found[0]
    tokens = annotated.annotation.tokens
    starts = [t.start for t in tokens]
    text = state.doc.text
    for shift in dict.fromkeys((0, len(text) - annotated.doc_length)):
        local = offset - annotated.base - shift
        i = bisect.bisect_right(starts, local) - 1
        for j in (i, i - 1):  # a cursor just after a token's last character still hovers that token
            if 0 <= j < len(tokens) and tokens[j].start <= local <= tokens[j].end and tokens[j].end > tokens[j].start:
                tok = tokens[j]
                lo = max(0, tok.start - NEIGHBOURHOOD)
                hi = min(len(annotated.annotation.text), tok.end + NEIGHBOURHOOD)
                at = annotated.locate(text, lo, hi)
                if at is not None and at == annotated.base + shift + lo:
                    return tok, at + tok.start - lo
    return None


def render(server: TinymorphServer, tok: TokenFeatures, steering: SteeringSet) -> str:
    shown = tok.text.replace("\n", "⏎")
    lines = [f"**tinymorph** · token `{shown}` (#{tok.index}, id {tok.token_id})", ""]
    if not tok.features:
        lines.append("No feature fires here.")
        return "\n".join(lines)
    lines += ["| feature | activation | label | promotes |", "|---:|---:|---|---|"]
    for f in tok.features:
        c = card(server.cards, f.feature)
        watch = steering.watched(f.feature)
        watched = f" · *watched above {watch.threshold:.3g}*" if watch is not None else ""
        lines.append(f"| {f.feature} | {f.activation:.2f} | {short(c.label, 40) or '—'}{watched} | {promoted(c)} |")
    measured = [(f.feature, card(server.cards, f.feature)) for f in tok.features]
    said = [f"\u201c{short(c.label, 30)}\u201d: {steers(c.steerability)}" for _, c in measured
            if c.steerability is not None and c.label]
    if said:
        lines += ["", "Amplify " + "; ".join(said) + "."]
    for feature, c in [(x, c) for x, c in measured if c.explanation][:3]:
        lines += ["", f"**{feature}**: {c.explanation}" + (f" *({c.source})*" if c.source else "")]
    lines += ["", "*Code actions here amplify, suppress or watch these features.*"]
    return "\n".join(lines)


def register(server: TinymorphServer) -> None:
    @server.feature(types.TEXT_DOCUMENT_HOVER)
    def hover(ls: TinymorphServer, params: types.HoverParams) -> types.Hover | None:
        state = ls.state(params.text_document.uri)
        try:
            offset = state.doc.index.offset(params.position, strict=True)
        except PositionError as exc:
            raise JsonRpcInvalidParams(str(exc)) from None
        found = token_at(state, offset)
        if found is None:
            return None
        tok, start = found
        return types.Hover(
            contents=types.MarkupContent(kind=types.MarkupKind.Markdown, value=render(ls, tok, ls.steering_for(state.doc.uri))),
            range=state.doc.index.range(start, start + tok.end - tok.start))
