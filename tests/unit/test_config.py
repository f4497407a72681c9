"""Config.from_env: defaults, overrides, and errors that name the variable."""

from __future__ import annotations

from datetime import timedelta

import pytest

from coordinator.config import Config
from coordinator.errors import ConfigError


def test_defaults() -> None:
    cfg = Config.from_env({})
    assert cfg.database_url is None and cfg.grpc_addr == "127.0.0.1:50051" and cfg.metrics_addr == "127.0.0.1:9464"
    assert cfg.max_payload_bytes == 1 << 20 and cfg.heartbeat_interval_ms == cfg.lease_ttl_ms // 3


def test_overrides() -> None:
    cfg = Config.from_env({"DATABASE_URL": "postgresql://x/y", "FAULTLINE_BACKOFF_BASE_MS": "100",
                           "FAULTLINE_BACKOFF_MAX_MS": "500", "FAULTLINE_METRICS_ADDR": "off"})
    assert cfg.retry.base_ms == 100 and cfg.retry.max_ms == 500 and cfg.metrics_addr is None


def test_maintenance_interval_and_how_to_turn_it_off() -> None:
    assert Config.from_env({}).maintenance_interval == timedelta(seconds=5)
    assert Config.from_env({"FAULTLINE_MAINTENANCE_INTERVAL_MS": "60000"}).maintenance_interval == timedelta(minutes=1)
    for off in ("off", "OFF", "0"):
        assert Config.from_env({"FAULTLINE_MAINTENANCE_INTERVAL_MS": off}).maintenance_interval is None


def test_handoff_switch() -> None:
    assert Config.from_env({}).handoff is True
    assert Config.from_env({"FAULTLINE_HANDOFF": "off"}).handoff is False
    assert Config.from_env({"FAULTLINE_HANDOFF": "ON"}).handoff is True


@pytest.mark.parametrize("env,name", [
    ({"FAULTLINE_LEASE_TTL_MS": "abc"}, "FAULTLINE_LEASE_TTL_MS"),
    ({"FAULTLINE_LEASE_TTL_MS": "5"}, "FAULTLINE_LEASE_TTL_MS"),
    ({"FAULTLINE_BACKOFF_JITTER": "1.5"}, "FAULTLINE_BACKOFF_JITTER"),
    ({"FAULTLINE_BACKOFF_BASE_MS": "900", "FAULTLINE_BACKOFF_MAX_MS": "100"}, "FAULTLINE_BACKOFF_MAX_MS"),
    ({"FAULTLINE_GRPC_ADDR": "no-port"}, "FAULTLINE_GRPC_ADDR"),
    ({"FAULTLINE_GRPC_ADDR": "127.0.0.1:99999"}, "FAULTLINE_GRPC_ADDR"),
    ({"FAULTLINE_MAX_PAYLOAD_BYTES": "-1"}, "FAULTLINE_MAX_PAYLOAD_BYTES"),
    ({"FAULTLINE_MAINTENANCE_INTERVAL_MS": "soon"}, "FAULTLINE_MAINTENANCE_INTERVAL_MS"),
    ({"FAULTLINE_MAINTENANCE_INTERVAL_MS": "5"}, "FAULTLINE_MAINTENANCE_INTERVAL_MS"),
    ({"FAULTLINE_MAINTENANCE_INTERVAL_MS": "-1000"}, "FAULTLINE_MAINTENANCE_INTERVAL_MS"),
    ({"FAULTLINE_HANDOFF": "maybe"}, "FAULTLINE_HANDOFF"),
])
def test_bad_values_name_the_variable(env: dict[str, str], name: str) -> None:
    with pytest.raises(ConfigError) as err:
        Config.from_env(env)
    assert name in str(err.value)
