"""The unit-test guard: in a ``-m "not process"`` run, a test that starts a process or listens fails.

``make unit`` runs the tests not marked ``process`` (tests/conftest.py marks them) and must stay fast
and need nothing but Python. A test that spawns a subprocess, forks, or puts a socket in the listening
state while it is set up, runs or is torn down is mislabelled: it fails with a message saying what it
did, so it gets its ``process`` mark (or stops doing it) instead of silently slowing the unit run down.

tests/conftest.py registers ``UnitGuard`` as a plugin when the mark expression contains "not process".
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

HINT = "mark it @pytest.mark.process (or use a fixture that tests/conftest.py marks), or stop doing it"


class MislabelledTest(Exception):
    """A test outside the ``process`` mark started a process or a listener."""


def _refuse(what: str) -> Callable[..., Any]:
    def refused(*args: Any, **kwargs: Any) -> Any:
        raise MislabelledTest(f"a unit test {what}: {HINT}")

    return refused


@contextmanager
def _guarded() -> Iterator[None]:
    """Process and listener creation refused within the block; everything restored afterwards."""
    saved = [
        (subprocess.Popen, "__init__", subprocess.Popen.__init__),
        (socket.socket, "listen", socket.socket.listen),
        (os, "fork", os.fork),
        (os, "posix_spawn", os.posix_spawn),
    ]
    subprocess.Popen.__init__ = _refuse("started a subprocess")  # type: ignore[method-assign]
    socket.socket.listen = _refuse("put a socket in the listening state")  # type: ignore[method-assign]
    os.fork = _refuse("forked")
    os.posix_spawn = _refuse("spawned a process")
    try:
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


class UnitGuard:
    """A pytest plugin: every phase of every test runs under ``_guarded()``."""

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None, None, None]:
        with _guarded():
            return (yield)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, None, None]:
        with _guarded():
            return (yield)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Generator[None, None, None]:
        with _guarded():
            return (yield)


def wanted(config: pytest.Config) -> bool:
    """Whether this run selects unit tests only: its ``-m`` expression excludes ``process``."""
    expression = " ".join(str(config.getoption("markexpr", "") or "").split())
    return "not process" in expression


__all__ = ["MislabelledTest", "UnitGuard", "wanted"]
