"""A supervised child ends when its supervisor does, even if the supervisor was killed with SIGKILL.

The supervisor (core/supervisor.py) starts each child in a session of its own, so that Ctrl-C at the
terminal reaches ``garrison up`` only and the children are stopped in order. The other side of that
choice: a supervisor that dies without stopping them (``kill -9``, an OOM kill, a crashed test) would
leave every component running, holding its ports, with nobody to restart or stop it. So the supervisor
names itself in ``GARRISON_SUPERVISOR_PID``, and a child asks Linux (``prctl(PR_SET_PDEATHSIG)``) for
SIGTERM when its parent goes: the runner then drains and exits like on any SIGTERM. If the parent is
already gone when the child gets here, the child sends itself the signal. Elsewhere than on Linux there
is no such call and nothing is done (supervisord and systemd have the same gap on those systems).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys

__all__ = ["SUPERVISOR_ENV", "end_with_supervisor", "supervised_env"]

SUPERVISOR_ENV = "GARRISON_SUPERVISOR_PID"
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def supervised_env(env: dict[str, str] | None) -> dict[str, str]:
    """``env`` (or this process's environment) for a child this process supervises."""
    return {**(os.environ if env is None else env), SUPERVISOR_ENV: str(os.getpid())}


def end_with_supervisor() -> None:
    """When started by a Garrison supervisor: get SIGTERM when it goes (at once if it is gone)."""
    supervisor = os.environ.get(SUPERVISOR_ENV)
    if not supervisor or not supervisor.isdigit() or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            return
    if os.getppid() != int(supervisor):  # it died before the prctl above: nobody will signal us
        os.kill(os.getpid(), signal.SIGTERM)
