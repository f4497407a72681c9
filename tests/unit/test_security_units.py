"""Security pieces without a server: settings, the loopback rule, tokens and hashes, patterns, buckets, RetryInfo."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from coordinator.api.server import check_exposure, is_loopback
from coordinator.auth.keyring import TokenBucket
from coordinator.auth.keys import (
    ANONYMOUS,
    Principal,
    Scope,
    check_queue_patterns,
    format_token,
    hash_secret,
    new_key_id,
    new_salt,
    new_secret,
    parse_scopes,
    parse_token,
    queue_allowed,
    secret_matches,
)
from coordinator.config import Config
from coordinator.errors import ConfigError, InvalidArgumentError, PermissionDeniedError, StartupError
from worker_sdk._channel import auth_metadata, resolve_api_key, retry_delay


def test_auth_settings_are_checked_and_name_the_variable(tmp_path: Path) -> None:
    assert Config.from_env({}).auth == "off" and not Config.from_env({}).auth_required
    assert Config.from_env({"FAULTLINE_AUTH": "required"}).auth_required
    with pytest.raises(ConfigError, match="FAULTLINE_AUTH must be one of"):
        Config.from_env({"FAULTLINE_AUTH": "yes"})
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    with pytest.raises(ConfigError, match="FAULTLINE_TLS_CERT and FAULTLINE_TLS_KEY go together"):
        Config.from_env({"FAULTLINE_TLS_CERT": str(cert)})
    with pytest.raises(ConfigError, match="FAULTLINE_TLS_KEY: no such file"):
        Config.from_env({"FAULTLINE_TLS_CERT": str(cert), "FAULTLINE_TLS_KEY": str(tmp_path / "missing")})
    with pytest.raises(ConfigError, match="FAULTLINE_TLS_CLIENT_CA needs"):
        Config.from_env({"FAULTLINE_TLS_CLIENT_CA": str(cert)})
    mtls = Config.from_env({"FAULTLINE_TLS_CERT": str(cert), "FAULTLINE_TLS_KEY": str(cert),
                            "FAULTLINE_TLS_CLIENT_CA": str(cert)})
    assert mtls.auth_required  # client certificates turn auth on by themselves
    with pytest.raises(ConfigError, match="FAULTLINE_TLS_CLIENT_SCOPES"):
        Config.from_env({"FAULTLINE_TLS_CLIENT_SCOPES": "root"})
    with pytest.raises(ConfigError, match="FAULTLINE_TLS_CLIENT_QUEUES"):
        Config.from_env({"FAULTLINE_TLS_CLIENT_QUEUES": "a b"})
    with pytest.raises(ConfigError, match="FAULTLINE_HEALTH_ADDR"):
        Config.from_env({"FAULTLINE_HEALTH_ADDR": "nope"})


def test_only_loopback_may_serve_without_auth() -> None:
    for host in ("127.0.0.1", "127.9.9.9", "[::1]", "localhost"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "[::]", "10.1.2.3", "192.0.2.1", "no-such-host.invalid"):
        assert not is_loopback(host), host
    check_exposure(Config(database_url=None, grpc_addr="127.0.0.1:50051"))
    with pytest.raises(StartupError, match="FAULTLINE_AUTH_OFF_ANY_ADDRESS=on accepts the risk"):
        check_exposure(Config(database_url=None, grpc_addr="0.0.0.0:50051"))
    check_exposure(Config(database_url=None, grpc_addr="0.0.0.0:50051", auth="required"))
    check_exposure(Config(database_url=None, grpc_addr="0.0.0.0:50051", auth_off_any_address=True))


def test_tokens_hashes_and_their_checks() -> None:
    key_id, secret, salt = new_key_id(), new_secret(), new_salt()
    token = format_token(key_id, secret)
    assert parse_token(token) == (key_id, secret)
    for bad in ("", "fl_", "fl_xyz_secret", f"xx_{key_id}_{secret}", f"fl_{key_id}_", "fl_" + "a" * 200):
        assert parse_token(bad) is None, bad
    stored = hash_secret(salt, secret)
    assert secret.encode() not in stored and secret_matches(salt, stored, secret)
    assert not secret_matches(salt, stored, secret + "x")
    assert hash_secret(new_salt(), secret) != stored  # the salt is per key
    assert auth_metadata(token) == (("authorization", f"Bearer {token}"),)
    with pytest.raises(ValueError):
        auth_metadata("has space")


def test_resolve_api_key_prefers_the_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAULTLINE_API_KEY", "from-env")
    assert resolve_api_key(None) == "from-env"
    assert resolve_api_key("given") == "given"
    assert resolve_api_key("") is None


def test_scopes_and_queue_patterns() -> None:
    assert parse_scopes("submit, read") == {Scope.SUBMIT, Scope.READ}
    with pytest.raises(InvalidArgumentError, match="unknown scope 'root'"):
        parse_scopes("root")
    assert check_queue_patterns(["team-a.*", "shared", "*"]) == ("team-a.*", "shared", "*")
    with pytest.raises(InvalidArgumentError):
        check_queue_patterns(["a*b"])
    assert queue_allowed(("team-a.*", "shared"), "team-a.x") and queue_allowed(("team-a.*",), "team-a.")
    assert not queue_allowed(("team-a.*", "shared"), "team-b") and not queue_allowed(("shared",), "shared2")
    p = Principal(name="key t", identity="key:t", scopes=frozenset({Scope.READ}), queues=("a",))
    assert p.qualify("w1") == "key:t/w1" and ANONYMOUS.qualify("w1") == "w1"
    with pytest.raises(PermissionDeniedError, match="needs scope submit"):
        p.require(Scope.SUBMIT, "Submit")
    with pytest.raises(PermissionDeniedError, match="queue 'b'"):
        p.require_queue("b", "GetJob")
    admin = Principal(name="key root", identity="key:root", scopes=frozenset({Scope.ADMIN}))
    assert all(admin.has(s) for s in Scope) and not admin.restricted


def test_token_bucket_refills_at_its_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(rate_per_s=2.0, burst=3, clock=lambda: now[0])
    assert [bucket.take(1) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(1) == pytest.approx(0.5)  # nothing taken: one token comes in 0.5 s
    now[0] = 0.5
    assert bucket.take(1) == 0.0
    assert bucket.take(2) == pytest.approx(1.0)
    now[0] = 100.0
    assert bucket.take(3) == 0.0  # capped at the burst, not 200 tokens


class _Refused(grpc.aio.AioRpcError):
    def __init__(self, trailing: tuple[tuple[str, str | bytes], ...]) -> None:
        super().__init__(grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing))


def test_the_sdk_reads_retry_info_without_googleapis_protos() -> None:
    delay = duration_pb2.Duration()
    delay.FromTimedelta(timedelta(milliseconds=1250))
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    other = any_pb2.Any()
    other.Pack(error_details_pb2.ErrorInfo(reason="x"))
    status = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message="slow down", details=[other, detail])
    exc = _Refused((("grpc-status-details-bin", status.SerializeToString()),))
    assert retry_delay(exc) == timedelta(milliseconds=1250)
    assert retry_delay(_Refused(())) is None
    assert retry_delay(_Refused((("grpc-status-details-bin", b"\xff\xff"),))) is None
