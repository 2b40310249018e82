"""TinymorphProtocol: pygls' JSON-RPC and LSP protocol with the reading rules a long-lived server needs.

- Only the top-level object of a message is a message: pygls structures every object that has a `jsonrpc` key
  (its `structure_message` is json.loads' object_hook), params' objects too.
- Every request gets an answer: one pygls cannot read is InvalidParams, one without `params` is read with null
  params, one before `initialize` is ServerNotInitialized and one after `shutdown` InvalidRequest (pygls drops all
  of these, so the client would wait forever). Notifications before `initialize` or after `shutdown` are dropped.
- A malformed answer to a request of the server fails that request (pygls drops it, so the request would wait
  forever); the answer to `workspace/configuration` is kept as plain JSON (`lifecycle.section_of` checks it).
- Positions in UTF-8 when the client offers them (else UTF-16); the document text is kept by the server itself
  (`lsp_server.text.Document`, LSP line breaks only).
"""

from __future__ import annotations

import logging
from typing import Any

from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pygls.protocol import LanguageServerProtocol
from pygls.protocol.language_server import lsp_method

from .capabilities import pulls

log = logging.getLogger(__name__)


def readable_id(msg_id: Any) -> bool:
    """Whether `msg_id` is a JSON-RPC request id the server can answer (a string or an integer)."""
    return isinstance(msg_id, str) or (isinstance(msg_id, int) and not isinstance(msg_id, bool))


class TinymorphProtocol(LanguageServerProtocol):
    def get_result_type(self, method: str) -> type[Any] | None:  # type: ignore[override]  # lru_cache in pygls
        return None if method == types.WORKSPACE_CONFIGURATION else super().get_result_type(method)

    def structure_message(self, data: dict[str, Any]) -> Any:
        """json.loads' object_hook, called for every object of a message: the object as it is (`handle_message`
        structures the message itself)."""
        return data

    def read(self, data: dict[str, Any]) -> Any:
        """The message `data` structured by pygls; a missing `params` is null (JSON-RPC lets a request leave it
        out, pygls requires it), or `{}` where the method's params cannot be null."""
        if "params" in data or "method" not in data:
            return super().structure_message(data)
        try:
            return super().structure_message({**data, "params": None})
        except JsonRpcException:
            return super().structure_message({**data, "params": {}})

    def handle_message(self, message: Any) -> None:
        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
            log.warning("not a JSON-RPC 2.0 message: %.200r", message)
            return
        method, has_id = message.get("method"), "id" in message
        if (method is not None and not isinstance(method, str)) or (has_id and not readable_id(message["id"])):
            log.warning("not a readable JSON-RPC message: %.200r", message)
            return
        try:
            structured = self.read(message)
        except JsonRpcException as exc:
            if method is None and has_id:  # a malformed answer to a request of the server fails that request
                structured = types.ResponseErrorMessage(id=message["id"], error=types.ResponseError(
                    code=types.ErrorCodes.ParseError, message=f"malformed answer: {message.get('result')!r:.120}"))
            elif has_id:
                self._send_response(message["id"], error=exc.to_response_error())
                return
            else:
                log.warning("could not read the notification %.200r", message)
                return
        initialized = self._workspace is not None
        if method is None or method == types.EXIT or (initialized and not self._shutdown) or \
                (method == types.INITIALIZE and not self._shutdown):
            super().handle_message(structured)
        elif has_id:
            code, why = (types.ErrorCodes.InvalidRequest, "the server is shut down") if self._shutdown else \
                (types.ErrorCodes.ServerNotInitialized, "the server is not initialized yet")
            self._send_response(message["id"], error=types.ResponseError(code=code, message=f"{method}: {why}"))
        else:
            log.info("dropped %s: %s", method, "the server is shut down" if self._shutdown else "not initialized")

    @lsp_method(types.INITIALIZE)
    def lsp_initialize(self, params: types.InitializeParams) -> Any:
        general = params.capabilities.general
        if general is not None and general.position_encodings:
            offered = general.position_encodings
            general.position_encodings = [types.PositionEncodingKind.Utf8] if types.PositionEncodingKind.Utf8 in \
                offered else [types.PositionEncodingKind.Utf16]
        result = yield from super().lsp_initialize(params)
        server: Any = self._server
        server.pulls_diagnostics = pulls(params.capabilities)
        if not server.pulls_diagnostics:  # it gets them published instead: offering both would show each twice
            result.capabilities.diagnostic_provider = None
        return result

    @lsp_method(types.TEXT_DOCUMENT_DID_OPEN)
    def lsp_text_document__did_open(self, params: types.DidOpenTextDocumentParams) -> Any:
        if (handler := self.fm.features.get(types.TEXT_DOCUMENT_DID_OPEN)) is not None:
            yield handler, (params,), None

    @lsp_method(types.TEXT_DOCUMENT_DID_CHANGE)
    def lsp_text_document__did_change(self, params: types.DidChangeTextDocumentParams) -> Any:
        if (handler := self.fm.features.get(types.TEXT_DOCUMENT_DID_CHANGE)) is not None:
            yield handler, (params,), None

    @lsp_method(types.TEXT_DOCUMENT_DID_CLOSE)
    def lsp_text_document__did_close(self, params: types.DidCloseTextDocumentParams) -> Any:
        if (handler := self.fm.features.get(types.TEXT_DOCUMENT_DID_CLOSE)) is not None:
            yield handler, (params,), None
