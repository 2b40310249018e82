"""Find features by example: `tinymorph.features.byExample` ranks the features most specific to a selection
(against the rest of the document and the corpus, as hints rank), each with its label, corpus examples and the
commands that steer toward it, suppress it or watch it.

From a code action (`show`), the server also asks the writer through `window/showMessageRequest` which feature to
act on and how, so that any client can use it; editors with their own picker call the command and show the list.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams

from .actions import BY_EXAMPLE, WATCH_ADD, parse_rewrite_args, selected
from .commands import engine_call, field_of, run_command, the_object
from .hints import short

if TYPE_CHECKING:
    from .server import TinymorphServer
else:  # pygls resolves command handlers' annotations at run time: the base class stands in for the server type
    from pygls.lsp.server import LanguageServer as TinymorphServer

EXAMPLES = {BY_EXAMPLE: '{"uri": "file:///...", "version": 3, "range": {...}, "limit": 8}'}
ASKED = 5
"""Features offered in the message request."""


def feature_commands(server: TinymorphServer, feature: int, label: str, uri: str) -> list[types.Command]:
    """Steer toward, suppress and watch `feature`, as commands."""
    strength = server.settings.amplify_strength
    name = f"\u201c{short(label, 30)}\u201d"
    return [
        types.Command(title=f"Steer toward {name}", command="tinymorph.steer.add",
                      arguments=[{"feature": feature, "strength": strength, "mode": "add", "uri": uri}]),
        types.Command(title=f"Suppress {name}", command="tinymorph.steer.add",
                      arguments=[{"feature": feature, "strength": -strength, "mode": "add", "uri": uri}]),
        types.Command(title=f"Watch {name}", command=WATCH_ADD, arguments=[{"feature": feature, "uri": uri}]),
    ]


async def ask(server: TinymorphServer, found: list[dict[str, Any]], commands_of: dict[int, list[types.Command]],
              ) -> dict[str, Any] | None:
    """Which feature to act on and how, asked in two message requests; the chosen command's result, or None when
    the writer dismissed a question."""
    if not found:
        server.tell("No feature a word names is specific to this selection.", types.MessageType.Info)
        return None
    offered = found[:ASKED]
    lines = [f"{i + 1}. {f['label']}" + (f" \u2014 e.g. {short(f['examples'][0], 70)}" if f["examples"] else "")
             for i, f in enumerate(offered)]
    first = await server.window_show_message_request_async(types.ShowMessageRequestParams(
        type=types.MessageType.Info, message="tinymorph: most specific to the selection:\n" + "\n".join(lines),
        actions=[types.MessageActionItem(title=f"{i + 1}. {short(f['label'], 30)}") for i, f in enumerate(offered)]))
    chosen = next((f for i, f in enumerate(offered) if first is not None and
                   first.title == f"{i + 1}. {short(f['label'], 30)}"), None)
    if chosen is None:
        return None
    commands = commands_of[chosen["feature"]]
    second = await server.window_show_message_request_async(types.ShowMessageRequestParams(
        type=types.MessageType.Info, message=f"tinymorph: \u201c{chosen['label']}\u201d",
        actions=[types.MessageActionItem(title=c.title) for c in commands]))
    command = next((c for c in commands if second is not None and second.title == c.title), None)
    if command is None:
        return None
    first = (command.arguments or [None])[0]
    argument: dict[str, Any] = first if isinstance(first, dict) else {}
    return {"chosen": command.title, "result": await run_command(server, command.command, argument)}


def register(server: TinymorphServer) -> None:
    @server.command(BY_EXAMPLE)
    async def by_example(ls: TinymorphServer, *args: Any) -> dict[str, Any]:
        obj = the_object(args, BY_EXAMPLE, EXAMPLES)
        uri, version, rng = parse_rewrite_args(ls, obj, BY_EXAMPLE)
        limit = field_of(obj, "limit", int, BY_EXAMPLE, 8, EXAMPLES, within=(1, 50))
        show = field_of(obj, "show", bool, BY_EXAMPLE, False, EXAMPLES)
        state, lo, hi = selected(ls, uri, version, rng)
        text = state.doc.text
        if not text[lo:hi].strip():
            raise JsonRpcInvalidParams(f"{BY_EXAMPLE}: select some text first.")
        ranked = await engine_call(ls, "examples", lambda e: e.features_by_example(text, lo, hi, top=limit,
                                                                                   session=uri))
        steering = ls.steering_for(uri)
        commands_of = {f.feature: feature_commands(ls, f.feature, f.label, uri) for f in ranked}
        found = [{**f.to_dict(), "watched": steering.watched(f.feature) is not None,
                  "actions": [ls.protocol._converter.unstructure(c) for c in commands_of[f.feature]]} for f in ranked]
        out: dict[str, Any] = {"uri": uri, "version": version, "features": found}
        if show:  # every client answers window/showMessageRequest (its capability only says how well)
            out["asked"] = await ask(ls, found, commands_of)
        return out
