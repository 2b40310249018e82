"""Capability negotiation: what the client announced it can do, read in one place.

`protocol` asks `pulls` at `initialize` how diagnostics reach this client (the server then offers pulling or not);
every feature asks `announced` through `TinymorphServer.supports`.
"""

from __future__ import annotations

from lsprotocol import types
from pygls.capabilities import get_capability


def announced(capabilities: types.ClientCapabilities, capability: str) -> bool:
    """Whether `capabilities` announce `capability` (a dotted path such as `workspace.configuration`)."""
    return bool(get_capability(capabilities, capability, None))


def pulls(capabilities: types.ClientCapabilities) -> bool:
    """Whether the client gets diagnostics by pulling: it pulls and it takes `workspace/diagnostic/refresh`.

    Clients that do get them through `textDocument/diagnostic`, the others through `textDocument/publishDiagnostics`:
    Neovim 0.12 pulls but takes no refresh, so a pulled report would stay stale until the next keystroke; it gets
    them pushed, and the server does not offer it pulling."""
    text, workspace = capabilities.text_document, capabilities.workspace
    return bool(text is not None and text.diagnostic is not None and workspace is not None and
                workspace.diagnostics is not None and workspace.diagnostics.refresh_support)
