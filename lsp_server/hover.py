"""Hover: the features active at the token under the cursor, with activation, label and promoted tokens; a feature
the writer watches says so, and the last line points at the code actions that steer or watch them."""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING

from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams

from steering.engine import FeatureCard
from steering.features.annotate import FeatureValue, TokenFeatures
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


FOLDED_NUMBERS = 6
"""Feature numbers listed in the folded line of features without words."""


def render(server: TinymorphServer, tok: TokenFeatures, steering: SteeringSet) -> str:
    """The features at a token for a writer: those with words first, strongest first, one line each (its words,
    activation, the words it leads to, how well Amplify carries it, watched); those without words folded into one
    line; written explanations below. Lists, not tables: every editor shows them as text."""
    shown = tok.text.replace("\n", "⏎").strip() or repr(tok.text)
    lines = [f"**tinymorph** · `{shown}`", ""]
    if not tok.features:
        lines.append("No feature fires here.")
        return "\n".join(lines)
    worded: list[tuple[FeatureValue, FeatureCard]] = []
    unworded: list[tuple[FeatureValue, FeatureCard]] = []
    for f in sorted(tok.features, key=lambda f: -f.activation):
        c = card(server.cards, f.feature)
        (worded if c.label else unworded).append((f, c))
    for f, c in worded:
        parts = [f"**{short(c.label, 40)}** {f.activation:.2f}"]
        leads = promoted(c, markdown=False)
        if leads:
            parts.append(f"leads to *{leads}*")
        if c.steerability is not None:
            parts.append(f"amplify {steers(c.steerability)}")
        watch = steering.watched(f.feature)
        if watch is not None:
            parts.append(f"*watched above {watch.threshold:.3g}*")
        lines.append("- " + " · ".join(parts))
    if unworded:
        numbers = ", ".join(str(f.feature) for f, _ in unworded[:FOLDED_NUMBERS])
        more = "…" if len(unworded) > FOLDED_NUMBERS else ""
        lines += ["", f"*{'and ' if worded else ''}{len(unworded)} feature{'s' if len(unworded) > 1 else ''} without "
                      f"words yet ({numbers}{more})*"]
    for c in [c for _, c in worded if c.explanation][:3]:
        lines += ["", f"**{short(c.label, 40)}**: {c.explanation}" + (f" *({c.source})*" if c.source else "")]
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
