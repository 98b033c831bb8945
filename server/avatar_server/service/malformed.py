"""Turns request bytes that do not parse as the method's message into INVALID_ARGUMENT, not UNKNOWN."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc
from google.protobuf.message import DecodeError

_UNPARSABLE = object()


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):
    """Unary requests that fail to parse end with INVALID_ARGUMENT (streams: see the servicer)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler
        parse = handler.request_deserializer

        def tolerant(raw: bytes) -> object:
            try:
                return parse(raw)
            except DecodeError:
                return _UNPARSABLE

        message = f"the request to {details.method} is not a valid protobuf message"
        if handler.response_streaming:
            inner_stream = handler.unary_stream

            async def streaming(request, context):  # type: ignore[no-untyped-def]
                if request is _UNPARSABLE:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
                async for item in inner_stream(request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(
                streaming, request_deserializer=tolerant, response_serializer=handler.response_serializer)
        inner = handler.unary_unary

        async def unary(request, context):  # type: ignore[no-untyped-def]
            if request is _UNPARSABLE:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary, request_deserializer=tolerant, response_serializer=handler.response_serializer)
