"""The gateway's life under load: reload, circuit breaking, retries, drain, workers.

Real gateway processes on port 0, real upstream servers on loopback, real sockets throughout.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from waiting import wait_until

from garrison.core.ready import read_ready

GARRISON = [sys.executable, "-m", "garrison"]


class Upstream:
    """A tiny keep-alive HTTP/1.1 server in a thread that answers with its own name."""

    def __init__(self, name: str, port: int = 0, delay: float = 0.0) -> None:
        self.name = name
        self.delay = delay
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.requests = 0
        self.running = True
        self.clients: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while self.running:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            self.clients.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        buffer = b""
        try:
            while self.running:
                while b"\r\n\r\n" not in buffer:
                    data = client.recv(65536)
                    if not data:
                        return
                    buffer += data
                _, buffer = buffer.split(b"\r\n\r\n", 1)
                self.requests += 1
                if self.delay:
                    time.sleep(self.delay)
                body = json.dumps({"upstream": self.name}).encode()
                client.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                    % (len(body), body)
                )
        except OSError:
            return
        finally:
            client.close()

    def stop(self) -> None:
        self.running = False
        self.sock.close()
        for client in self.clients:
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)
            client.close()
        self.thread.join(timeout=2)


def write_config(path: Path, state: Path, routes: str, services: str, extra_gateway: str = "") -> None:
    path.write_text(
        f"""
state_dir: {state}
gateway:
  listen: 127.0.0.1:0
  tls: {{insecure_disable: true}}
  admin: {{listen: 127.0.0.1:0}}
  access_log: {{enabled: false}}
  drain_timeout: 5s
{extra_gateway}
services:
{services}
routes:
{routes}
"""
    )


def health_changes(gateway: Gateway, healthy: bool) -> list[dict[str, object]]:
    """The gateway's ``gateway.health.changed`` log lines so far that say ``healthy``."""
    found = []
    for line in gateway.log_path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if record.get("event") == "gateway.health.changed" and record.get("healthy") is healthy:
                found.append(record)
    return found


class Gateway:
    def __init__(self, config: Path, tmp: Path) -> None:
        self.ready = tmp / "ready.json"
        self.stderr = open(tmp / "gateway.err", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*GARRISON, "gateway", "-c", str(config), "--ready-file", str(self.ready)], stderr=self.stderr
        )
        deadline = time.monotonic() + 20
        while (ready := read_ready(self.ready)) is None:
            assert self.proc.poll() is None, (tmp / "gateway.err").read_text()
            assert time.monotonic() < deadline, "gateway did not start"
            time.sleep(0.05)
        listeners = ready.listeners
        self.port = int(listeners["gateway"].rsplit(":", 1)[1])
        self.admin_port = int(listeners["admin"].rsplit(":", 1)[1])
        self.log_path = tmp / "gateway.err"

    def get(
        self, path: str, conn: http.client.HTTPConnection | None = None
    ) -> tuple[int, bytes, dict[str, str]]:
        own = conn is None
        conn = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read(), {k.lower(): v for k, v in response.getheaders()}
        finally:
            if own:
                conn.close()

    def metrics(self) -> str:
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=5)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        return text

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()
        return self.proc.returncode


@pytest.fixture
def upstreams() -> Iterator[list[Upstream]]:
    started: list[Upstream] = []
    yield started
    for upstream in started:
        upstream.stop()


def service(name: str, ports: list[int], extra: str = "") -> str:
    targets = ", ".join(f'"http://127.0.0.1:{p}"' for p in ports)
    return f"  {name}:\n    targets: [{targets}]\n    connect_timeout: 0.5s\n    read_timeout: 3s\n{extra}"


def circuit_state(metrics: str) -> str:
    lines = [line for line in metrics.splitlines() if line.startswith("garrison_gateway_circuit_state{")]
    current = [line.split('state="', 1)[1].split('"', 1)[0] for line in lines if line.endswith(" 1.0")]
    assert len(current) == 1, lines
    return current[0]


ROUTE_ALL = "  - {match: {path: /, prefix: true}, service: %s, auth: {require: none}}\n"


def test_reload_under_load_drops_nothing(tmp_path: Path, upstreams: list[Upstream]) -> None:
    a, b = Upstream("a"), Upstream("b")
    upstreams += [a, b]
    config = tmp_path / "garrison.yaml"
    services = service("a", [a.port]) + service("b", [b.port])
    write_config(config, tmp_path / "state", ROUTE_ALL % "a", services)
    gateway = Gateway(config, tmp_path)
    idle = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=5)
    assert gateway.get("/", idle)[0] == 200  # a keep-alive connection that sits idle through reloads
    failures: list[str] = []
    seen: set[str] = set()
    stop = threading.Event()

    def load() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=5)
        for _ in range(3000):  # bounded: stops by itself even if the event is never set
            if stop.is_set():
                break
            try:
                status, body, _ = gateway.get("/x", conn)
            except (OSError, http.client.HTTPException) as exc:
                failures.append(repr(exc))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=5)
                continue
            if status != 200:
                failures.append(f"status {status}")
            else:
                seen.add(json.loads(body)["upstream"])
        conn.close()

    workers = [threading.Thread(target=load) for _ in range(4)]
    try:
        for worker in workers:
            worker.start()
        wait_until(lambda: "a" in seen, what="the load to reach upstream a")

        write_config(config, tmp_path / "state", ROUTE_ALL % "b", services)
        gateway.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "b" in seen, what="the load to reach upstream b after the SIGHUP reload")
        bad_route = "routes:\n  - {match: {path: /bad}, service: nope, auth: {require: none}}"
        config.write_text(config.read_text().replace("routes:", bad_route))
        gateway.proc.send_signal(signal.SIGHUP)  # refused: the old config keeps serving
        wait_until(
            lambda: '"gateway.reload.failed"' in gateway.log_path.read_text(), what="the refused reload"
        )
        write_config(config, tmp_path / "state", ROUTE_ALL % "a", services)
        # The file watcher notices the change without a signal: new requests go to upstream a again.
        routed_to_a = lambda: json.loads(gateway.get("/")[1])["upstream"] == "a"  # noqa: E731
        wait_until(routed_to_a, interval=0.1, what="the file watcher's reload back to upstream a")
    finally:
        stop.set()
        for worker in workers:
            worker.join(15)
    assert failures == []
    assert seen == {"a", "b"}
    status, body, _ = gateway.get("/", idle)
    assert status == 200 and json.loads(body)["upstream"] == "a"
    idle.close()
    metrics = gateway.metrics()
    assert 'garrison_gateway_config_reloads_total{result="failure"} 1.0' in metrics
    assert gateway.stop() == 0
    log = gateway.log_path.read_text()
    assert "gateway.reload.failed" in log and "routes[0].service" in log


def test_circuit_opens_when_upstream_dies_and_closes_when_it_returns(
    tmp_path: Path, upstreams: list[Upstream]
) -> None:
    up = Upstream("u")
    upstreams.append(up)
    port = up.port
    breaker = "    retries: {attempts: 0}\n    circuit_breaker: {consecutive_failures: 3, open_for: 1s}\n"
    config = tmp_path / "garrison.yaml"
    write_config(config, tmp_path / "state", ROUTE_ALL % "u", service("u", [port], breaker))
    gateway = Gateway(config, tmp_path)
    try:
        assert gateway.get("/")[0] == 200
        up.stop()
        statuses = [gateway.get("/")[0] for _ in range(3)]
        assert statuses == [502, 502, 502]
        status, body, headers = gateway.get("/")
        assert status == 503 and json.loads(body)["error"] == "service_unavailable"
        assert 1 <= int(headers["retry-after"]) <= 1
        assert circuit_state(gateway.metrics()) == "open"
        upstreams.append(Upstream("u-again", port=port))
        # Real elapsed time is the behaviour under test: the circuit stays open for 1 s (in the gateway
        # process, whose clock a test cannot move), and the next request after that is the probe.
        time.sleep(1.1)
        status, body, _ = gateway.get("/")  # the half-open probe
        assert status == 200 and json.loads(body)["upstream"] == "u-again"
        assert [gateway.get("/")[0] for _ in range(5)] == [200] * 5
        metrics = gateway.metrics()
        assert circuit_state(metrics) == "closed"
        assert "garrison_gateway_upstream_errors_total" in metrics
    finally:
        gateway.stop()


def test_idempotent_requests_retry_on_another_target(tmp_path: Path, upstreams: list[Upstream]) -> None:
    live = Upstream("live")
    dead = Upstream("dead")
    upstreams += [live, dead]
    dead_port = dead.port
    dead.stop()
    config = tmp_path / "garrison.yaml"
    extra = (
        "    retries: {attempts: 1, min_per_second: 100}\n    circuit_breaker: {consecutive_failures: 1000}\n"
    )
    write_config(config, tmp_path / "state", ROUTE_ALL % "s", service("s", [dead_port, live.port], extra))
    gateway = Gateway(config, tmp_path)
    try:
        assert [gateway.get("/")[0] for _ in range(10)] == [200] * 10
        posts = []
        for _ in range(6):
            conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=5)
            conn.request("POST", "/", body=b"x")
            response = conn.getresponse()
            response.read()
            posts.append(response.status)
            conn.close()
        assert 502 in posts and 200 in posts  # POST is never retried: the dead target's share fails
    finally:
        gateway.stop()


def test_sigterm_drains_in_flight_requests(tmp_path: Path, upstreams: list[Upstream]) -> None:
    slow = Upstream("slow", delay=1.0)
    upstreams.append(slow)
    config = tmp_path / "garrison.yaml"
    write_config(config, tmp_path / "state", ROUTE_ALL % "s", service("s", [slow.port]))
    gateway = Gateway(config, tmp_path)
    result: list[int] = []
    request = threading.Thread(target=lambda: result.append(gateway.get("/")[0]))
    request.start()
    wait_until(lambda: slow.requests >= 1, what="the request to reach the (slow) upstream")  # in flight
    gateway.proc.send_signal(signal.SIGTERM)
    request.join(10)
    assert result == [200]
    assert gateway.proc.wait(10) == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", gateway.port), timeout=1).close()
    gateway.stop()


def test_workers_share_the_port_and_report_metrics(tmp_path: Path, upstreams: list[Upstream]) -> None:
    up = Upstream("u")
    upstreams.append(up)
    config = tmp_path / "garrison.yaml"
    write_config(config, tmp_path / "state", ROUTE_ALL % "u", service("u", [up.port]), "  workers: 2")
    gateway = Gateway(config, tmp_path)
    try:
        assert [gateway.get("/")[0] for _ in range(40)] == [200] * 40
        metrics = gateway.metrics()
        served = [line for line in metrics.splitlines() if line.startswith("garrison_gateway_requests_total")]
        assert sum(float(line.rsplit(" ", 1)[1]) for line in served) == 40
        assert all('worker="' in line for line in served)
    finally:
        assert gateway.stop() == 0


def test_active_health_checks_take_a_dead_target_out_and_bring_it_back(
    tmp_path: Path, upstreams: list[Upstream]
) -> None:
    a, b = Upstream("a"), Upstream("b")
    upstreams += [a, b]
    port_a = a.port
    checks = (
        "    retries: {attempts: 0}\n"
        "    circuit_breaker: {consecutive_failures: 1000}\n"
        "    health_check: {path: /health, interval: 0.1s, timeout: 0.5s, "
        "healthy_threshold: 2, unhealthy_threshold: 2}\n"
    )
    config = tmp_path / "garrison.yaml"
    write_config(config, tmp_path / "state", ROUTE_ALL % "s", service("s", [port_a, b.port], checks))
    gateway = Gateway(config, tmp_path)
    try:
        assert {json.loads(gateway.get("/")[1])["upstream"] for _ in range(6)} == {"a", "b"}
        a.stop()
        # Two failed probes at 0.1 s intervals mark it down.
        wait_until(lambda: health_changes(gateway, healthy=False), what="target a to be marked unhealthy")
        answers = [gateway.get("/") for _ in range(10)]
        assert [status for status, _, _ in answers] == [200] * 10  # no retries: only health checks
        assert {json.loads(body)["upstream"] for _, body, _ in answers} == {"b"}
        upstreams.append(Upstream("a-again", port=port_a))
        wait_until(lambda: health_changes(gateway, healthy=True), what="target a to be marked healthy again")
        assert "a-again" in {json.loads(gateway.get("/")[1])["upstream"] for _ in range(6)}
        assert "gateway.health.changed" in gateway.log_path.read_text()
    finally:
        gateway.stop()


def test_a_killed_worker_is_restarted_while_the_other_serves(
    tmp_path: Path, upstreams: list[Upstream]
) -> None:
    up = Upstream("u")
    upstreams.append(up)
    config = tmp_path / "garrison.yaml"
    write_config(config, tmp_path / "state", ROUTE_ALL % "u", service("u", [up.port]), "  workers: 2")
    gateway = Gateway(config, tmp_path)

    def workers() -> list[int]:
        pid = gateway.proc.pid
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]

    def wait_for(condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 30
        while not condition():
            assert gateway.proc.poll() is None, gateway.log_path.read_text()
            assert time.monotonic() < deadline, (
                f"timed out waiting for {what}:\n{gateway.log_path.read_text()}"
            )
            time.sleep(0.05)

    def admin_ready() -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", gateway.admin_port, timeout=5)
        try:
            conn.request("GET", "/ready")
            return conn.getresponse().status == 200
        finally:
            conn.close()

    try:
        before = workers()
        assert len(before) == 2
        os.kill(before[0], signal.SIGKILL)
        wait_for(lambda: "gateway.worker.died" in gateway.log_path.read_text(), "the supervisor to see it")
        assert [gateway.get("/")[0] for _ in range(10)] == [200] * 10  # the survivor has the port
        wait_for(lambda: len(workers()) == 2 and before[0] not in workers() and admin_ready(), "a new worker")
        died = [
            json.loads(line)
            for line in gateway.log_path.read_text().splitlines()
            if '"event":"gateway.worker.died"' in line
        ]
        assert len(died) == 1 and died[0]["signal"] == "SIGKILL" and died[0]["worker"] == 0
        assert died[0]["restart_in"] == 1.0 and died[0]["restarts"] == 1
        assert before[1] in workers()  # the other worker was not touched
        assert [gateway.get("/")[0] for _ in range(10)] == [200] * 10
    finally:
        assert gateway.stop() == 0
