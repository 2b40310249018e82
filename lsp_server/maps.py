"""The feature map of an open document: `tinymorph.map` writes its page (`steering.features.featuremap`) into the workspace's
`.tinymorph/maps/` (or, with no workspace folder, the user's cache), returns its path and asks the editor to open
it (`window/showDocument`, in the browser).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lsprotocol import types
from pygls.exceptions import JsonRpcInternalError, JsonRpcInvalidParams

from steering.atomic import write_text
from steering.features.featuremap import render_html

from .actions import MAP
from .commands import engine_call, field_of, the_object
from .text import uri_path
from .workspace import MAP_DIR, store_problem

if TYPE_CHECKING:
    from .server import TinymorphServer
else:  # pygls resolves command handlers' annotations at run time: the base class stands in for the server type
    from pygls.lsp.server import LanguageServer as TinymorphServer

EXAMPLES = {MAP: '{"uri": "file:///...", "open": true, "feature": 123}'}


def cache_maps() -> Path:
    """Where maps go without a workspace folder: `$XDG_CACHE_HOME/tinymorph/maps` (`~/.cache/...`)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tinymorph" / "maps"


def map_name(uri: str) -> str:
    """`<document name>-<8 hex of the URI>.html`: readable, and two documents of the same name do not collide."""
    path = uri_path(uri)
    stem = re.sub(r"[^\w.-]+", "-", path.stem if path is not None else uri.rsplit("/", 1)[-1]).strip(".-")[:60]
    return f"{stem or 'document'}-{hashlib.sha256(uri.encode()).hexdigest()[:8]}.html"


def destination(server: TinymorphServer, uri: str) -> Path:
    """The map's path: inside the workspace's `.tinymorph/maps/` when its store is usable, else the cache."""
    folder = server.steering_for(uri).folder
    if folder is not None and store_problem(folder) is None:
        return folder / MAP_DIR / map_name(uri)
    return cache_maps() / map_name(uri)


def register(server: TinymorphServer) -> None:
    @server.command(MAP)
    async def feature_map(ls: TinymorphServer, *args: Any) -> dict[str, Any]:
        obj = the_object(args, MAP, EXAMPLES)
        uri = field_of(obj, "uri", str, MAP, examples=EXAMPLES)
        show = field_of(obj, "open", bool, MAP, True, EXAMPLES)
        feature = field_of(obj, "feature", int, MAP, None, EXAMPLES)
        state = ls.state(uri)
        text, version = state.doc.text, state.doc.version
        path = uri_path(uri)
        title = path.name if path is not None else uri

        def job(engine: Any) -> tuple[str, int, int, list[int]]:
            fmap = engine.feature_map(text, title=title, session=uri)
            return render_html(fmap), len(fmap.paragraphs), len(fmap.features), list(fmap.features)

        page, paragraphs, features, shown = await engine_call(ls, "map", job)
        if feature is not None and feature not in shown:
            raise JsonRpcInvalidParams(f"{MAP}: feature {feature} is not in this document's map (it shows "
                                       f"{features} features).")
        where = destination(ls, uri)
        if where.is_dir() or where.is_symlink():
            raise JsonRpcInternalError(f"{MAP}: {where} is a folder or a link; nothing was written")
        try:
            write_text(where, page)
        except OSError as exc:
            raise JsonRpcInternalError(f"{MAP}: cannot write the map to {where}: {exc.strerror or exc}; nothing "
                                       f"was written") from None
        address = where.as_uri() + (f"#f={feature}" if feature is not None else "")
        shown_in_editor = False
        if show and ls.supports("window.show_document.support"):
            try:
                answer = await ls.window_show_document_async(types.ShowDocumentParams(uri=address, external=True))
                shown_in_editor = bool(answer and answer.success)
                if not shown_in_editor:
                    ls.tell(f"The editor could not open the feature map; it is at {where}.", types.MessageType.Info)
            except Exception as exc:  # the map is written either way; the path is in the answer
                ls.tell(f"The editor could not open the feature map ({exc}); it is at {where}.",
                        types.MessageType.Info)
        return {"path": str(where), "uri": address, "version": version, "paragraphs": paragraphs,
                "features": features, "opened": shown_in_editor}
