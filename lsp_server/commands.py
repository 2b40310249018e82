"""`workspace/executeCommand`: steering, feature search and explanation, status, and the edits behind actions.

Every command takes one object argument (or none), checked field by field: a bad one is a JSON-RPC InvalidParams
error naming the field, and nothing changes.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lsprotocol import types
from pygls.exceptions import JsonRpcContentModified, JsonRpcInternalError, JsonRpcInvalidParams

from steering.errors import TinymorphError
from steering.runtime.guidance import CANNOT_STEER
from steering.runtime.interventions import MODE_TABLE, Intervention

from .actions import REWRITE, compute_rewrite, parse_rewrite_args, parse_suppress, versioned_edit
from .config import to_wire
from .pipeline import resuggest
from .worker import EngineAPI, EngineUnavailable
from .workspace import MAX_ACTIVATION, MAX_STRENGTH, SaveError, Steer, SteeringError, intervention_from

if TYPE_CHECKING:
    from .server import TinymorphServer
else:  # pygls resolves command handlers' annotations at run time: the base class stands in for the server type
    from pygls.lsp.server import LanguageServer as TinymorphServer


def the_object(args: tuple[Any, ...], command: str, examples: Mapping[str, str] | None = None) -> dict[str, Any]:
    if not args:
        return {}
    if len(args) != 1 or not isinstance(args[0], dict):
        example = (examples or EXAMPLES).get(command, "{}")
        raise JsonRpcInvalidParams(f"{command} takes one object argument, e.g. {example}")
    return args[0]


def field_of(obj: dict[str, Any], name: str, kind: type | tuple[type, ...], command: str, default: Any = ...,
             examples: Mapping[str, str] | None = None, within: tuple[float, float] | None = None) -> Any:
    """`obj[name]`, checked: of `kind`, finite, and inside `within` (inclusive) when given; `default` when absent
    (required when there is none). A bad value is InvalidParams naming the command once and the field."""
    if name not in obj:
        if default is ...:
            raise JsonRpcInvalidParams(f"{command}: missing {name!r} (e.g. {(examples or EXAMPLES).get(command, '{}')})")
        return default
    value = obj[name]
    ok = isinstance(value, kind) and not (isinstance(value, bool) and kind is not bool)
    if kind == (int, float):
        ok = ok and math.isfinite(value)
    if not ok:
        names = {int: "a whole number", str: "a string", (int, float): "a finite number", bool: "true or false"}
        raise JsonRpcInvalidParams(f"{command}: {name!r} must be {names.get(kind, kind)}, not {value!r}")
    if within is not None and not within[0] <= value <= within[1]:
        raise JsonRpcInvalidParams(f"{command}: {name!r} must be between {within[0]:g} and {within[1]:g}, not {value!r}")
    return value


@contextmanager
def changing(command: str) -> Iterator[None]:
    """A change to a steering set: a bad request is InvalidParams, a failed save an internal error; either way the
    set is as it was."""
    try:
        yield
    except SaveError as exc:
        raise JsonRpcInternalError(f"{command}: {exc}") from None
    except SteeringError as exc:
        raise JsonRpcInvalidParams(f"{command}: {exc}") from None


EXAMPLES = {
    "tinymorph.steer.add": '{"feature": 123, "strength": 1, "mode": "add"} (mode: add, suppress, row, clamp, ablate)',
    "tinymorph.steer.remove": '{"feature": 123}',
    "tinymorph.features.search": '{"query": "weather"}',
    "tinymorph.features.explain": '{"feature": 123, "self": false}',
    "tinymorph.suggestion.accept": '{"uri": "file:///...", "version": 3}',
}


def parse_steer_add(ls: TinymorphServer, args: tuple[Any, ...]) -> tuple[Intervention, str | None]:
    """The intervention `tinymorph.steer.add` asks for (its fields are the engine's: `Intervention.to_dict`), and
    the workspace it names."""
    cmd = "tinymorph.steer.add"
    obj = the_object(args, cmd)
    described: dict[str, Any] = {"mode": field_of(obj, "mode", str, cmd, "add"),
                                 "feature": field_of(obj, "feature", int, cmd)}
    suppress = described["mode"] == "suppress"  # what the Suppress action does: add at minus Amplify's strength
    if suppress:
        described["mode"] = "add"
    for name, within in (("strength", (-MAX_STRENGTH, MAX_STRENGTH)), ("value", (-MAX_ACTIVATION, MAX_ACTIVATION))):
        if name in obj:
            described[name] = float(field_of(obj, name, (int, float), cmd, within=within))
    mode = MODE_TABLE.get(described["mode"])
    if mode is not None and "strength" in mode.numbers:  # Amplify's strength unless the command gives one
        described.setdefault("strength", ls.settings.amplify_strength)
    if suppress:
        described["strength"] = -abs(described["strength"])
    try:
        intervention = intervention_from(described)
    except SteeringError as exc:
        raise JsonRpcInvalidParams(f"{cmd}: {exc}") from None
    return intervention, field_of(obj, "uri", str, cmd, None)


def named(feature: int, label: str) -> str:
    """A feature as the writer knows it: its words in quotes, else its number."""
    words = " ".join(label.split())
    return f"\u201c{words}\u201d" if words else f"feature {feature}"


def confirmation(intervention: Intervention, label: str) -> str:
    """What a steering change did, in the writer's words (`Amplifying “sea” (+4)…`)."""
    assert intervention.feature is not None
    name = named(intervention.feature, label)
    if intervention.mode == "ablate":
        return f"{name} is now switched off in suggestions."
    if intervention.mode == "clamp":
        return f"{name} is now held at {intervention.value:g} in suggestions."
    if intervention.strength >= 0:
        return f"Amplifying {name} ({intervention.strength:+g}): suggestions now lean toward it."
    return f"Suppressing {name} ({intervention.strength:+g}): suggestions now steer away from it."


def resident_mb() -> float | None:
    """The server's resident memory in MiB (Linux), or None where it cannot be read."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


async def run_command(ls: TinymorphServer, name: str, argument: dict[str, Any]) -> Any:
    """Run the server's own command `name` with `argument`, as if the client had asked for it."""
    result = ls.protocol.fm.commands[name](argument)
    return await result if asyncio.iscoroutine(result) else result


async def engine_call(ls: TinymorphServer, kind: str, fn: Any) -> Any:
    try:
        return await ls.run_engine(kind, fn)
    except EngineUnavailable as exc:
        raise JsonRpcContentModified(str(exc)) from None
    except TinymorphError as exc:
        raise JsonRpcInvalidParams(str(exc)) from None


def steering_list(ls: TinymorphServer, uri: str | None) -> dict[str, Any]:
    steering = ls.steering_for(uri)
    return {"steering": [e.to_dict() for e in steering.entries],
            "file": str(steering.path) if steering.path else None}


def after_steering_change(ls: TinymorphServer) -> None:
    """New steering (feature entries or presets): the suggestions are out of date, the annotations are not (they
    read the text unsteered); compute the suggestions again and refresh the hints."""
    for state in ls.docs.values():
        state.suggestion = None
        resuggest(ls, state)
    ls.refresh_hints()


async def apply_edit(ls: TinymorphServer, edit: types.WorkspaceEdit, label: str) -> dict[str, Any]:
    """Ask the client to apply `edit`; its refusal (or failure) is reported, not raised."""
    try:
        result = await ls.workspace_apply_edit_async(types.ApplyWorkspaceEditParams(edit=edit, label=label))
    except Exception as exc:
        return {"applied": False, "reason": f"the editor did not apply the edit: {exc}"}
    if result is None or not result.applied:
        return {"applied": False, "reason": (result.failure_reason if result else None) or "the editor refused"}
    return {"applied": True}


def register(server: TinymorphServer) -> None:
    @server.command("tinymorph.steer.add")
    async def steer_add(ls: TinymorphServer, *args: Any) -> dict[str, Any]:
        intervention, uri = parse_steer_add(ls, args)
        feature = intervention.feature
        assert feature is not None
        label = ""
        info = ls.worker.info
        if ls.worker.engine is not None and info is not None:
            if info.d_sae is None:
                raise JsonRpcInvalidParams("tinymorph.steer.add: the loaded model has no SAE to steer with.")
            if feature >= info.d_sae:
                raise JsonRpcInvalidParams(f"tinymorph.steer.add: feature {feature} does not exist: the SAE "
                                           f"has features 0 to {info.d_sae - 1}.")
            card = ls.cards.get(feature) or (await engine_call(ls, "label", lambda e: e.cards([feature])))[feature]
            label = card.label
            if intervention.mode == "add" and intervention.strength > 0 and card.steerability is not None and \
                    card.steerability <= CANNOT_STEER:
                name = f"\u201c{label}\u201d" if label else f"feature {feature}"
                why = (f"Amplify cannot carry {name} into the text while it stays fluent (measured: it broke the "
                       "text or did not show on every calibration prompt), so it was not added. Suppress, Watch "
                       "and a style preset still work.")
                ls.tell(why, types.MessageType.Info)
                return {**steering_list(ls, uri), "refused": why}
        with changing("tinymorph.steer.add"):
            ls.steering_for(uri).put(Steer(intervention, label))
        after_steering_change(ls)
        said = confirmation(intervention, label)
        ls.tell(said, types.MessageType.Info)
        return {**steering_list(ls, uri), "said": said}

    @server.command("tinymorph.steer.remove")
    def steer_remove(ls: TinymorphServer, *args: Any) -> dict[str, Any]:
        cmd = "tinymorph.steer.remove"
        obj = the_object(args, cmd)
        feature, uri = field_of(obj, "feature", int, cmd), field_of(obj, "uri", str, cmd, None)
        steering = ls.steering_for(uri)
        label = next((e.label for e in steering.entries if e.feature == feature), "")
        with changing(cmd):
            removed = steering.remove(feature)
        if not removed:
            raise JsonRpcInvalidParams(f"{cmd}: feature {feature} is not in the steering set.")
        after_steering_change(ls)
        said = f"No longer steering {named(feature, label)}."
        ls.tell(said, types.MessageType.Info)
        return {**steering_list(ls, uri), "said": said}

    @server.command("tinymorph.steer.clear")
    def steer_clear(ls: TinymorphServer, *args: Any) -> dict[str, Any]:
        uri = field_of(the_object(args, "tinymorph.steer.clear"), "uri", str, "tinymorph.steer.clear", None)
        with changing("tinymorph.steer.clear"):
            ls.steering_for(uri).clear()
        after_steering_change(ls)
        return steering_list(ls, uri)

    @server.command("tinymorph.steer.list")
    def steer_list(ls: TinymorphServer, *args: Any) -> dict[str, Any]:
        uri = field_of(the_object(args, "tinymorph.steer.list"), "uri", str, "tinymorph.steer.list", None)
        return steering_list(ls, uri)

    @server.command("tinymorph.features.search")
    async def search(ls: TinymorphServer, *args: Any) -> dict[str, Any]:
        cmd = "tinymorph.features.search"
        obj = the_object(args, cmd)
        query = field_of(obj, "query", str, cmd).strip()
        limit = field_of(obj, "limit", int, cmd, 20, within=(1, 200))
        if not query:
            raise JsonRpcInvalidParams(f"{cmd}: 'query' must not be empty")
        if not 1 <= limit <= 200:
            raise JsonRpcInvalidParams(f"{cmd}: 'limit' must be between 1 and 200")
        found = await engine_call(ls, "search", lambda e: e.search(query, limit))
        return {"query": query, "features": [hit.to_dict() for hit in found]}

    @server.command("tinymorph.features.explain")
    async def explain(ls: TinymorphServer, *args: Any) -> dict[str, Any]:
        cmd = "tinymorph.features.explain"
        obj = the_object(args, cmd)
        feature, own_words = field_of(obj, "feature", int, cmd), field_of(obj, "self", bool, cmd, False)

        def explain(engine: EngineAPI) -> dict[str, Any]:
            out = engine.explain(feature).to_dict()
            if own_words:
                out["self"] = engine.self_explain(feature).to_dict()
            return out

        result: dict[str, Any] = await engine_call(ls, "explain", explain)
        return result

    @server.command("tinymorph.status")
    def status(ls: TinymorphServer, *args: Any) -> dict[str, Any]:
        the_object(args, "tinymorph.status")
        w = ls.worker
        engine = w.info.to_dict() if w.engine is not None and w.info is not None else None
        return {"state": w.state, "error": w.error, "engine": engine, "queueDepth": w.queue_depth,
                "running": w.running, "batched": w.batched, "latencyMs": dict(w.latency_ms), "documents": len(ls.docs),
                "positionEncoding": ls.encoding, "hintRefreshes": ls.hint_refreshes,
                "generations": ls.generations, "memoryMb": resident_mb(),
                "remoteCode": ls.settings.trust_remote_code and ls.settings.model in ls.trusted_models,
                "settings": to_wire(ls.settings)}

    @server.command("tinymorph.document")
    def document(ls: TinymorphServer, *args: Any) -> dict[str, Any]:
        cmd = "tinymorph.document"
        state = ls.state(field_of(the_object(args, cmd), "uri", str, cmd))
        a = state.annotated
        return {"uri": state.doc.uri, "version": state.doc.version, "text": state.doc.text,
                "annotatedVersion": a.version if a else None,
                "annotatedRange": [a.base, a.base + len(a.annotation.text)] if a else None,
                "annotations": state.annotations,
                "wholeVersion": state.whole.version if state.whole else None, "piecesRead": state.pieces_read,
                "suggestion": None if state.suggestion is None else {
                    "version": state.suggestion.version, "offset": state.suggestion.offset,
                    "text": state.suggestion.text}}

    @server.command("tinymorph.suggestion.accept")
    async def accept(ls: TinymorphServer, *args: Any) -> dict[str, Any]:
        cmd = "tinymorph.suggestion.accept"
        obj = the_object(args, cmd)
        uri, version = field_of(obj, "uri", str, cmd), field_of(obj, "version", int, cmd)
        state = ls.state(uri)
        s = state.suggestion
        if state.doc.version != version or s is None or s.version != version:
            raise JsonRpcContentModified(f"{cmd}: the document changed since the suggestion; nothing was applied.")
        return await apply_edit(ls, versioned_edit(state, version, s.offset, s.offset, s.text),
                                "Accept tinymorph suggestion")

    @server.command(REWRITE)
    async def rewrite(ls: TinymorphServer, *args: Any) -> dict[str, Any]:
        obj = the_object(args, REWRITE)
        uri, version, rng = parse_rewrite_args(ls, obj, REWRITE)
        edit = await compute_rewrite(ls, uri, version, rng, parse_suppress(obj))
        return await apply_edit(ls, edit, "tinymorph rewrite")
