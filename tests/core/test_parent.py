"""A supervised child gets SIGTERM when its supervisor dies, even by SIGKILL (core/parent.py)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from waiting import wait_until

pytestmark = [
    pytest.mark.process,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's"),
]

# The child: says it got SIGTERM (in a file), after announcing it is set up.
CHILD = """
import pathlib, signal, sys, time
from garrison.core.parent import end_with_supervisor
out = pathlib.Path(sys.argv[1])
signal.signal(signal.SIGTERM, lambda *_: (out.write_text("SIGTERM"), sys.exit(0)))
end_with_supervisor()
out.write_text("ready")
while True:
    signal.pause()
"""

# The supervisor stand-in: starts the child as core/supervisor.py does, prints its pid, then waits.
PARENT = """
import subprocess, sys, time
from garrison.core.parent import supervised_env
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]], env=supervised_env(None),
                         start_new_session=True)
print(child.pid, flush=True)
time.sleep(120)
"""


def test_the_child_is_told_when_its_supervisor_is_killed(tmp_path: Path) -> None:
    out = tmp_path / "child.out"
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, CHILD, str(out)], stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    child_pid = int(parent.stdout.readline())
    try:
        wait_until(lambda: out.exists() and out.read_text() == "ready", what="the child to be set up")
        parent.kill()
        parent.wait()
        wait_until(lambda: out.read_text() == "SIGTERM", what="the child to get SIGTERM")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        parent.stdout.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(child_pid, signal.SIGKILL)


def test_outside_a_supervisor_nothing_is_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from garrison.core.parent import SUPERVISOR_ENV, end_with_supervisor

    monkeypatch.delenv(SUPERVISOR_ENV, raising=False)
    end_with_supervisor()  # no signal to this test process, no error
