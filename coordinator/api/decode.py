"""DecodeGuard: a request grpcio cannot parse (invalid UTF-8 in a string field, truncated bytes) is INVALID_ARGUMENT.

grpcio parses a request before any handler runs; a DecodeError there becomes UNKNOWN ("Unexpected
<class DecodeError>") on a unary call and an exception out of context.read() on a stream. This server
interceptor wraps each method's deserializer: a unary call's handler sees a marker and aborts with
INVALID_ARGUMENT; a stream's read raises the session's StreamAbort, which ends the stream the same way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from coordinator.api.session import StreamAbort


class _Undecodable:
    """Stands in for a unary request that did not parse."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


def _problem(exc: Exception) -> str:
    return f"request does not parse as protobuf: {exc}"


class DecodeGuard(grpc.aio.ServerInterceptor):
    """See the module docstring."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        found = await continuation(handler_call_details)
        if found is None or found.request_deserializer is None:
            return found
        handler: Any = found  # a grpc._utilities.RpcMethodHandler namedtuple: _replace() makes the copy
        parse = handler.request_deserializer
        if handler.unary_unary is not None:
            behavior = handler.unary_unary

            def lenient(raw: bytes) -> Any:
                try:
                    return parse(raw)
                except DecodeError as exc:
                    return _Undecodable(_problem(exc))

            async def unary(request: Any, context: Any) -> Any:
                if isinstance(request, _Undecodable):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
                return await behavior(request, context)

            return handler._replace(request_deserializer=lenient, unary_unary=unary)  # type: ignore[no-any-return]
        if handler.stream_stream is not None:
            def strict(raw: bytes) -> Any:
                try:
                    return parse(raw)
                except DecodeError as exc:
                    raise StreamAbort(grpc.StatusCode.INVALID_ARGUMENT, _problem(exc)) from None

            return handler._replace(request_deserializer=strict)  # type: ignore[no-any-return]
        return found
