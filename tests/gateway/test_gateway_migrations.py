"""The gateway's API-key table at start: `store.migrate_at_start: false` refuses an unmigrated database
and says what to run; after `garrison db upgrade` the same gateway (two workers) starts."""

from __future__ import annotations

from typing import Any

import pytest
from gateway_harness import RecordingUpstream, garrison_cli, http_call


def test_migrate_at_start_false_waits_for_db_upgrade(
    gateway_factory: Any, upstream: RecordingUpstream
) -> None:
    overrides = {
        "gateway": {"workers": 2},
        "store": {"migrate_at_start": False, "connect_timeout": "0s"},
        "routes": [
            {"match": {"path": "/keyed", "prefix": True}, "service": "rec", "auth": {"require": "api_key"}},
        ],
    }
    with pytest.raises(RuntimeError, match=r"gateway schema is not created") as caught:
        gateway_factory(upstream, overrides)
    config = str(gateway_factory.started[-1].config_path)
    assert f"run `garrison db upgrade -c {config}`" in str(caught.value)

    result = garrison_cli("db", "upgrade", "-c", config)
    assert result.returncode == 0, result.stderr
    assert garrison_cli("db", "status", "-c", config, "--check").returncode == 0

    gateway = gateway_factory.started[-1].start()  # the same config and state directory, migrated
    assert http_call(gateway.port, "/keyed/x", {})[0] == 401  # up, and asking for a key
