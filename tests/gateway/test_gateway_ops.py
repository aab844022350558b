"""Operating the gateway: access log, metrics, health endpoints, upstream failures, shutdown."""

from __future__ import annotations

import json
import re
import signal
import threading
import time
from collections.abc import Iterator

import pytest
from gateway_harness import (
    GatewayProcess,
    RawClient,
    RecordingUpstream,
    Reply,
    Response,
    get,
    one_request,
    wait_until,
)
from ports import refused_port
from prometheus_client.parser import text_string_to_metric_families

TIME_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
FIELDS = {
    "time",
    "request_id",
    "trace_id",
    "client_ip",
    "method",
    "path",
    "route",
    "status",
    "bytes_in",
    "bytes_out",
    "upstream_ms",
    "total_ms",
}
SLOW_TIMEOUT = 0.3


def start_ops_gateway(factory, upstream: RecordingUpstream, down_port: int) -> GatewayProcess:
    """Three services: ``rec`` and ``slow`` (short read timeout) on the upstream, ``down`` on a dead port."""
    target = [f"http://127.0.0.1:{upstream.port}"]
    overrides = {
        "services": {
            "rec": {"targets": target, "read_timeout": "1s", "connect_timeout": "0.5s"},
            "slow": {"targets": target, "read_timeout": f"{SLOW_TIMEOUT}s", "connect_timeout": "0.5s"},
            "down": {"targets": [f"http://127.0.0.1:{down_port}"], "connect_timeout": "0.5s"},
        },
        "routes": [
            {
                "match": {"path": "/", "prefix": True},
                "service": "rec",
                "auth": {"require": "none"},
                "name": "catchall",
            },
            {
                "match": {"path": "/slow", "prefix": True},
                "service": "slow",
                "auth": {"require": "none"},
                "name": "slow",
            },
            {
                "match": {"path": "/down", "prefix": True},
                "service": "down",
                "auth": {"require": "none"},
                "name": "down",
            },
        ],
    }
    return factory(upstream, overrides)


@pytest.fixture(scope="module")
def down_port() -> Iterator[int]:
    """The ``down`` service's port: it refuses connections for the whole module."""
    with refused_port() as port:
        yield port


@pytest.fixture(scope="module")
def gw(down_port: int, module_gateway_factory, module_upstream: RecordingUpstream) -> GatewayProcess:
    # down_port first: set up first, it is torn down last, after the gateway has stopped
    return start_ops_gateway(module_gateway_factory, module_upstream, down_port)


@pytest.fixture
def upstream(module_upstream: RecordingUpstream) -> Iterator[RecordingUpstream]:
    module_upstream.settle()  # let a previous test's late arrivals land before forgetting them
    module_upstream.reset()
    yield module_upstream
    module_upstream.reset()


def admin_get(gw: GatewayProcess, path: str, method: str = "GET") -> Response:
    with RawClient(gw.admin_port) as client:
        client.send(get(path, host=f"127.0.0.1:{gw.admin_port}", method=method))
        response = client.read_head() if method == "HEAD" else client.read_response()
        assert client.closed_by_peer(1.0)
    return response


# -- access log ------------------------------------------------------------------------------------------
def test_access_log_line_fields(gw: GatewayProcess, upstream: RecordingUpstream) -> None:
    upstream.reply = Reply(body=b"x" * 123, delay=0.05)
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    data = (
        b"POST /orders/1?x=2 HTTP/1.1\r\nHost: test.local\r\nX-Request-Id: ops-fields\r\n"
        b"traceparent: 00-%s-00f067aa0ba902b7-01\r\nContent-Length: 10\r\n\r\n0123456789" % trace.encode()
    )
    response = one_request(gw.port, data)
    assert response.status == 200
    line = gw.log_for("ops-fields")
    assert set(line) >= FIELDS, FIELDS - set(line)
    assert TIME_RE.fullmatch(line["time"])
    assert line["trace_id"] == trace
    assert line["client_ip"] == "127.0.0.1"
    assert (line["method"], line["path"], line["route"], line["status"]) == (
        "POST",
        "/orders/1",
        "catchall",
        200,
    )
    assert (line["bytes_in"], line["bytes_out"]) == (10, 123)
    assert isinstance(line["upstream_ms"], float) and isinstance(line["total_ms"], float)
    assert 50 <= line["upstream_ms"] <= line["total_ms"] < 5000


def test_access_log_is_one_json_object_per_line(gw: GatewayProcess, upstream: RecordingUpstream) -> None:
    with RawClient(gw.port) as client:
        for i in range(20):
            client.send(get(f"/many/{i}", headers={"X-Request-Id": f"many-{i}"}))
            assert client.read_response().status == 200
    gw.log_for("many-19")
    text = gw.access_log_path.read_text()
    assert text.endswith("\n")
    for raw_line in text.splitlines():
        line = json.loads(raw_line)
        assert isinstance(line, dict) and set(line) >= FIELDS
    ids = [
        line["request_id"] for line in gw.access_log_lines() if (line["request_id"] or "").startswith("many-")
    ]
    assert ids == [f"many-{i}" for i in range(20)]


def test_stderr_is_json_lines(gw: GatewayProcess) -> None:
    lines = [json.loads(line) for line in gw.stderr_text().splitlines()]
    events = {line["event"] for line in lines}
    assert "gateway.listening" in events
    assert all({"time", "level", "component", "event"} <= set(line) for line in lines)


# -- admin listener --------------------------------------------------------------------------------------
def test_live_and_ready(gw: GatewayProcess) -> None:
    assert admin_get(gw, "/live").status == 200
    assert admin_get(gw, "/ready").status == 200
    assert admin_get(gw, "/ready", method="HEAD").status == 200
    assert admin_get(gw, "/nothing").status == 404
    assert admin_get(gw, "/metrics", method="DELETE").status == 401  # a change: the token comes first


def scrape(gw: GatewayProcess) -> tuple[str, dict[str, list[tuple[str, dict[str, str], float]]]]:
    response = admin_get(gw, "/metrics")
    assert response.status == 200
    content_type = response.header("content-type")
    assert content_type is not None and content_type.startswith(b"text/plain; version=0.0.4")
    text = response.body.decode()
    families = {
        family.name: [(s.name, s.labels, s.value) for s in family.samples]
        for family in text_string_to_metric_families(text)
    }
    return text, families


def test_metrics(gw: GatewayProcess, upstream: RecordingUpstream) -> None:
    assert one_request(gw.port, get("/metered")).status == 200
    with RawClient(gw.port) as held_open:
        held_open.send(get("/held"))
        assert held_open.read_response().status == 200
        text, families = scrape(gw)
    assert re.search(
        r'^garrison_gateway_requests_total\{route="catchall",service="rec",status="200"\} \d', text, re.M
    )
    requests = families["garrison_gateway_requests"]
    assert any(
        name == "garrison_gateway_requests_total"
        and labels == {"route": "catchall", "service": "rec", "status": "200"}
        and value >= 2
        for name, labels, value in requests
    ), requests
    histogram = [
        (name, labels, value)
        for name, labels, value in families["garrison_gateway_request_duration_seconds"]
        if labels.get("route") == "catchall"
    ]
    buckets = sorted(
        (float(labels["le"]), value) for name, labels, value in histogram if name.endswith("_bucket")
    )
    assert len(buckets) > 5 and buckets[-1][0] == float("inf")
    assert [v for _, v in buckets] == sorted(v for _, v in buckets), "buckets must be cumulative"
    (count,) = [value for name, _, value in histogram if name.endswith("_count")]
    (total,) = [value for name, _, value in histogram if name.endswith("_sum")]
    assert count == buckets[-1][1] >= 2 and total > 0
    (open_connections,) = families["garrison_gateway_open_connections"]
    assert open_connections[2] >= 1
    circuit = families["garrison_gateway_circuit_state"]
    states = {(labels["service"], labels["state"]): value for _, labels, value in circuit}
    assert states[("rec", "closed")] == 1.0
    assert states[("rec", "open")] == 0.0


def test_open_connections_goes_back_down(gw: GatewayProcess) -> None:
    clients = [RawClient(gw.port) for _ in range(5)]
    try:
        for client in clients:
            client.send(get("/conn"))
            assert client.read_response().status == 200
        _, families = scrape(gw)
        assert families["garrison_gateway_open_connections"][0][2] >= 5
    finally:
        for client in clients:
            client.close()

    def back_down() -> bool:
        return scrape(gw)[1]["garrison_gateway_open_connections"][0][2] == 0

    assert wait_until(back_down, 3.0)


# -- upstream failures -----------------------------------------------------------------------------------
def assert_gateway_error(response: Response, status: int, code: str) -> None:
    assert response.status == status
    assert response.header("content-type") == b"application/json"
    assert response.header("content-security-policy") is not None
    body = response.json()
    assert body["error"] == code
    assert body["request_id"] == response.header("x-request-id").decode()  # type: ignore[union-attr]
    assert "127.0.0.1" not in response.body.decode()  # never names an internal host


def test_upstream_down_is_502(gw: GatewayProcess) -> None:
    response = one_request(gw.port, get("/down/x", headers={"X-Request-Id": "down-1"}))
    assert_gateway_error(response, 502, "bad_gateway")
    line = gw.log_for("down-1")
    assert (line["status"], line["route"]) == (502, "down")


def test_upstream_reset_is_502(gw: GatewayProcess, upstream: RecordingUpstream) -> None:
    upstream.reply = Reply(reset=True)
    response = one_request(gw.port, b"POST /reset HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi")
    assert_gateway_error(response, 502, "bad_gateway")
    assert len(upstream.settle()) == 1  # POST is never retried


def test_idempotent_request_is_retried_once(gw: GatewayProcess, upstream: RecordingUpstream) -> None:
    upstream.reply = Reply(reset=True)
    response = one_request(gw.port, get("/reset", headers={"X-Request-Id": "retry-1"}))
    assert_gateway_error(response, 502, "bad_gateway")
    assert len(upstream.settle()) == 2
    assert gw.log_for("retry-1")["attempts"] == 2


def test_slow_upstream_is_504(gw: GatewayProcess, upstream: RecordingUpstream) -> None:
    upstream.reply = Reply(delay=SLOW_TIMEOUT + 1.0)
    start = time.monotonic()
    response = one_request(gw.port, get("/slow/x", headers={"X-Request-Id": "slow-1"}))
    elapsed = time.monotonic() - start
    assert_gateway_error(response, 504, "gateway_timeout")
    assert SLOW_TIMEOUT - 0.05 <= elapsed <= SLOW_TIMEOUT + 0.5
    assert len(upstream.settle()) == 1  # a timeout is never retried
    assert gw.log_for("slow-1")["status"] == 504


def test_response_cut_short_closes_the_client_connection(
    gw: GatewayProcess, upstream: RecordingUpstream
) -> None:
    upstream.handler = lambda request: Reply(
        body=b"x" * 10, headers=((b"content-length", b"100"),), framing="close"
    )
    with RawClient(gw.port) as client:
        client.send(get("/short"))
        data = client.read_until_closed()
    assert data.startswith(b"HTTP/1.1 200 ")
    assert len(data.partition(b"\r\n\r\n")[2]) < 100  # the client can tell the body is incomplete


def test_circuit_opens_after_consecutive_failures(
    gateway_factory, module_upstream: RecordingUpstream, down_port: int
) -> None:
    gw = start_ops_gateway(gateway_factory, module_upstream, down_port)
    statuses = []
    for _ in range(8):
        response = one_request(gw.port, get("/down/x"))
        statuses.append(response.status)
        if response.status == 503:
            assert_gateway_error(response, 503, "service_unavailable")
            retry_after = response.header("retry-after")
            assert retry_after is not None and int(retry_after) >= 1
            break
    assert statuses[0] == 502 and statuses[-1] == 503, statuses
    _, families = scrape(gw)
    states = {
        (labels["service"], labels["state"]): value
        for _, labels, value in families["garrison_gateway_circuit_state"]
    }
    assert states[("down", "open")] == 1.0
    errors = families["garrison_gateway_upstream_errors"]
    assert any(labels["service"] == "down" and labels["reason"] == "connect_error" for _, labels, _ in errors)


def test_refused_request_is_logged(gw: GatewayProcess) -> None:
    before = len(gw.access_log_lines())
    response = one_request(gw.port, get("/a/..%2fadmin"))
    assert response.status == 400
    line = gw.wait_access_log(lambda line: line.get("error") == "bad_request" and line["status"] == 400)
    assert line["path"] is None and line["route"] is None  # nothing of the refused target is echoed
    assert line["client_ip"] == "127.0.0.1"
    assert len(gw.access_log_lines()) > before
    _, families = scrape(gw)
    assert any(
        labels.get("route") == "(refused)" and labels.get("status") == "400"
        for _, labels, _ in families["garrison_gateway_requests"]
    )


def test_idle_keep_alive_connection_is_closed(gateway_factory, module_upstream: RecordingUpstream) -> None:
    gw = gateway_factory(module_upstream, {"gateway": {"limits": {"keepalive_timeout": "0.3s"}}})
    with RawClient(gw.port) as client:
        client.send(get("/idle"))
        assert client.read_response().status == 200
        start = time.monotonic()
        assert client.closed_by_peer(1.5)
        assert 0.25 <= time.monotonic() - start <= 1.0
        assert client.buffer == bytearray(), "an idle close sends nothing"


def test_connections_over_max_connections_get_503(
    gateway_factory, module_upstream: RecordingUpstream
) -> None:
    gw = gateway_factory(module_upstream, {"gateway": {"limits": {"max_connections": 2}}})
    first, second = RawClient(gw.port), RawClient(gw.port)
    try:
        for client in (first, second):
            client.send(get("/hold"))
            assert client.read_response().status == 200
        with RawClient(gw.port) as third:
            response = third.read_response()
            assert_no_request_id_error(response, 503, "too_many_connections")
            assert third.closed_by_peer(1.0)
    finally:
        first.close()
        second.close()

    def accepted_again() -> bool:
        with RawClient(gw.port) as client:
            client.send(get("/after"))
            return client.read_response().status == 200

    assert wait_until(accepted_again, 3.0)


def assert_no_request_id_error(response: Response, status: int, code: str) -> None:
    assert response.status == status
    assert response.header("content-type") == b"application/json"
    assert response.json()["error"] == code


# -- shutdown --------------------------------------------------------------------------------------------
def test_sigterm_lets_in_flight_requests_finish(gateway_factory, upstream: RecordingUpstream) -> None:
    gw = gateway_factory(upstream)
    upstream.reply = Reply(delay=0.4)
    results: list[Response] = []
    client = RawClient(gw.port)
    try:
        client.send(get("/in-flight"))
        upstream.wait_for_requests(1)
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGTERM)
        reader = threading.Thread(target=lambda: results.append(client.read_response()))
        reader.start()
        reader.join(5)
    finally:
        client.close()
    assert [r.status for r in results] == [200]
    assert gw.proc.wait(5) == 0
    assert "gateway.stopped" in gw.stderr_text()


def test_workers_start_with_a_deep_state_dir(
    gateway_factory, module_upstream: RecordingUpstream, tmp_path
) -> None:
    state_dir = tmp_path / ("deep-" + "d" * 40) / ("state-" + "s" * 40)
    gw = gateway_factory(module_upstream, {"state_dir": str(state_dir), "gateway": {"workers": 2}})
    assert one_request(gw.port, get("/workers")).status == 200
