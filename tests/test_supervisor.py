"""`garrison up`'s supervision step on real (tiny) processes, with the back-off clock injected:
a death is logged and scheduled, nothing restarts before the back-off is over, the return is
announced once the ready file is back, a hung start is killed, and stopping cancels a pending restart."""

from __future__ import annotations

import io
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from garrison.core.restart import RestartPolicy
from garrison.supervisor import READY_TIMEOUT, Component, stop_all, tend
from garrison.telemetry import logging as log

pytestmark = pytest.mark.process  # every test here starts real processes or listeners

# The child does what the file `mode` next to it says: crash (exit 3), ready (write the ready file, then
# run until stopped) or hang (run until stopped, never ready).
CHILD = """
import json, os, sys, time
mode_file, ready_file = sys.argv[1], sys.argv[2]
mode = open(mode_file).read().strip()
if mode == "crash":
    sys.exit(3)
if mode == "ready":
    with open(ready_file + ".tmp", "w") as f:
        json.dump({"pid": os.getpid(), "listeners": {"svc": "127.0.0.1:1"}}, f)
    os.replace(ready_file + ".tmp", ready_file)
time.sleep(120)
"""


class FakeClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    log.configure("up", stream)
    yield stream
    log.configure("garrison", sys.stderr)


def events(stream: io.StringIO, event: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if f'"event":"{event}"' in line]


def child(tmp_path: Path, clock: FakeClock, mode: str) -> Component:
    (tmp_path / "child.py").write_text(CHILD)
    (tmp_path / "mode").write_text(mode)
    ready = tmp_path / "svc.ready"
    argv = [sys.executable, str(tmp_path / "child.py"), str(tmp_path / "mode"), str(ready)]
    return Component("svc", argv, ready_file=ready, policy=RestartPolicy(clock=clock))


def wait_exists(path: Path) -> None:
    deadline = time.monotonic() + 20
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


CONSOLE = Console(file=io.StringIO())


def test_a_death_is_logged_and_restarted_after_the_back_off(tmp_path: Path, logs: io.StringIO) -> None:
    clock = FakeClock()
    component = child(tmp_path, clock, "crash")
    component.start()
    assert component.process is not None
    dead = component.process
    dead.wait(20)
    tend(component, CONSOLE)
    [died] = events(logs, "up.component.died")
    assert died == {**died, "name": "svc", "pid": dead.pid, "exit_code": 3, "restart_in": 1.0, "restarts": 1}
    assert component.restart_at == clock.now + 1.0

    (tmp_path / "mode").write_text("ready")
    clock.now += 0.9
    tend(component, CONSOLE)
    assert component.process is dead  # still backing off: nothing started
    clock.now += 0.1
    tend(component, CONSOLE)
    try:
        assert component.process is not dead and component.alive()
        assert events(logs, "up.component.restarted") == []  # started, not yet ready
        wait_exists(tmp_path / "svc.ready")
        tend(component, CONSOLE)
        [back] = events(logs, "up.component.restarted")
        assert back["pid"] == component.process.pid and back["listeners"] == {"svc": "127.0.0.1:1"}
        assert component.ready_by is None and component.restart_at is None
        tend(component, CONSOLE)
        assert len(events(logs, "up.component.restarted")) == 1  # announced once
    finally:
        component.stop()


def test_a_restart_that_never_gets_ready_is_killed_and_backed_off_further(
    tmp_path: Path, logs: io.StringIO
) -> None:
    clock = FakeClock()
    component = child(tmp_path, clock, "crash")
    component.start()
    assert component.process is not None
    component.process.wait(20)
    tend(component, CONSOLE)
    (tmp_path / "mode").write_text("hang")
    clock.now += 1.0
    tend(component, CONSOLE)
    hung = component.process
    assert hung is not None and component.alive()
    clock.now += READY_TIMEOUT + 0.1
    tend(component, CONSOLE)
    assert [e["pid"] for e in events(logs, "up.component.unready")] == [hung.pid]
    assert not component.alive()
    tend(component, CONSOLE)
    second = events(logs, "up.component.died")[1]
    assert second["signal"] == "SIGKILL" and second["restart_in"] == 2.0 and second["restarts"] == 2


def test_stopping_cancels_a_pending_restart_and_stops_the_rest(tmp_path: Path, logs: io.StringIO) -> None:
    clock = FakeClock()
    (tmp_path / "other").mkdir()
    running = child(tmp_path / "other", clock, "ready")
    running.start()
    crashed = child(tmp_path, clock, "crash")
    crashed.start()
    assert crashed.process is not None and running.process is not None
    crashed.process.wait(20)
    tend(crashed, CONSOLE)
    dead = crashed.process
    assert crashed.restart_at is not None

    stop_all([crashed, running], CONSOLE)
    assert [e["name"] for e in events(logs, "up.component.restart_cancelled")] == ["svc"]
    assert crashed.restart_at is None and not running.alive()
    assert crashed.process is dead  # and `up` exits after stop_all: nothing tends it any more
