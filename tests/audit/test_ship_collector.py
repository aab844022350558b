"""A real `garrison audit serve` ships what its intake accepted to a Loki receiver, and reports it on
its admin /metrics (the shipping service installed as a setup hook of the collector)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from audit_harness import AuditProcess, audit_config, ndjson, sample
from gateway_harness import RecordingUpstream
from waiting import wait_until

pytestmark = pytest.mark.process  # a collector process and a receiver on a port-0 socket


def test_the_collector_ships_what_it_logged(tmp_path: Path, upstream: RecordingUpstream) -> None:
    loki = {"name": "loki", "type": "loki", "url": f"http://127.0.0.1:{upstream.port}", "batch_wait": 0}
    process = AuditProcess(tmp_path, audit_config(tmp_path, shipping={"shippers": [loki]})).start()
    try:
        events = [sample(number) for number in range(20)]
        answer = process.post(ndjson(events))
        assert answer.status_code == 200, answer.text

        def lines() -> list[str]:
            return [
                value[1]
                for request in list(upstream.requests)
                if request.body  # empty once on a loaded machine (recorded before its body?): polled again
                for stream in json.loads(request.body)["streams"]
                for value in stream["values"]
            ]

        def shipped() -> list[str]:  # the events posted (detection may add alerts of its own after them)
            return [json.loads(line)["id"] for line in lines() if json.loads(line)["component"] != "audit"]

        wait_until(lambda: len(shipped()) == 20, timeout=20, what="20 lines at the Loki receiver")
        assert sorted(shipped()) == sorted(event.id for event in events)
        wait_until(
            lambda: 'garrison_audit_ship_lag_entries{shipper="loki"} 0.0' in process.admin("/metrics").text,
            timeout=20,
            what="no shipping lag",
        )
        metrics = process.admin("/metrics").text
        assert f'garrison_audit_shipped_total{{shipper="loki"}} {len(lines())}.0' in metrics
    finally:
        assert process.stop() == 0, process.stderr()
