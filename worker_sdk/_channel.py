"""gRPC channel construction shared by Client and Worker (options sized for Faultline's messages)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import grpc
import grpc.aio
from google.protobuf import duration_pb2
from google.protobuf.message import DecodeError

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


#: Environment defaults of Client and Worker (and so of every `faultline` command).
API_KEY_ENV = "FAULTLINE_API_KEY"
TLS_CA_ENV = "FAULTLINE_TLS_CA"
TLS_CLIENT_CERT_ENV = "FAULTLINE_TLS_CLIENT_CERT"
TLS_CLIENT_KEY_ENV = "FAULTLINE_TLS_CLIENT_KEY"
_STATUS_DETAILS_KEY = "grpc-status-details-bin"
_RETRY_INFO_TYPE = "type.googleapis.com/google.rpc.RetryInfo"


def resolve_api_key(api_key: str | None) -> str | None:
    """api_key, else $FAULTLINE_API_KEY, else None; "" means "send none" even when the variable is set."""
    if api_key is not None:
        return api_key or None
    return os.environ.get(API_KEY_ENV) or None


def auth_metadata(api_key: str | None) -> tuple[tuple[str, str], ...]:
    """The call metadata that carries an API key."""
    if not api_key:
        return ()
    if any(c.isspace() for c in api_key) or not api_key.isprintable():
        raise ValueError("api_key must be printable with no spaces (as `faultline keys create` prints it)")
    return (("authorization", f"Bearer {api_key}"),)


def _pem(value: str | os.PathLike[str] | bytes | None, what: str) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    try:
        return Path(value).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {what} {str(value)!r}: {exc.strerror or exc}") from None


def tls_credentials(
    *,
    tls: bool | None = None,
    ca_cert: str | os.PathLike[str] | bytes | None = None,
    client_cert: str | os.PathLike[str] | bytes | None = None,
    client_key: str | os.PathLike[str] | bytes | None = None,
) -> grpc.ChannelCredentials | None:
    """TLS channel credentials, or None for plaintext.

    ca_cert, client_cert and client_key are PEM bytes or paths; each defaults to its FAULTLINE_TLS_* variable.
    TLS is on when tls=True or a CA or client certificate is given; tls=True alone trusts the system's roots.
    """
    ca_cert = ca_cert if ca_cert is not None else (os.environ.get(TLS_CA_ENV) or None)
    client_cert = client_cert if client_cert is not None else (os.environ.get(TLS_CLIENT_CERT_ENV) or None)
    client_key = client_key if client_key is not None else (os.environ.get(TLS_CLIENT_KEY_ENV) or None)
    if (client_cert is None) != (client_key is None):
        raise ValueError("client_cert and client_key go together (mTLS needs both)")
    if tls is False:
        return None
    if not tls and ca_cert is None and client_cert is None:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_pem(ca_cert, "ca_cert"),
        private_key=_pem(client_key, "client_key"),
        certificate_chain=_pem(client_cert, "client_cert"),
    )


def retry_delay(exc: grpc.aio.AioRpcError) -> timedelta | None:
    """The delay of a google.rpc.RetryInfo in the call's status details, if the server sent one.

    Decoded by hand from the wire format (google.rpc.Status{3: repeated Any{1: type_url, 2: value}},
    RetryInfo{1: Duration}) so that the SDK needs no googleapis-common-protos.
    """
    for key, value in exc.trailing_metadata() or ():
        if key != _STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        try:
            for field, detail in _fields(value):
                if field != 3 or not isinstance(detail, bytes):
                    continue
                parts = dict(_fields(detail))
                if parts.get(1) != _RETRY_INFO_TYPE.encode():
                    continue
                info = parts.get(2)
                duration = dict(_fields(info)).get(1) if isinstance(info, bytes) else None
                if isinstance(duration, bytes):
                    d = duration_pb2.Duration.FromString(duration)
                    return d.ToTimedelta()
        except (ValueError, DecodeError):
            return None
    return None


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def _fields(buf: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) of a protobuf message: varints as int, length-delimited as bytes."""
    out: list[tuple[int, int | bytes]] = []
    i = 0
    while i < len(buf):
        tag, i = _varint(buf, i)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            v, i = _varint(buf, i)
            out.append((field, v))
        elif wire == 2:
            n, i = _varint(buf, i)
            if i + n > len(buf):
                raise ValueError("truncated field")
            out.append((field, buf[i:i + n]))
            i += n
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            raise ValueError(f"wire type {wire}")
    return out
