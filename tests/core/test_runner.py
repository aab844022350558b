"""core/runner.py on a real process: a tiny component (one TCP listener) run by ``run_component``.

SIGTERM drains then exits 0; SIGHUP reloads (or logs ``reload.unsupported`` and keeps running); a
start that raises exits 2 with a ``StartFailed`` message; the ready file is written after start."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from garrison.core.ready import Ready, read_ready

CHILD = """
import asyncio, sys
from pathlib import Path
from garrison.core.runner import ReloadUnsupported, run_component
from garrison.core.sockets import address_of, bind_socket
from garrison.telemetry import logging as log

mode, ready, journal = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])

def note(line):
    with journal.open("a") as f:
        f.write(line + "\\n")

class Echo:
    name = "echo"

    async def start(self):
        if mode == "fail":
            raise OSError(98, "Address already in use")
        sock = bind_socket("127.0.0.1:0")
        self.server = await asyncio.get_running_loop().create_server(asyncio.Protocol, sock=sock)
        return {"echo": address_of(sock)}

    def details(self):
        return {"mode": mode}

    async def drain(self):
        self.server.close()
        await self.server.wait_closed()
        note("drained")

    async def reload(self):
        if mode == "noreload":
            raise ReloadUnsupported
        note("reloaded")

log.configure("echo")
sys.exit(asyncio.run(run_component(Echo(), ready)))
"""


class Child:
    def __init__(self, tmp: Path, mode: str) -> None:
        (tmp / "child.py").write_text(CHILD)
        self.ready_path, self.journal, self.stderr = tmp / "echo.ready", tmp / "journal", tmp / "stderr"
        self.journal.touch()
        with self.stderr.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(tmp / "child.py"), mode, str(self.ready_path), str(self.journal)],
                stderr=err,
            )

    def wait_for(self, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 20
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {self.stderr.read_text()}"
            time.sleep(0.02)

    def ready(self) -> Ready:
        self.wait_for(lambda: read_ready(self.ready_path) is not None, "the ready file")
        ready = read_ready(self.ready_path)
        assert ready is not None
        return ready

    def events(self, name: str) -> list[dict[str, object]]:
        lines = self.stderr.read_text().splitlines()
        return [json.loads(line) for line in lines if f'"event":"{name}"' in line]


@pytest.fixture
def children() -> Iterator[list[Child]]:
    started: list[Child] = []
    yield started
    for child in started:
        if child.proc.poll() is None:
            child.proc.kill()
        child.proc.wait()


def start(tmp_path: Path, children: list[Child], mode: str) -> Child:
    child = Child(tmp_path, mode)
    children.append(child)
    return child


@pytest.mark.process
def test_ready_then_sigterm_drains_and_exits_0(tmp_path: Path, children: list[Child]) -> None:
    child = start(tmp_path, children, "serve")
    ready = child.ready()
    assert ready.component == "echo" and ready.pid == child.proc.pid and ready.details == {"mode": "serve"}
    host, port = ready.listeners["echo"].rsplit(":", 1)
    socket.create_connection((host, int(port)), timeout=5).close()  # it serves what it announced
    child.proc.send_signal(signal.SIGTERM)
    assert child.proc.wait(20) == 0
    assert child.journal.read_text() == "drained\n"


@pytest.mark.process
def test_sigint_drains_too(tmp_path: Path, children: list[Child]) -> None:
    child = start(tmp_path, children, "serve")
    child.ready()
    child.proc.send_signal(signal.SIGINT)
    assert child.proc.wait(20) == 0 and child.journal.read_text() == "drained\n"


@pytest.mark.process
def test_sighup_reloads(tmp_path: Path, children: list[Child]) -> None:
    child = start(tmp_path, children, "serve")
    child.ready()
    child.proc.send_signal(signal.SIGHUP)
    child.wait_for(lambda: "reloaded" in child.journal.read_text(), "the reload")
    child.proc.send_signal(signal.SIGHUP)
    child.wait_for(lambda: child.journal.read_text().count("reloaded") == 2, "the second reload")
    child.proc.send_signal(signal.SIGTERM)
    assert child.proc.wait(20) == 0


@pytest.mark.process
def test_a_component_that_cannot_reload_says_so_and_keeps_running(
    tmp_path: Path, children: list[Child]
) -> None:
    child = start(tmp_path, children, "noreload")
    child.ready()
    child.proc.send_signal(signal.SIGHUP)
    child.wait_for(lambda: bool(child.events("echo.reload.unsupported")), "reload.unsupported")
    assert child.proc.poll() is None
    child.proc.send_signal(signal.SIGTERM)
    assert child.proc.wait(20) == 0 and child.journal.read_text() == "drained\n"


@pytest.mark.process
def test_a_start_failure_exits_2_with_a_clear_message(tmp_path: Path, children: list[Child]) -> None:
    child = start(tmp_path, children, "fail")
    assert child.proc.wait(20) == 2
    stderr = child.stderr.read_text()
    assert "StartFailed: echo could not start: [Errno 98] Address already in use" in stderr
    [failed] = child.events("echo.start_failed")
    assert failed["error"] == "OSError"
    assert not child.ready_path.exists() and child.journal.read_text() == ""
