"""Watched features: the `tinymorph.watch.*` commands that keep a workspace's watch list, and pulled diagnostics.

A writer watches a feature (kept per workspace in `steering.json`); wherever it fires above its threshold, the
sentence gets a diagnostic with its label and peak activation (`findings`), and code actions on it (`actions`):
rewrite the sentence with the feature suppressed, or stop watching.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lsprotocol import types
from pygls.exceptions import JsonRpcContentModified, JsonRpcInvalidParams

from .cards import card
from .commands import changing, engine_call, field_of, named, the_object
from .findings import SOURCE, diagnostics, update
from .pipeline import schedule
from .workspace import SEVERITIES, Watch

if TYPE_CHECKING:
    from .server import TinymorphServer
else:  # pygls resolves command handlers' annotations at run time: the base class stands in for the server type
    from pygls.lsp.server import LanguageServer as TinymorphServer

ADD, REMOVE, LIST = "tinymorph.watch.add", "tinymorph.watch.remove", "tinymorph.watch.list"
EXAMPLES = {
    ADD: '{"feature": 123, "threshold": 2.5, "severity": "warning", "message": "too much weather"}',
    REMOVE: '{"feature": 123}',
    LIST: '{}',
}
DEFAULT_SHARE = 0.5
"""Without a threshold, a watch fires where the feature reaches this share of its corpus peak (`max_act`)."""


def listing(server: TinymorphServer, uri: str | None) -> dict[str, Any]:
    steering = server.steering_for(uri)
    return {"watch": [w.to_dict() for w in steering.watches], "file": str(steering.path) if steering.path else None}


def after_watch_change(server: TinymorphServer) -> None:
    """Flag what the annotations already show at once, then read the documents again for the rest."""
    for state in server.docs.values():
        update(server, state, force=True)
        if server.handles(state.doc.language_id):
            schedule(server, state, 0)


async def default_threshold(ls: TinymorphServer, feature: int) -> float:
    peak = await engine_call(ls, "explain", lambda e: e.explain(feature).max_act)
    if not peak or peak <= 0:
        raise JsonRpcInvalidParams(f"{ADD}: give a threshold: this SAE has no statistics to choose one for "
                                   f"feature {feature} from.")
    return float(f"{DEFAULT_SHARE * peak:.3g}")


def register(server: TinymorphServer) -> None:
    @server.feature(types.TEXT_DOCUMENT_DIAGNOSTIC, types.DiagnosticOptions(
        identifier=SOURCE, inter_file_dependencies=False, workspace_diagnostics=False))
    def pull(ls: TinymorphServer, params: types.DocumentDiagnosticParams) -> types.DocumentDiagnosticReport:
        state = ls.state(params.text_document.uri)
        result_id = f"{state.doc.version}.{state.findings_id}"
        if params.previous_result_id == result_id:
            return types.RelatedUnchangedDocumentDiagnosticReport(result_id=result_id)
        return types.RelatedFullDocumentDiagnosticReport(items=diagnostics(ls, state), result_id=result_id)

    @server.command(ADD)
    async def watch_add(ls: TinymorphServer, *args: Any) -> dict[str, Any]:
        obj = the_object(args, ADD, EXAMPLES)
        feature = field_of(obj, "feature", int, ADD, examples=EXAMPLES)
        uri = field_of(obj, "uri", str, ADD, None, EXAMPLES)
        severity = field_of(obj, "severity", str, ADD, "information", EXAMPLES)
        text = field_of(obj, "message", str, ADD, "", EXAMPLES)
        threshold = obj.get("threshold")
        if severity not in SEVERITIES:
            raise JsonRpcInvalidParams(f"{ADD}: 'severity' must be one of {', '.join(SEVERITIES)}, not {severity!r}")
        with changing(ADD):  # the checks of a stored watch, before any engine work
            Watch(feature, 1.0 if threshold is None else threshold, severity, text.strip())
        info = ls.worker.info
        if ls.worker.engine is None or info is None:
            raise JsonRpcContentModified(f"{ADD}: the model is not loaded yet; try again in a moment.")
        if info.d_sae is None:
            raise JsonRpcInvalidParams(f"{ADD}: the loaded model has no SAE, so it has no features to watch.")
        if feature >= info.d_sae:
            raise JsonRpcInvalidParams(f"{ADD}: feature {feature} does not exist: the SAE has features 0 to "
                                       f"{info.d_sae - 1}.")
        label = card(ls.cards, feature).label or await engine_call(ls, "label", lambda e: e.label(feature))
        if threshold is None:
            threshold = await default_threshold(ls, feature)
        with changing(ADD):
            ls.steering_for(uri).watch(Watch(feature, float(threshold), severity, text.strip(), label))
        after_watch_change(ls)
        said = f"Watching {named(feature, label)}: sentences where it is strong are flagged."
        ls.tell(said, types.MessageType.Info)
        return {**listing(ls, uri), "said": said}

    @server.command(REMOVE)
    def watch_remove(ls: TinymorphServer, *args: Any) -> dict[str, Any]:
        obj = the_object(args, REMOVE, EXAMPLES)
        feature = field_of(obj, "feature", int, REMOVE, examples=EXAMPLES)
        uri = field_of(obj, "uri", str, REMOVE, None, EXAMPLES)
        with changing(REMOVE):
            removed = ls.steering_for(uri).unwatch(feature)
        if not removed:
            raise JsonRpcInvalidParams(f"{REMOVE}: feature {feature} is not watched.")
        after_watch_change(ls)
        said = f"No longer watching {named(feature, card(ls.cards, feature).label)}."
        ls.tell(said, types.MessageType.Info)
        return {**listing(ls, uri), "said": said}

    @server.command(LIST)
    def watch_list(ls: TinymorphServer, *args: Any) -> dict[str, Any]:
        obj = the_object(args, LIST, EXAMPLES)
        return listing(ls, field_of(obj, "uri", str, LIST, None, EXAMPLES))
