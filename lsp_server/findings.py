"""Where watched features fire: the findings of an annotation, moved with every edit, sent as diagnostics.

A finding (`state.Finding`) is a sentence where a watched feature (`workspace.Watch`) peaks above its threshold.
Findings are computed from each annotation (which keeps watched features on every token where they fire) and follow
edits at once: their ranges move with every change, without waiting for the model, until the next annotation
replaces them.

Clients that pull diagnostics and can be told to pull again (`workspace/diagnostic/refresh`) get them through
`textDocument/diagnostic`; the others through `textDocument/publishDiagnostics` (decided at `initialize` by
`capabilities.pulls`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING

from lsprotocol import types

from steering.spans import split_spans

from .state import Annotated, DocState, Finding
from .workspace import Watch

if TYPE_CHECKING:
    from .server import TinymorphServer

SOURCE = "tinymorph"
SEVERITY = {"error": types.DiagnosticSeverity.Error, "warning": types.DiagnosticSeverity.Warning,
            "information": types.DiagnosticSeverity.Information, "hint": types.DiagnosticSeverity.Hint}


def find(annotated: Annotated, watches: Iterable[Watch]) -> list[Finding]:
    """The sentences of `annotated` (document coordinates) where a watched feature peaks above its threshold."""
    thresholds = {w.feature: w.threshold for w in watches}
    annotation = annotated.annotation
    if not thresholds or not annotation.tokens:
        return []
    sentences = split_spans(annotation.text, "sentence")
    peaks: dict[tuple[int, int], float] = {}
    s = 0
    for tok in annotation.tokens:
        at = max(tok.end - 1, tok.start)
        while s < len(sentences) and sentences[s][1] <= at:
            s += 1
        if s == len(sentences):
            break
        if at < sentences[s][0]:
            continue
        for f in tok.features:
            if f.feature in thresholds and f.activation >= thresholds[f.feature]:
                key = (s, f.feature)
                peaks[key] = max(peaks.get(key, 0.0), f.activation)
    base = annotated.base
    return sorted((Finding(f, base + sentences[i][0], base + sentences[i][1], peak) for (i, f), peak in peaks.items()),
                  key=lambda x: (x.start, x.feature))


def moved(findings: list[Finding], start: int, old_end: int, new_end: int) -> list[Finding]:
    """`findings` after `text[start:old_end]` was replaced by text ending at `new_end`: ranges before the edit stay,
    ranges after it shift, a range the edit cuts into keeps what is left of it (one left empty is dropped). Text
    typed at a range's edge stays outside it; only an edit inside a range makes it grow."""
    delta = new_end - old_end
    out = []
    for x in findings:
        lo = x.start if x.start < start else (x.start + delta if x.start >= old_end else new_end)
        hi = x.end if x.end <= start else (x.end + delta if x.end >= old_end else start)
        if hi > lo:
            out.append(replace(x, start=lo, end=hi))
    return out


def message(watch: Watch, finding: Finding) -> str:
    what = f"{watch.name}: peak {finding.peak:.3g} here (you watch it above {watch.threshold:g})"
    return f"{watch.message} \u2014 {what}" if watch.message else f"Watched feature {what}"


def diagnostics(server: TinymorphServer, state: DocState) -> list[types.Diagnostic]:
    steering = server.steering_for(state.doc.uri)
    out = []
    for x in state.findings:
        watch = steering.watched(x.feature)
        if watch is None:
            continue
        out.append(types.Diagnostic(
            range=state.doc.index.range(x.start, x.end), message=message(watch, x), source=SOURCE,
            severity=SEVERITY[watch.severity],
            data={"feature": x.feature, "peak": round(x.peak, 3)}))
    return out


def changed(server: TinymorphServer, state: DocState, findings: list[Finding], *, force: bool = False) -> None:
    """Make `findings` the document's and tell the client (when they changed, or with `force`: the watches
    behind them did): publish them, or ask it to pull again."""
    if findings == state.findings and not force:
        return
    state.findings = findings
    state.findings_id += 1
    if server.pulls_diagnostics:
        if server.supports("workspace.diagnostics.refresh_support"):
            server.workspace_diagnostic_refresh(None)
        return
    server.text_document_publish_diagnostics(types.PublishDiagnosticsParams(
        uri=state.doc.uri, diagnostics=diagnostics(server, state), version=state.doc.version))


def update(server: TinymorphServer, state: DocState, *, force: bool = False) -> None:
    """The findings of the document's annotation (after each annotation, and when the watch list changes)."""
    watches = server.steering_for(state.doc.uri).watches
    watched = {w.feature for w in watches}
    window, whole = state.annotated, state.whole
    fresh = window is not None and window.version == state.doc.version
    if not fresh and (whole is None or whole.version != state.doc.version):
        if force:  # a removed watch must not wait for the next annotation to disappear
            changed(server, state, [x for x in state.findings if x.feature in watched], force=True)
        return
    lo = hi = -1
    found: list[Finding] = []
    if fresh and window is not None:
        lo, hi = window.base, window.base + len(window.annotation.text)
        found = find(window, watches)
    if whole is not None and whole.version == state.doc.version:
        rest = find(whole, watches)  # a long document's findings outside its window
    else:  # those found before, moved by the edits since
        rest = [x for x in state.findings if x.feature in watched]
    found += [x for x in rest if not (lo <= x.start and x.end <= hi)]
    changed(server, state, sorted(found, key=lambda x: (x.start, x.feature)), force=force)


def closed(server: TinymorphServer, state: DocState) -> None:
    """A closed document's diagnostics are taken back (pushed ones; a pulling client drops them itself)."""
    if state.findings and not server.pulls_diagnostics:
        server.text_document_publish_diagnostics(types.PublishDiagnosticsParams(uri=state.doc.uri, diagnostics=[]))


def watched_features(server: TinymorphServer, uri: str) -> tuple[int, ...]:
    """The features the annotation of `uri` must keep wherever they fire."""
    return tuple(sorted(w.feature for w in server.steering_for(uri).watches))
