"""gRPC channel construction shared by Client and Worker (options sized for Faultline's messages)."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
import grpc.aio

#: Largest message accepted from the coordinator: a batch of grants can carry many 1 MiB payloads.
MAX_RECEIVE_MESSAGE_BYTES_DEFAULT = 64 * 1024 * 1024
#: Largest message sent; the stream's batcher stays well below it.
MAX_SEND_MESSAGE_BYTES_DEFAULT = 16 * 1024 * 1024


def open_channel(
    target: str,
    *,
    credentials: grpc.ChannelCredentials | None = None,
    options: Sequence[tuple[str, int | str]] = (),
) -> grpc.aio.Channel:
    """An aio channel to `target`; TLS when credentials are given. Must be called on the event loop."""
    merged: dict[str, int | str] = {
        "grpc.max_receive_message_length": MAX_RECEIVE_MESSAGE_BYTES_DEFAULT,
        "grpc.max_send_message_length": MAX_SEND_MESSAGE_BYTES_DEFAULT,
    }
    merged.update(dict(options))
    opts = list(merged.items())
    if credentials is not None:
        return grpc.aio.secure_channel(target, credentials, options=opts)
    return grpc.aio.insecure_channel(target, options=opts)
