"""`garrison up` with a `mesh` section: the CA and a sidecar per service, supervised like the rest.

The sidecars' inbound ports and the CA's port are named in the config (peers dial them), so the test holds
them (``ports.reserved_port``); everything else listens on port 0, the CA's admin listener too, so `up`
mints its join tokens in the CA's database (the demo test covers the admin API path). The apps are the
demo's (examples/demo_mesh_app.py): `up --demo` starts them and they call through their sidecars."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from ports import reserved_port

from garrison.core.ready import read_ready
from garrison.mesh.enrolment import identity_usable

ROOT = Path(__file__).resolve().parents[2]
HELD = ("ca", "orders_inbound", "payments_inbound", "orders_outbound", "payments_outbound")
HELD += ("demo", "orders_app", "payments_app")


@pytest.fixture
def ports() -> Iterator[dict[str, int]]:
    with contextlib.ExitStack() as stack:
        yield {name: stack.enter_context(reserved_port()) for name in HELD}


def write_config(tmp_path: Path, ports: dict[str, int]) -> Path:
    for script in ("demo_upstream.py", "demo_mesh_app.py"):
        shutil.copy(ROOT / "examples" / script, tmp_path / script)
    local = "127.0.0.1:{}".format
    config = {
        "trust_domain": "shop.test",
        "state_dir": str(tmp_path / "state"),
        "gateway": {
            "listen": "127.0.0.1:0",
            "tls": {"insecure_disable": True},
            "admin": {"listen": "127.0.0.1:0"},
        },
        "services": {
            "demo": {"targets": [f"http://{local(ports['demo'])}"]},
            "orders": {
                "targets": [f"http://{local(ports['orders_app'])}"],
                "calls": [{"service": "payments", "methods": ["POST"], "paths": ["/charges"]}],
            },
            "payments": {"targets": [f"http://{local(ports['payments_app'])}"]},
        },
        "mesh": {
            "ca": {"listen": local(ports["ca"]), "admin": {"listen": "127.0.0.1:0"}},
            "sidecars": {
                name: {
                    "inbound": local(ports[f"{name}_inbound"]),
                    "outbound": local(ports[f"{name}_outbound"]),
                }
                for name in ("orders", "payments")
            },
        },
        "routes": [
            {
                "name": "hello",
                "match": {"path": "/api", "prefix": True},
                "service": "demo",
                "auth": {"require": "none"},
            },
        ],
    }
    path = tmp_path / "garrison.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class Up:
    """`garrison up --demo` on the test's config, its output in a file read as it grows."""

    def __init__(self, config: Path) -> None:
        self.output = config.parent / "up.out"
        self.sink = self.output.open("wb")
        argv = [sys.executable, "-m", "garrison", "up", "-c", str(config), "--demo"]
        self.proc = subprocess.Popen(argv, stdout=self.sink, stderr=subprocess.STDOUT)
        self.wait_for(lambda: "Press Ctrl-C" in self.text(), "up to start")

    def text(self) -> str:
        return self.output.read_text()

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.proc.poll() is None, f"up exited while waiting for {what}:\n{self.text()}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{self.text()}"
            time.sleep(0.05)

    def events(self, event: str, **match: Any) -> list[dict[str, Any]]:
        found = []
        for line in self.text().splitlines():
            if line.startswith("{") and f'"event":"{event}"' in line:
                record = json.loads(line)
                if all(record.get(key) == value for key, value in match.items()):
                    found.append(record)
        return found

    def child_pid(self, *words: str) -> int:
        """The pid of up's child whose command line holds all of ``words``."""
        for pid in Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split():
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if all(word.encode() in argv for word in words):
                return int(pid)
        raise AssertionError(f"no child running {words}")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(30)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.sink.close()


def post(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=b"{}", method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read())


def test_up_runs_the_ca_and_sidecars_and_restarts_a_sidecar_with_its_saved_identity(
    tmp_path: Path, ports: dict[str, int]
) -> None:
    config = write_config(tmp_path, ports)
    state = tmp_path / "state"
    up = Up(config)
    try:
        text = up.text()
        assert f"created a CA for shop.test under {state / 'ca'}" in text
        for name in ("ca", "sidecar orders", "sidecar payments"):
            assert name in text  # in up's table
        # Start order: the CA, then the sidecars, then the rest.
        started = [record["name"] for record in up.events("up.join_token.minted")]
        assert started == ["sidecar orders", "sidecar payments", "gateway"]
        assert (
            up.events("up.join_token.minted", name="gateway")[0]["spiffe_id"] == "spiffe://shop.test/gateway"
        )
        assert "gjt_" not in text  # tokens are never printed or logged

        orders_app, payments_app = (f"http://127.0.0.1:{ports[n]}" for n in ("orders_app", "payments_app"))

        def allowed_call_succeeds() -> None:
            status, answer = post(orders_app + "/call/payments/charges")
            assert status == 200, answer
            assert answer["answer"]["caller"] == "spiffe://shop.test/svc/orders"
            assert answer["answer"]["service"] == "payments" and answer["answer"]["path"] == "/charges"

        allowed_call_succeeds()
        status, answer = post(payments_app + "/call/orders/orders/1")
        assert status == 403 and answer["answer"]["error"] == "forbidden", answer
        denied = up.events("mesh.call.denied", caller="spiffe://shop.test/svc/payments", path="/orders/1")
        assert denied and denied[0]["callee"] == "orders"
        # A path orders may not call on payments is refused just the same.
        status, _ = post(orders_app + "/call/payments/refunds")
        assert status == 403

        # kill -9 orders' sidecar: up restarts it, and it serves again from its saved identity.
        orders_dir = state / "sidecars" / "orders"
        assert identity_usable(orders_dir)
        lapsed = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)  # workload_ttl: 1h (the default)
        assert not identity_usable(orders_dir, now=lapsed)  # then up would mint a new token
        killed = up.child_pid("sidecar", "orders")
        os.kill(killed, signal.SIGKILL)
        up.wait_for(lambda: bool(up.events("up.component.restarted", name="sidecar orders")), "the restart")
        [died] = up.events("up.component.died", name="sidecar orders")
        assert died["signal"] == "SIGKILL" and died["pid"] == killed
        restarted = up.child_pid("sidecar", "orders")
        assert restarted != killed
        assert len(up.events("up.join_token.minted", name="sidecar orders")) == 1  # no new token
        assert len(up.events("mesh.ca.issued", how="join", spiffe_id="spiffe://shop.test/svc/orders")) == 1
        assert b"GARRISON_JOIN_TOKEN=" not in Path(f"/proc/{restarted}/environ").read_bytes()
        ready = read_ready(state / "run" / "up-sidecar-orders.ready")
        assert ready is not None and ready.pid == restarted
        allowed_call_succeeds()

        # A sidecar without a usable identity (lost here; lapsed is the same) gets a fresh token.
        (state / "sidecars" / "payments" / "identity.pem").rename(tmp_path / "payments-identity.pem")
        os.kill(up.child_pid("sidecar", "payments"), signal.SIGKILL)
        up.wait_for(lambda: bool(up.events("up.component.restarted", name="sidecar payments")), "the restart")
        assert len(up.events("up.join_token.minted", name="sidecar payments")) == 2
        assert len(up.events("mesh.ca.issued", how="join", spiffe_id="spiffe://shop.test/svc/payments")) == 2
        allowed_call_succeeds()

        assert up.stop() == 0
    finally:
        up.close()
    assert "stopped." in up.text()
    stops = [line for line in up.text().splitlines() if '"event":"ca.stopped"' in line]
    assert stops and up.text().index('"event":"gateway.stopped"') < up.text().index(stops[0])  # CA last
