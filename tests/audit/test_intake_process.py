"""The intake of a real `garrison audit serve` over real TLS: the emit token and workload certificates as
credentials, the contract's answers (200 with duplicates and rejected lines, 400, 401, 413, 431),
keep-alive, metrics that promtool accepts, and the log and index holding what was acknowledged."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from audit_harness import TD, AuditProcess, audit_config, mesh_ca, mint, ndjson, sample
from waiting import wait_until

from garrison.pki.authority import Authority, pem

pytestmark = pytest.mark.process


class Collector:
    def __init__(self, process: AuditProcess, issuing: Authority, directory: Path) -> None:
        self.process, self.issuing, self.directory = process, issuing, directory


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collector]:
    directory = tmp_path_factory.mktemp("collector")
    issuing = mesh_ca()
    ca_dir = directory / "state" / "ca"
    ca_dir.mkdir(parents=True, mode=0o700)
    (ca_dir / "bundle.pem").write_bytes(pem(issuing.parents[-1]))
    process = AuditProcess(directory, audit_config(directory, checkpoint_interval=0.2)).start()
    try:
        yield Collector(process, issuing, directory)
    finally:
        assert process.stop() == 0, process.stderr()


def test_a_batch_with_the_emit_token_is_logged_once_and_searchable(collector: Collector) -> None:
    process = collector.process
    events = [sample(n, trace_id="trace-token") for n in range(3)]
    answer = process.post(ndjson(events) + b'{"v":1}\nnot json\n')
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["accepted"] == 3 and body["duplicates"] == 0
    assert [r["line"] for r in body["rejected"]] == [3, 4]
    assert "not JSON" in body["rejected"][1]["error"]

    again = process.post(ndjson([*events[1:], sample(9, trace_id="trace-token")]))
    assert again.json() == {"accepted": 1, "duplicates": 2, "rejected": []}

    found = wait_until(
        lambda: (
            len(process.search("--trace-id", "trace-token")) == 4
            and process.search("--trace-id", "trace-token")
        )
    )
    assert [event["details"]["n"] for event in found] == [0, 1, 2, 9]  # oldest first along the trace
    assert {event["origin"] for event in found} == {"token"}  # the collector's word, not the emitter's


def test_the_emitter_cannot_choose_its_origin(collector: Collector) -> None:
    process = collector.process
    forged = sample(1, origin=f"spiffe://{TD}/gateway", trace_id="trace-forged")
    assert process.post(ndjson([forged])).json()["accepted"] == 1
    [found] = wait_until(lambda: process.search("--trace-id", "trace-forged"))
    assert found["origin"] == "token"


def test_a_workload_certificate_is_a_credential_and_names_the_origin(collector: Collector) -> None:
    process = collector.process
    files = mint(collector.directory, collector.issuing, f"spiffe://{TD}/svc/orders")
    with process.client(cert=files) as client:  # no token: the certificate alone
        answer = client.post(
            process.url,
            content=ndjson([sample(1, trace_id="trace-cert")]),
            headers={"content-type": "application/x-ndjson"},
        )
    assert answer.status_code == 200, answer.text
    [found] = wait_until(lambda: process.search("--trace-id", "trace-cert"))
    assert found["origin"] == f"spiffe://{TD}/svc/orders"


def test_a_certificate_of_another_ca_fails_the_handshake(collector: Collector) -> None:
    files = mint(collector.directory, mesh_ca(), f"spiffe://{TD}/svc/orders")
    with pytest.raises(httpx.HTTPError), collector.process.client(cert=files) as client:
        client.post(
            collector.process.url,
            content=ndjson([sample()]),
            headers={"content-type": "application/x-ndjson"},
        )


def test_refusals(collector: Collector) -> None:
    process = collector.process
    batch = ndjson([sample()])
    assert process.post(batch, token=None).status_code == 401
    assert process.post(batch, token="not-the-token").status_code == 401
    assert process.post(batch, **{"content-type": "text/plain"}).status_code == 400
    too_many = b'{"v":1}\n' * 10_001
    assert process.post(too_many).status_code == 413
    big = process.post(b"x" * (4 * 1024 * 1024 + 1))
    assert big.status_code == 413 and "4194304" in big.json()["error"]
    assert process.post(batch, **{"x-padding": "p" * 17_000}).status_code == 431
    with process.client() as client:
        assert client.get(process.url).status_code == 405
        assert client.post(process.url.replace("/v1/events", "/v1/other"), content=batch).status_code == 404
    metrics = process.admin("/metrics").text
    assert 'garrison_audit_intake_rejected_total{reason="unauthenticated"} 2.0' in metrics
    assert 'garrison_audit_intake_rejected_total{reason="too_large"} 3.0' in metrics


def test_chunked_bodies_are_bounded_as_they_arrive(collector: Collector) -> None:
    process = collector.process

    def chunks() -> Iterator[bytes]:
        for _ in range(70):
            yield b"y" * 65536

    with process.client() as client:
        answer = client.post(
            process.url,
            content=chunks(),
            headers={"content-type": "application/x-ndjson", "authorization": f"Bearer {process.token}"},
        )
    assert answer.status_code == 413


def test_keep_alive_carries_many_batches_on_one_connection(collector: Collector) -> None:
    process = collector.process
    context = process.context()
    host, port = process.listeners["audit"].rsplit(":", 1)
    with (
        socket.create_connection((host, int(port))) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        reader = tls.makefile("rb")
        for number in range(3):
            body = ndjson([sample(number)])
            tls.sendall(
                b"POST /v1/events HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-ndjson\r\n"
                b"authorization: Bearer %s\r\ncontent-length: %d\r\n\r\n%s"
                % (process.token.encode(), len(body), body)
            )
            status = reader.readline()
            assert status.startswith(b"HTTP/1.1 200"), status
            length = 0
            while (line := reader.readline()) != b"\r\n":
                assert not line.lower().startswith(b"connection: close")
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            assert b'"accepted":1' in reader.read(length)


def test_metrics_pass_promtool(collector: Collector) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool is missing on CI (apt-get install -y prometheus)")
        pytest.skip("promtool is not installed (Debian: apt-get install -y prometheus)")
    exposition = collector.process.admin("/metrics").content
    assert (
        b'garrison_audit_events_total{component="identity",outcome="failure",type="auth.login"}' in exposition
    )
    assert (
        b"garrison_audit_log_entries" in exposition and b"garrison_audit_commit_seconds_bucket" in exposition
    )
    assert wait_until(
        lambda: b"garrison_audit_checkpoints_total 0.0" not in collector.process.admin("/metrics").content
    )
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=exposition, capture_output=True, timeout=60, check=False
    )
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()
    assert collector.process.admin("/ready").status_code == 200
