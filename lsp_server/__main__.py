"""`python -m lsp_server` / `tinymorph serve`: build the server (`create_server`), forward its log to the client,
and serve on stdio (or TCP on 127.0.0.1) until the client leaves."""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from typing import TYPE_CHECKING

from lsprotocol import types

if TYPE_CHECKING:
    from .server import TinymorphServer
    from .worker import Loader

log = logging.getLogger("lsp_server")

LOCALHOST = "127.0.0.1"


def create_server(loader: Loader | None = None) -> TinymorphServer:
    """The server with every feature registered; a feature that fails to register is logged and left out."""
    from . import (
        actions,
        commands,
        completion,
        documents,
        examples,
        hints,
        hover,
        lifecycle,
        maps,
        presets,
        watch,
    )
    from .server import TinymorphServer
    from .worker import load_engine

    server = TinymorphServer(loader or load_engine)
    for module in (lifecycle, documents, hints, hover, actions, completion, commands, presets, watch, examples,
                   maps):
        try:
            module.register(server)
        except Exception:
            log.exception("could not register %s", module.__name__)
    return server


class LogForwarder(logging.Handler):
    """Sends warnings and errors of the server's loggers to the client's log (`window/logMessage`)."""

    def __init__(self, server: TinymorphServer) -> None:
        super().__init__(logging.WARNING)
        self.server = server

    def emit(self, record: logging.LogRecord) -> None:
        try:
            kind = types.MessageType.Error if record.levelno >= logging.ERROR else types.MessageType.Warning
            params = types.LogMessageParams(type=kind, message=self.format(record))
            loop = self.server.loop
            if loop is None:
                return  # not connected yet: stderr and the log file have it
            if threading.get_ident() == self.server.loop_thread:
                self.server.window_log_message(params)
            else:  # the engine thread logs too; only the event loop may write to the client
                loop.call_soon_threadsafe(self.server.window_log_message, params)
        except Exception:  # logging must never break the server
            pass


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="tinymorph serve", description=(
        "The tinymorph language server: feature hints, hover, steering actions and steered completions. "
        "Speaks LSP on stdio unless --tcp is given."))
    ap.add_argument("--stdio", action="store_true", help="speak LSP on stdin/stdout (the default)")
    ap.add_argument("--tcp", action="store_true", help=f"listen on TCP, on {LOCALHOST} only")
    ap.add_argument("--port", type=int, default=2087, help="TCP port (default 2087)")
    ap.add_argument("--log-file", help="also write the server's log to this file")
    ap.add_argument("-v", "--verbose", action="count", default=0, help="-v: info, -vv: debug")
    return ap


def main(argv: list[str] | None = None) -> int:
    """Serve until the client sends `exit` or goes away, then end the process (`lifecycle.end_process`: exit code
    0 after `shutdown`, else 1); a bad flag returns 2."""
    args = parser().parse_args(argv)
    if not 0 < args.port < 65536:
        sys.stderr.write(f"tinymorph serve: --port must be between 1 and 65535, not {args.port}\n")
        return 2
    level = logging.WARNING - 10 * min(args.verbose, 2)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]  # stdout is the protocol
    if args.log_file:
        try:
            handlers.append(logging.FileHandler(args.log_file, encoding="utf-8"))
        except OSError as exc:
            sys.stderr.write(f"tinymorph serve: cannot write the log file: {exc}\n")
            return 2
    logging.basicConfig(level=level, handlers=handlers,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pygls").setLevel(max(level, logging.WARNING) if args.verbose < 2 else logging.DEBUG)

    from .memory import tune_allocator

    tune_allocator()  # before the model's first allocation
    server = create_server()
    forwarder = LogForwarder(server)
    forwarder.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    for name in ("lsp_server", "steering"):
        logging.getLogger(name).addHandler(forwarder)
    from .lifecycle import end_process
    from .transport import serve_stdio, serve_tcp

    if args.tcp:
        try:
            serve_tcp(server, LOCALHOST, args.port)
        except OSError as exc:
            sys.stderr.write(f"tinymorph serve: cannot listen on {LOCALHOST}:{args.port}: {exc}\n")
            return 2
    else:
        serve_stdio(server)

    end_process(server)


if __name__ == "__main__":
    raise SystemExit(main())
