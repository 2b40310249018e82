"""Code actions: accept the suggestion, amplify, suppress or watch the selection's top features, rewrite the
selection with the current steering (resolved lazily), the features most specific to the selection, write more like
it (a style preset) or stop, clear steering, open the feature map; on a watched feature's diagnostic, rewrite its
sentence with the feature suppressed or stop watching it.

Every edit is a versioned `WorkspaceEdit`: the editor refuses it if the document changed, and the server refuses to
compute one for a version it no longer has.
"""

from __future__ import annotations

import bisect
import math
import re
from typing import TYPE_CHECKING, Any

from lsprotocol import types
from pygls.exceptions import (
    JsonRpcContentModified,
    JsonRpcInvalidParams,
    JsonRpcInvalidRequest,
    JsonRpcRequestCancelled,
)

from steering.evaluation.calibrate import DISTINCT_2
from steering.evaluation.continuations import distinct_2, word_list
from steering.features.ranking import rank
from steering.runtime.guidance import steers
from steering.runtime.interventions import Intervention

from .cards import card
from .generation import OutOfMemory, Superseded, elsewhere_session, generate, prompt_at
from .hints import short, span_hint
from .state import DocState
from .text import PositionError
from .worker import EngineUnavailable

if TYPE_CHECKING:
    from .server import TinymorphServer

REWRITE = "tinymorph.rewrite"
PRESET_CREATE = "tinymorph.preset.create"
BY_EXAMPLE = "tinymorph.features.byExample"
MAP = "tinymorph.map"
WATCH_ADD, WATCH_REMOVE = "tinymorph.watch.add", "tinymorph.watch.remove"
TOP_FEATURES = 3
KIND_STEER = "refactor.tinymorph"
KIND_AMPLIFY, KIND_SUPPRESS, KIND_WATCH = f"{KIND_STEER}.amplify", f"{KIND_STEER}.suppress", f"{KIND_STEER}.watch"
"""What clients pick the steering actions by (Neovim's keys, the tests): their titles are the writer's words."""
KIND_REWRITE = types.CodeActionKind.RefactorRewrite


def versioned_edit(state: DocState, version: int, start: int, end: int, text: str) -> types.WorkspaceEdit:
    return types.WorkspaceEdit(document_changes=[types.TextDocumentEdit(
        text_document=types.OptionalVersionedTextDocumentIdentifier(uri=state.doc.uri, version=version),
        edits=[types.TextEdit(range=state.doc.index.range(start, end), new_text=text)])])


def selection_features(state: DocState, lo: int, hi: int) -> list[int]:
    """The hintable features of the annotated tokens in `[lo, hi)` (or of the span at the cursor), most specific
    first, ranked as the hints are."""
    found = state.reading_at(lo)
    if found is None:
        return []
    annotated, _, span = found
    if lo == hi:
        return [f.feature for f in span.features if f.hintable]
    totals: dict[int, float] = {}
    tokens = annotated.annotation.tokens
    starts = [t.start for t in tokens]
    for at, span in annotated.spans(state.doc.text):
        if at + span.end - span.start <= lo or at >= hi:
            continue
        for tok in tokens[bisect.bisect_left(starts, span.start):bisect.bisect_left(starts, span.end)]:
            if lo <= at + tok.start - span.start < hi:
                for f in tok.features:
                    totals[f.feature] = totals.get(f.feature, 0.0) + f.activation
    return [r.feature for r in rank(totals, annotated.annotation.weights, top=TOP_FEATURES, also=0)]


def offered_features(server: TinymorphServer, state: DocState, lo: int, hi: int) -> list[tuple[int, str]]:
    """(feature, the words shown for it) the steering actions offer at `[lo, hi)`: first what the hints of the spans
    there show, by the same words; then the selection's other features that have words; a feature without words only
    when nothing there has any. At most `TOP_FEATURES` (or the hints' count, when larger)."""
    offered: dict[int, str] = {}
    if hi == lo:
        found = state.reading_at(lo)
        spans = [] if found is None else [found[1:]]
    else:
        spans = [(at, span) for _, at, span in state.readings() if at < hi and lo < at + span.end - span.start]
    for at, span in spans:
        for f, words in span_hint(server, state, at, span):
            offered.setdefault(f.feature, words)
    limit = max(TOP_FEATURES, len(offered))
    unworded: list[int] = []
    for feature in selection_features(state, lo, hi):
        label = short(card(server.cards, feature).label.split(",")[0].strip(), 30)
        if feature in offered:
            continue
        if label:
            offered[feature] = label
        else:
            unworded.append(feature)
    if not offered:
        offered = {f: "" for f in unworded}
    return list(offered.items())[:limit]


def rewrite_budget(selection: str) -> int:
    """Tokens to generate for a rewrite: room for about twice the selection (4 characters a token), 12 to 256; the
    rewrite is cut at the selection's number of sentences."""
    return max(12, min(256, len(selection) // 2 + 8))


_SENTENCE_END = re.compile(r"[.!?\u2026]+[\"'\u201d\u2019)\]]*(?=\s|$)")
"""The end of a sentence: its stops, then closing quotes or brackets, before a space or the end."""
REWRITE_NLL_MARGIN = 1.0
"""Nats per token a rewrite may read less fluently than the text it replaces (re-read by the unsteered model)."""


class RewriteRefused(Exception):
    """A rewrite not worth offering: the reason is for the writer."""


def fit_rewrite(selection: str, text: str, before: str) -> str:
    """`text` shaped to replace `selection`: as many sentences as it has when it ends one (cut after the last, so it
    never runs into the next sentence), its leading capital, and its spacing on both sides (`before`: the character
    before the selection). RewriteRefused when there is no complete sentence to offer for one."""
    core = selection.strip()
    lead, trail = selection[: len(selection) - len(selection.lstrip())], selection[len(selection.rstrip()):]
    glued = not lead and before and not before.isspace()  # right after a word or a quote: keep the text's own space
    body = text.rstrip() if glued else text.strip()
    last = list(_SENTENCE_END.finditer(core))
    if not last:  # a phrase: the rewrite stays one, without a stop the phrase did not have
        stop = _SENTENCE_END.search(body)
        body = body[: stop.start()] if stop else body
    elif last[-1].end() == len(core):
        ends = [m.end() for m in _SENTENCE_END.finditer(body)]
        if not ends:
            raise RewriteRefused("the model did not finish a sentence, and half a sentence would run into the next "
                                 "one.")
        body = body[: ends[min(len(last), len(ends)) - 1]]
    first = len(body) - len(body.lstrip())
    if core[:1].isupper() and body[first:first + 1].islower():
        body = body[:first] + body[first].upper() + body[first + 1:]
    if not body.strip():
        raise RewriteRefused("the model wrote nothing for it.")
    return lead + body + trail


def check_fluent(rewrite: str, original: str, nll: tuple[float, float]) -> None:
    """RewriteRefused when `rewrite` is a list of words, loops, or reads much less fluently than `original` (`nll`:
    the unsteered model's NLL per token of each after the same text)."""
    if word_list(rewrite):
        raise RewriteRefused("the steered text came out as a list of words, not a sentence.")
    words = rewrite.lower().split()
    if len(words) >= 8 and distinct_2(words) < DISTINCT_2:
        raise RewriteRefused("the steered text repeats itself.")
    new, old = nll
    if not math.isfinite(new) or new > old + REWRITE_NLL_MARGIN:
        raise RewriteRefused(f"the steered text reads much less fluently than yours ({new:.1f} against {old:.1f} "
                             "nats a token); try a smaller strength.")


async def compute_rewrite(server: TinymorphServer, uri: str, version: int, rng: types.Range,
                          suppress: int | None = None) -> types.WorkspaceEdit:
    """The selection regenerated from the text before it, under the workspace's steering (with feature
    `suppress` steered away from, as the Suppress action does, instead of whatever the set does with it)."""
    state, lo, hi = selected(server, uri, version, rng)
    selection = state.doc.text[lo:hi]
    prompt = prompt_at(server, state, lo, keep=False)
    stop = ("\n\n",) if "\n\n" not in selection else ()
    extra = () if suppress is None else (
        Intervention("add", suppress, strength=-server.settings.amplify_strength),)
    try:
        text = await generate(server, uri, prompt, kind="rewrite", max_tokens=rewrite_budget(selection), stop=stop,
                              extra=extra, session=elsewhere_session(uri))  # the writer's window stays read
    except Superseded:
        raise JsonRpcRequestCancelled("A newer request for this document took over.") from None
    except (EngineUnavailable, OutOfMemory) as exc:
        raise JsonRpcContentModified(str(exc)) from None
    if state.doc.version != version or server.docs.get(uri) is not state:
        raise JsonRpcContentModified(f"{uri} changed while the rewrite ran; nothing was applied.")
    try:
        text = fit_rewrite(selection, text, state.doc.text[lo - 1] if lo else "\n")
        nll = await server.run_engine("rewrite", lambda e: e.nll(prompt, [text.strip(), selection.strip()]))
        check_fluent(text, selection, (nll[0], nll[1]))
    except RewriteRefused as exc:
        raise JsonRpcInvalidRequest(f"No rewrite: {exc} Nothing was changed.") from None
    except EngineUnavailable as exc:
        raise JsonRpcContentModified(str(exc)) from None
    if state.doc.version != version or server.docs.get(uri) is not state:
        raise JsonRpcContentModified(f"{uri} changed while the rewrite ran; nothing was applied.")
    return versioned_edit(state, version, lo, hi, text)


def register(server: TinymorphServer) -> None:
    @server.feature(types.TEXT_DOCUMENT_CODE_ACTION, types.CodeActionOptions(
        code_action_kinds=[types.CodeActionKind.QuickFix, KIND_REWRITE, types.CodeActionKind.Refactor],
        resolve_provider=True))
    def code_actions(ls: TinymorphServer, params: types.CodeActionParams) -> list[types.CodeAction]:
        state = ls.state(params.text_document.uri)
        doc = state.doc
        try:
            lo, hi = doc.index.offsets(params.range, strict=True)
        except PositionError as exc:
            raise JsonRpcInvalidParams(str(exc)) from None
        uri, version = doc.uri, doc.version
        actions: list[types.CodeAction] = []
        s = state.suggestion
        if s is not None and s.version == version and lo - 1 <= s.offset <= hi + 1:
            actions.append(types.CodeAction(
                title=f"Accept suggestion: {short(s.text.strip(), 50)}", kind=types.CodeActionKind.QuickFix,
                is_preferred=True, edit=versioned_edit(state, version, s.offset, s.offset, s.text)))
        for feature, words in offered_features(ls, state, lo, hi):
            named = f"\u201c{short(words, 30)}\u201d" if words else f"feature {feature} (no words for it yet)"
            shown = card(ls.cards, feature)
            strength = ls.settings.amplify_strength
            carries = "" if shown.steerability is None else f" \u00b7 {steers(shown.steerability)}"
            actions.append(types.CodeAction(
                title=f"Amplify {named}{carries}", kind=KIND_AMPLIFY,
                command=types.Command(title="Amplify", command="tinymorph.steer.add", arguments=[
                    {"feature": feature, "strength": strength, "mode": "add", "uri": uri}])))
            actions.append(types.CodeAction(
                title=f"Suppress {named}", kind=KIND_SUPPRESS,
                command=types.Command(title="Suppress", command="tinymorph.steer.add", arguments=[
                    {"feature": feature, "strength": -strength, "mode": "add", "uri": uri}])))
            if ls.steering_for(uri).watched(feature) is None:
                actions.append(types.CodeAction(
                    title=f"Watch {named} (flag where it is strong)", kind=KIND_WATCH,
                    command=types.Command(title="Watch", command=WATCH_ADD, arguments=[
                        {"feature": feature, "uri": uri}])))
        actions = watched_actions(ls, state, lo, hi) + actions
        steering = ls.steering_for(uri)
        data = {"uri": uri, "version": version, "range": ls.protocol._converter.unstructure(params.range)}
        if hi > lo and doc.text[lo:hi].strip():
            title = "Rewrite selection with current steering" + (
                f" ({steering.describe()})" if steering.active else " (no steering set)")
            actions.append(rewrite_action(ls, title, KIND_REWRITE, data))
        if hi > lo and doc.text[lo:hi].strip():
            actions.append(types.CodeAction(
                title="Features most specific to the selection…", kind=f"{KIND_STEER}.examples",
                command=types.Command(title="Features by example", command=BY_EXAMPLE, arguments=[
                    {**data, "show": True}])))
        if hi > lo and len(doc.text[lo:hi].split()) >= 2:
            actions.append(types.CodeAction(
                title="Write more like this (a style preset from the selection)", kind=f"{KIND_STEER}.preset",
                command=types.Command(title="Write more like this", command=PRESET_CREATE, arguments=[data])))
        for preset in steering.presets:
            if preset.enabled:
                actions.append(types.CodeAction(
                    title=f"Stop writing like \u201c{short(preset.name, 40)}\u201d", kind=f"{KIND_STEER}.preset",
                    command=types.Command(title="Switch the preset off", command="tinymorph.preset.toggle",
                                          arguments=[{"name": preset.name, "enabled": False, "uri": uri}])))
        if steering.entries:
            actions.append(types.CodeAction(
                title="Clear steering", kind=f"{KIND_STEER}.clear",
                command=types.Command(title="Clear steering", command="tinymorph.steer.clear", arguments=[
                    {"uri": uri}])))
        if state.annotated is not None:
            actions.append(types.CodeAction(
                title="Open the feature map of this document", kind=f"{types.CodeActionKind.Source}.tinymorph.map",
                command=types.Command(title="Feature map", command=MAP, arguments=[{"uri": uri}])))
        return actions

    @server.feature(types.CODE_ACTION_RESOLVE)
    async def resolve(ls: TinymorphServer, action: types.CodeAction) -> types.CodeAction:
        data = action.data
        if action.kind not in (KIND_REWRITE, types.CodeActionKind.QuickFix) or not isinstance(data, dict):
            return action
        uri, version, rng = parse_rewrite_args(ls, data)
        action.edit = await compute_rewrite(ls, uri, version, rng, parse_suppress(data))
        return action


def rewrite_action(server: TinymorphServer, title: str, kind: str, data: dict[str, Any]) -> types.CodeAction:
    """A rewrite the client resolves lazily, or (without resolve support) runs as the `tinymorph.rewrite` command."""
    action = types.CodeAction(title=title, kind=kind, data=data)
    if not server.supports("text_document.code_action.resolve_support"):
        action.command = types.Command(title=title, command=REWRITE, arguments=[data])
    return action


def watched_actions(server: TinymorphServer, state: DocState, lo: int, hi: int) -> list[types.CodeAction]:
    """On a sentence where a watched feature fires: rewrite it with the feature suppressed, or stop watching."""
    out: list[types.CodeAction] = []
    steering = server.steering_for(state.doc.uri)
    for x in state.findings:
        watch = steering.watched(x.feature)
        if watch is None or not (x.start <= hi and lo <= x.end):
            continue
        diagnostic = types.Diagnostic(range=state.doc.index.range(x.start, x.end), message=watch.name,
                                      source="tinymorph")
        data = {"uri": state.doc.uri, "version": state.doc.version, "suppress": x.feature,
                "range": server.protocol._converter.unstructure(state.doc.index.range(x.start, x.end))}
        action = rewrite_action(server, f"Rewrite this sentence without {watch.name}",
                                types.CodeActionKind.QuickFix, data)
        action.diagnostics, action.is_preferred = [diagnostic], True
        out.append(action)
        out.append(types.CodeAction(
            title=f"Stop watching {watch.name}", kind=types.CodeActionKind.QuickFix, diagnostics=[diagnostic],
            command=types.Command(title="Stop watching", command=WATCH_REMOVE, arguments=[
                {"feature": x.feature, "uri": state.doc.uri}])))
    return out


def parse_rewrite_args(server: TinymorphServer, data: Any, command: str = "") -> tuple[str, int, types.Range]:
    """`uri`, `version` and `range` of a request about a selection; a bad one is InvalidParams (naming `command`)."""
    said = f"{command}: " if command else ""
    if not isinstance(data, dict):
        raise JsonRpcInvalidParams(f"{said}expected {{uri, version, range}}")
    uri, version = data.get("uri"), data.get("version")
    if not isinstance(uri, str) or not isinstance(version, int) or isinstance(version, bool):
        raise JsonRpcInvalidParams(f"{said}expected {{uri: string, version: integer, range}}")
    try:
        rng = server.protocol._converter.structure(data.get("range"), types.Range)
    except Exception:
        raise JsonRpcInvalidParams(f"{said}range must be an LSP range {{start: {{line, character}}, end: {{...}}}}"
                                   ) from None
    return uri, version, rng


def selected(server: TinymorphServer, uri: str, version: int, rng: types.Range, undone: str = "",
             ) -> tuple[DocState, int, int]:
    """The open document `uri` and the string offsets of `rng` in it, if it is still at `version`: else
    ContentModified (saying `undone`, what did not happen); a range that names no place is InvalidParams."""
    state = server.state(uri)
    if state.doc.version != version:
        raise JsonRpcContentModified(f"{uri} changed (version {state.doc.version}, the request was for "
                                     f"{version}){'; ' + undone if undone else ''}.")
    try:
        lo, hi = state.doc.index.offsets(rng, strict=True)
    except PositionError as exc:
        raise JsonRpcInvalidParams(str(exc)) from None
    return state, lo, hi


def parse_suppress(data: dict[str, Any]) -> int | None:
    """The feature a rewrite steers away from (`suppress`), if any."""
    feature = data.get("suppress")
    if feature is None:
        return None
    if not isinstance(feature, int) or isinstance(feature, bool) or feature < 0:
        raise JsonRpcInvalidParams(f"suppress must be a feature number, not {feature!r}")
    return feature

