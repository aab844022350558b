"""core/supervisor.py on real (tiny) child processes, with the back-off wait injected (it records the
delays asked for instead of waiting them): a death is logged and restarted after its back-off, a
failing restart backs off further, a first start that fails raises StartFailed, a hung restart is
killed, stopping cancels a pending restart and stops the children in order (SIGKILL after the grace)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from garrison.core.ready import read_ready
from garrison.core.runner import StartFailed
from garrison.core.supervisor import ChildSpec, Supervisor
from garrison.telemetry import logging as log

# The child does what the file `mode` next to it says when it starts: crash (exit 3), ready (write the
# ready file, then run until SIGTERM, noting it in `stops`), stubborn (ready, but ignores SIGTERM) or
# hang (run, never ready).
CHILD = """
import os, signal, sys, time
from pathlib import Path
from garrison.core.ready import Ready, write_ready
here, name = Path(sys.argv[1]), sys.argv[2]
mode = (here / "mode").read_text().strip()
if mode == "crash":
    sys.exit(3)
def on_term(signum, frame):
    with open(here.parent / "stops", "a") as f:
        f.write(name + "\\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, signal.SIG_IGN if mode == "stubborn" else on_term)
if mode in ("ready", "stubborn"):
    write_ready(here / "ready", Ready(name, os.getpid(), {name: "127.0.0.1:1"}))
while True:
    time.sleep(60)
"""


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    log.configure("up", stream)
    yield stream
    log.configure("garrison", sys.stderr)


def events(stream: io.StringIO, event: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if f'"event":"{event}"' in line]


def spec(tmp_path: Path, name: str, mode: str) -> ChildSpec:
    here = tmp_path / name
    here.mkdir()
    (here / "child.py").write_text(CHILD)
    (here / "mode").write_text(mode)
    argv = [sys.executable, str(here / "child.py"), str(here), name]
    return ChildSpec(name, argv, ready_file=here / "ready", fields={"role": "test"})


async def until(condition: Callable[[], bool], what: str) -> None:
    async with asyncio.timeout(30):  # a bound on a hang, not a measurement
        while not condition():
            await asyncio.sleep(0.02)


class Backoff:
    """The injected back-off wait: records each delay; ``hold`` makes the next ones wait until stopped."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.hold = False
        self.before: Callable[[], None] | None = None  # runs when a wait begins

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        if self.before is not None:
            self.before()
        if self.hold:
            await asyncio.Event().wait()  # cancelled by stop()
        await asyncio.sleep(0)


@pytest.mark.process
def test_a_death_is_restarted_after_its_back_off_and_a_failing_restart_backs_off_further(
    tmp_path: Path, logs: io.StringIO
) -> None:
    backoff = Backoff()
    child_spec = spec(tmp_path, "svc", "ready")
    mode = tmp_path / "svc" / "mode"

    async def scenario() -> None:
        supervisor = Supervisor("up.component", sleep=backoff)
        child = supervisor.add(child_spec)
        await supervisor.start(child)
        first = child.pid
        assert first is not None and child.listeners == {"svc": "127.0.0.1:1"}
        supervisor.supervise()
        try:
            mode.write_text("crash")  # the first restart crashes; the second one serves
            backoff.before = lambda: mode.write_text("ready") if len(backoff.delays) == 2 else None
            os.kill(first, signal.SIGKILL)
            await until(lambda: bool(events(logs, "up.component.restarted")), "the restart")
            killed, crashed = events(logs, "up.component.died")
            assert killed == {**killed, "name": "svc", "pid": first, "signal": "SIGKILL",
                              "restart_in": 1.0, "restarts": 1, "role": "test"}  # fmt: skip
            assert crashed == {**crashed, "exit_code": 3, "restart_in": 2.0, "restarts": 2}
            assert crashed["pid"] not in (first, child.pid)
            assert backoff.delays == [1.0, 2.0]
            [back] = events(logs, "up.component.restarted")
            ready = read_ready(tmp_path / "svc" / "ready")
            assert ready is not None and back["pid"] == child.pid == ready.pid
            assert back["listeners"] == {"svc": "127.0.0.1:1"} and back["restarts"] == 2
        finally:
            await supervisor.stop()
        assert not child.alive()

    asyncio.run(scenario())


@pytest.mark.process
def test_a_first_start_that_fails_raises_start_failed(tmp_path: Path, logs: io.StringIO) -> None:
    async def scenario() -> None:
        supervisor = Supervisor()
        child = supervisor.add(spec(tmp_path, "svc", "crash"))
        with pytest.raises(StartFailed, match=r"svc exited \(exit_code 3\) while starting"):
            await supervisor.start(child)
        await supervisor.stop()
        assert events(logs, "up.component.died") == []  # a first start is not restarted

    asyncio.run(scenario())


@pytest.mark.process
def test_a_first_start_that_hangs_raises_start_failed(tmp_path: Path, logs: io.StringIO) -> None:
    async def scenario() -> None:
        supervisor = Supervisor(ready_timeout=0.5)
        child = supervisor.add(spec(tmp_path, "svc", "hang"))
        with pytest.raises(StartFailed, match=r"svc did not become ready within 0\.5s"):
            await supervisor.start(child)
        await supervisor.stop()
        assert not child.alive()

    asyncio.run(scenario())


@pytest.mark.process
def test_a_hung_restart_is_killed_and_backed_off_further(tmp_path: Path, logs: io.StringIO) -> None:
    backoff = Backoff()
    child_spec = spec(tmp_path, "svc", "ready")

    async def scenario() -> None:
        supervisor = Supervisor(sleep=backoff, ready_timeout=0.5)
        child = supervisor.add(child_spec)
        await supervisor.start(child)
        supervisor.supervise()
        (tmp_path / "svc" / "mode").write_text("hang")
        assert child.process is not None
        child.process.kill()
        try:
            await until(lambda: len(events(logs, "up.component.died")) == 2, "the hung restart's death")
            [unready] = events(logs, "up.component.unready")
            second = events(logs, "up.component.died")[1]
            assert second["pid"] == unready["pid"] and second["signal"] == "SIGKILL"
            assert second["restart_in"] == 2.0 and second["restarts"] == 2
        finally:
            await supervisor.stop()

    asyncio.run(scenario())


@pytest.mark.process
def test_stopping_cancels_a_pending_restart_and_stops_the_last_started_first(
    tmp_path: Path, logs: io.StringIO
) -> None:
    backoff = Backoff()
    backoff.hold = True
    specs = [spec(tmp_path, name, "ready") for name in ("first", "second", "third")]

    async def scenario() -> None:
        supervisor = Supervisor(sleep=backoff)
        children = [supervisor.add(s) for s in specs]
        for child in children:
            await supervisor.start(child)
        supervisor.supervise()
        (tmp_path / "second" / "mode").write_text("crash")
        dead = children[1].process
        assert dead is not None
        dead.kill()
        await until(lambda: backoff.delays == [1.0], "the back-off to begin")
        await supervisor.stop()
        assert [e["name"] for e in events(logs, "up.component.restart_cancelled")] == ["second"]
        assert children[1].process is dead  # never restarted
        assert not any(child.alive() for child in children)

    asyncio.run(scenario())
    assert (tmp_path / "stops").read_text().split() == ["third", "first"]


@pytest.mark.process
def test_a_child_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path, logs: io.StringIO) -> None:
    async def scenario() -> None:
        supervisor = Supervisor(grace=0.5)
        child = supervisor.add(spec(tmp_path, "svc", "stubborn"))
        await supervisor.start(child)
        await supervisor.stop()
        assert child.process is not None and child.process.returncode == -signal.SIGKILL
        [killed] = events(logs, "supervisor.stop.killed")
        assert killed["name"] == "svc" and killed["pid"] == child.pid

    asyncio.run(scenario())
