"""Style presets, "write more like this": the `tinymorph.preset.*` commands that make one from a selection and list,
rename, toggle and remove them. A preset is kept per workspace beside its steering (`workspace.SteeringSet`) and
applied to every suggestion while it is enabled.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pygls.exceptions import JsonRpcContentModified

from steering.runtime.presets import StyleVector

from .actions import PRESET_CREATE as CREATE
from .actions import parse_rewrite_args, selected
from .commands import after_steering_change, changing, engine_call, field_of, the_object
from .hints import short
from .workspace import MAX_STRENGTH, Preset, SteeringSet, check_name

if TYPE_CHECKING:
    from .server import TinymorphServer
else:  # pygls resolves command handlers' annotations at run time: the base class stands in for the server type
    from pygls.lsp.server import LanguageServer as TinymorphServer

EXAMPLES = {
    CREATE: '{"uri": "file:///...", "version": 3, "range": {...}, "name": "storm scenes", "strength": 1}',
    "tinymorph.preset.rename": '{"name": "storm scenes", "to": "weather"}',
    "tinymorph.preset.toggle": '{"name": "storm scenes", "enabled": false}',
    "tinymorph.preset.remove": '{"name": "storm scenes"}',
}


def listing(steering: SteeringSet, preset: Preset) -> dict[str, Any]:
    where = steering.vector_path(preset)
    out = {**preset.to_dict(), "file": str(where) if where else None}
    if preset.error:
        out["error"] = preset.error
    return out


def preset_list(steering: SteeringSet) -> dict[str, Any]:
    return {"presets": [listing(steering, p) for p in steering.presets],
            "file": str(steering.path) if steering.path else None}


def default_name(selection: str) -> str:
    """The selection's first words, as a name."""
    return short(selection, 40)


def register(server: TinymorphServer) -> None:
    @server.command(CREATE)
    async def create(ls: TinymorphServer, *args: Any) -> dict[str, Any]:
        obj = the_object(args, CREATE, EXAMPLES)
        uri, version, rng = parse_rewrite_args(ls, obj, CREATE)
        name = field_of(obj, "name", str, CREATE, None, EXAMPLES)
        strength = float(field_of(obj, "strength", (int, float), CREATE, 1.0, EXAMPLES,
                                  within=(-MAX_STRENGTH, MAX_STRENGTH)))
        with changing(CREATE):
            name = None if name is None else check_name(name)
        state, lo, hi = selected(ls, uri, version, rng, "no preset was made")
        text = state.doc.text
        made: StyleVector = await engine_call(ls, "preset", lambda e: e.style_vector(text, lo, hi))
        identity = ls.engine_identity()
        if identity is None:
            raise JsonRpcContentModified(f"{CREATE}: the model was unloaded while the preset was made; try again.")
        steering = ls.steering_for(uri)
        excerpt = short(text[lo:hi], 80)
        with changing(CREATE):
            preset = steering.add_preset(name or steering.unique_name(default_name(text[lo:hi])), made.vector,
                                         strength=strength, model=identity[0], hook=identity[1], excerpt=excerpt)
        after_steering_change(ls)
        return {"preset": listing(steering, preset), "tokens": made.tokens, "against": made.reference,
                **preset_list(steering)}

    @server.command("tinymorph.preset.list")
    def list_presets(ls: TinymorphServer, *args: Any) -> dict[str, Any]:
        cmd = "tinymorph.preset.list"
        return preset_list(ls.steering_for(field_of(the_object(args, cmd), "uri", str, cmd, None)))

    @server.command("tinymorph.preset.rename")
    def rename(ls: TinymorphServer, *args: Any) -> dict[str, Any]:
        cmd = "tinymorph.preset.rename"
        return change(ls, cmd, args, lambda steering, name, obj: steering.rename_preset(
            name, field_of(obj, "to", str, cmd, ..., EXAMPLES)))

    @server.command("tinymorph.preset.toggle")
    def toggle(ls: TinymorphServer, *args: Any) -> dict[str, Any]:
        cmd = "tinymorph.preset.toggle"
        return change(ls, cmd, args, lambda steering, name, obj: steering.toggle_preset(
            name, field_of(obj, "enabled", bool, cmd, None)))

    @server.command("tinymorph.preset.remove")
    def remove(ls: TinymorphServer, *args: Any) -> dict[str, Any]:
        return change(ls, "tinymorph.preset.remove", args, lambda steering, name, obj: steering.remove_preset(name))


def change(ls: TinymorphServer, cmd: str, args: tuple[Any, ...],
           apply: Callable[[SteeringSet, str, dict[str, Any]], object]) -> dict[str, Any]:
    """Apply a change to the preset named in the request's `name` (in the workspace of its `uri`); the presets after."""
    obj = the_object(args, cmd, EXAMPLES)
    name = field_of(obj, "name", str, cmd, ..., EXAMPLES)
    steering = ls.steering_for(field_of(obj, "uri", str, cmd, None))
    with changing(cmd):
        apply(steering, name, obj)
    after_steering_change(ls)
    return preset_list(steering)
