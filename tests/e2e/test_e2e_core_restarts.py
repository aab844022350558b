"""`garrison up` with the identity provider and a gateway of two workers, everything on port 0, under a
light load loop on an open route: kill -9 the identity provider, then a gateway worker, then the
gateway process. Each time the others keep serving (the open route answers 200 while the provider is
down, the surviving worker holds the port while its sibling restarts) and the dead one comes back by
itself: a new pid in its ready file (or among the gateway's children), serving again.

Everything waits on ready files and log lines; the load loop only paces itself."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from gateway_harness import RecordingUpstream, base_config

from garrison.core.ready import Ready, read_ready

GARRISON = [sys.executable, "-m", "garrison"]


class Up:
    def __init__(self, tmp_path: Path, upstream_port: int) -> None:
        config = base_config(tmp_path, upstream_port)
        config["gateway"]["workers"] = 2
        config["identity"] = {
            "listen": "127.0.0.1:0",
            "issuer": "http://127.0.0.1:0",
            "tls": {"insecure_disable": True},
            "admin": {"listen": "127.0.0.1:0"},
        }
        (tmp_path / "garrison.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        self.run_dir = tmp_path / "state" / "run"
        self.output = tmp_path / "up.out"
        self.sink = self.output.open("wb")
        self.proc = subprocess.Popen(
            [*GARRISON, "up", "-c", str(tmp_path / "garrison.yaml")],
            stdout=self.sink,
            stderr=subprocess.STDOUT,
        )
        self.wait_for(lambda: "Press Ctrl-C" in self.text(), "up to start")

    def text(self) -> str:
        return self.output.read_text()

    def wait_for(self, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 90  # bounds a hang; nothing is measured against it
        while not condition():
            assert self.proc.poll() is None, f"up exited while waiting for {what}:\n{self.text()}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{self.text()}"
            time.sleep(0.05)

    def ready(self, component: str) -> Ready:
        ready = read_ready(self.run_dir / f"up-{component}.ready")
        assert ready is not None, f"no ready file for {component}"
        return ready

    def events(self, event: str, **match: object) -> list[dict[str, Any]]:
        found = []
        for line in self.text().splitlines():
            if line.startswith("{") and f'"event":"{event}"' in line:
                record = json.loads(line)
                if all(record.get(key) == value for key, value in match.items()):
                    found.append(record)
        return found

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        finally:
            self.sink.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.sink.close()


def get(address: str, path: str = "/hello") -> int:
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    except OSError:
        return 0  # refused or reset: the gateway (or the worker that took the connection) is down
    finally:
        conn.close()


class Load:
    """A light, steady load on the open route, to wherever the gateway's ready file points now."""

    def __init__(self, up: Up) -> None:
        self.up = up
        self.results: list[int] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopped.is_set():
            ready = read_ready(self.up.run_dir / "up-gateway.ready")
            self.results.append(get(ready.listeners["gateway"]) if ready is not None else 0)
            self.stopped.wait(0.02)  # pacing: light load, not a synchronisation

    def mark(self) -> int:
        return len(self.results)

    def since(self, mark: int) -> list[int]:
        return self.results[mark:]

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(10)


@pytest.fixture
def up(tmp_path: Path, upstream: RecordingUpstream) -> Iterator[Up]:
    running = Up(tmp_path, upstream.port)
    try:
        yield running
    finally:
        running.kill()


def children_of(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_each_component_comes_back_by_itself_while_the_others_keep_serving(up: Up) -> None:
    load = Load(up)
    try:
        identity, gateway = up.ready("identity"), up.ready("gateway")
        assert gateway.details == {"workers": 2} and set(gateway.listeners) == {"gateway", "admin"}
        assert identity.details["issuer"] == f"http://{identity.listeners['identity']}"
        up.wait_for(lambda: load.results.count(200) >= 5, "the load loop to get through")

        # 1. The identity provider dies hard: the open route keeps answering while it is away.
        os.kill(identity.pid, signal.SIGKILL)
        up.wait_for(lambda: bool(up.events("up.component.died", name="identity")), "up to see the death")
        outage = load.mark()
        up.wait_for(lambda: bool(up.events("up.component.restarted", name="identity")), "the provider back")
        assert set(load.since(outage)) <= {200}
        assert up.ready("identity").pid != identity.pid
        assert get(up.ready("identity").listeners["identity"], "/live") == 200
        [died] = up.events("up.component.died", name="identity")
        assert died["signal"] == "SIGKILL" and died["pid"] == identity.pid and died["restart_in"] == 1.0

        # 2. One gateway worker dies hard: the other holds the port; the gateway restarts the worker.
        workers = children_of(gateway.pid)
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)
        up.wait_for(lambda: bool(up.events("gateway.worker.died")), "the gateway to see the worker die")
        survivor = load.mark()
        up.wait_for(lambda: bool(up.events("gateway.worker.restarted")), "the worker back")
        up.wait_for(lambda: load.since(survivor).count(200) >= 3, "requests through the survivor")
        [worker_died] = up.events("gateway.worker.died")
        assert worker_died["pid"] == workers[0] and worker_died["signal"] == "SIGKILL"
        now = children_of(gateway.pid)
        assert len(now) == 2 and workers[1] in now and workers[0] not in now
        assert up.ready("gateway").pid == gateway.pid  # the gateway process itself never went away
        assert up.events("up.component.died", name="gateway") == []

        # 3. The gateway process dies hard: up restarts it (and its workers); the provider is untouched.
        identity = up.ready("identity")
        os.kill(gateway.pid, signal.SIGKILL)
        up.wait_for(lambda: bool(up.events("up.component.restarted", name="gateway")), "the gateway back")
        back = up.ready("gateway")
        assert back.pid != gateway.pid and len(children_of(back.pid)) == 2
        back_mark = load.mark()
        up.wait_for(lambda: load.since(back_mark).count(200) >= 3, "the new gateway to serve the load")
        assert get(back.listeners["gateway"]) == 200
        assert up.ready("identity").pid == identity.pid
        assert len(up.events("up.component.died", name="identity")) == 1
        assert load.results.count(200) > 0
    finally:
        load.stop()
    assert up.stop() == 0
    assert "stopped." in up.text()


def test_the_identity_provider_runs_through_the_core(tmp_path: Path) -> None:
    """Its ready file is the common one; SIGHUP is logged as unsupported and changes nothing;
    SIGTERM finishes and exits 0 (it used to end by the signal)."""
    config = {
        "state_dir": str(tmp_path / "state"),
        "identity": {
            "listen": "127.0.0.1:0",
            "issuer": "http://127.0.0.1:0",
            "tls": {"insecure_disable": True},
            "admin": {"listen": "127.0.0.1:0"},
        },
    }
    (tmp_path / "garrison.yaml").write_text(yaml.safe_dump(config))
    ready_path, stderr = tmp_path / "identity.ready", tmp_path / "identity.err"
    argv = [*GARRISON, "identity", "-c", str(tmp_path / "garrison.yaml"), "--ready-file", str(ready_path)]
    with stderr.open("wb") as sink:
        proc = subprocess.Popen(argv, stderr=sink)
    try:

        def wait_for(condition: Callable[[], bool], what: str) -> None:
            deadline = time.monotonic() + 60  # bounds a hang; nothing is measured against it
            while not condition():
                assert proc.poll() is None, stderr.read_text()
                assert time.monotonic() < deadline, f"timed out waiting for {what}: {stderr.read_text()}"
                time.sleep(0.05)

        wait_for(lambda: read_ready(ready_path) is not None, "the ready file")
        ready = read_ready(ready_path)
        assert ready is not None and ready.component == "identity" and ready.pid == proc.pid
        address = ready.listeners["identity"]
        assert ready.details == {"issuer": f"http://{address}"} and get(address, "/live") == 200
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "identity.reload.unsupported" in stderr.read_text(), "the SIGHUP to be logged")
        assert get(address, "/live") == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert '"event":"identity.stopped"' in stderr.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
