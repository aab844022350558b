"""The one process supervisor: children as subprocesses, each restarted on its own back-off.

Used by ``garrison up`` (one child per component) and by the gateway's ``workers: N`` (one child per
worker). What it does, the same for both:

- ``start(*children)``: spawn them and wait until each is ready (its ready file, read through
  core/ready.py, or an open port for a process that writes none). A child that exits or hangs during
  its FIRST start raises ``StartFailed``: that is almost always a configuration error, which a restart
  would only repeat, so the caller stops everything with that message.
- ``supervise()``: from then on a child that dies is logged (``<events>.died``: pid, exit code or
  signal, ``restart_in``, ``restarts``), started again after its back-off (core/restart.py: 1 s,
  doubling to 30 s, reset after 60 s up), and announced once ready (``<events>.restarted``). A
  restart that hangs is killed after ``ready_timeout`` (``<events>.unready``) and backed off further.
  A child that keeps crashing is retried for as long as the supervisor runs, never given up on.
- ``stop()``: cancel pending restarts (``<events>.restart_cancelled``), then SIGTERM each child, the
  last started first (or all together), and SIGKILL one that has not exited after ``grace`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from garrison.core.parent import supervised_env
from garrison.core.ready import read_ready
from garrison.core.restart import RestartPolicy
from garrison.core.runner import StartFailed
from garrison.telemetry import logging as log

__all__ = ["READY_TIMEOUT", "STOP_GRACE", "Child", "ChildSpec", "Supervisor", "exit_fields"]

READY_TIMEOUT = 30.0  # a component that is not serving after this long is hung, not slow
STOP_GRACE = 35.0  # SIGTERM, then this long to drain (the gateway's default drain_timeout is 30 s)
POLL = 0.05  # how often a starting child's ready file (or port) is looked at


@dataclass
class ChildSpec:
    name: str
    argv: list[str]
    ready_file: Path | None = None
    probe: tuple[str, int] | None = None  # ready when this port accepts (a process without a ready file)
    env: dict[str, str] | None = field(default=None, repr=False)  # may hold a join token
    # Its own session: Ctrl-C at a terminal reaches the supervisor only (which stops children in
    # order), and what a dead child leaves in its session (its own children) can be killed with it.
    own_session: bool = True
    fields: dict[str, Any] = field(default_factory=dict)  # added to its log events
    # Awaited before every spawn, first start and restarts (``up`` decides there whether a sidecar
    # needs a fresh join token in ``env``). It must not raise: a failure is the child's to report.
    prepare: Callable[[ChildSpec], Awaitable[None]] | None = None


@dataclass
class Child:
    spec: ChildSpec
    policy: RestartPolicy
    process: asyncio.subprocess.Process | None = None
    listeners: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def spawn(self) -> None:
        if self.spec.ready_file is not None:
            # The child writes it afresh once it serves: a stale one would announce it too early.
            self.spec.ready_file.unlink(missing_ok=True)
        if self.spec.prepare is not None:
            await self.spec.prepare(self.spec)
        self.process = await asyncio.create_subprocess_exec(
            *self.spec.argv,
            env=supervised_env(self.spec.env),  # the child ends if this process dies (core/parent.py)
            start_new_session=self.spec.own_session,
        )
        self.policy.started()

    def is_ready(self) -> bool:
        """One non-blocking look: has it announced itself (ready file) or opened its port?"""
        if self.spec.ready_file is not None:
            ready = read_ready(self.spec.ready_file)
            if ready is None or ready.pid != self.pid:
                return False
            self.listeners = ready.listeners
            return True
        if self.spec.probe is not None and _port_open(*self.spec.probe):
            self.listeners = {"http": f"{self.spec.probe[0]}:{self.spec.probe[1]}"}
            return True
        return False

    async def wait_ready(self, timeout: float) -> None:
        """Until ready; StartFailed if it exits first or is not ready within ``timeout``."""
        assert self.process is not None
        deadline = asyncio.get_running_loop().time() + timeout
        while not self.is_ready():
            if self.process.returncode is not None:
                how = ", ".join(f"{k} {v}" for k, v in exit_fields(self.process.returncode).items())
                raise StartFailed(f"{self.name} exited ({how}) while starting (see its log above)")
            if asyncio.get_running_loop().time() > deadline:
                raise StartFailed(f"{self.name} did not become ready within {timeout:g}s")
            await asyncio.sleep(POLL)

    def reap_leftovers(self) -> None:
        """Kill what the dead child left in its session (a gateway's `workers: N` children), so its
        restart does not share its port with orphans running an old configuration."""
        if self.process is not None and self.spec.own_session:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)

    async def stop(self, grace: float) -> None:
        if not self.alive():
            return
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(grace):
                await self.process.wait()
        except TimeoutError:
            log.warn("supervisor.stop.killed", name=self.name, pid=self.process.pid, grace=grace)
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()


def exit_fields(code: int | None) -> dict[str, object]:
    """A returncode as people read it: an exit status, or the signal that ended the process."""
    if code is not None and code < 0:
        try:
            return {"signal": signal.Signals(-code).name}
        except ValueError:
            return {"signal": -code}
    return {"exit_code": code}


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


Notify = Callable[[Child, dict[str, object]], None]


class Supervisor:
    def __init__(
        self,
        events: str = "up.component",
        *,
        ready_timeout: float = READY_TIMEOUT,
        grace: float = STOP_GRACE,
        policy: Callable[[], RestartPolicy] = RestartPolicy,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_died: Notify | None = None,
        on_restarted: Notify | None = None,
    ) -> None:
        self.events = events  # the prefix of the log events: "up.component", "gateway.worker"
        self.ready_timeout = ready_timeout
        self.grace = grace
        self._policy = policy
        self._sleep = sleep  # the back-off wait (tests pass one that does not wait)
        self._on_died = on_died
        self._on_restarted = on_restarted
        self.children: list[Child] = []
        self.stopping = False
        self._keepers: dict[str, asyncio.Task[None]] = {}
        self._backing_off: set[str] = set()

    def add(self, spec: ChildSpec) -> Child:
        child = Child(spec, self._policy())
        self.children.append(child)
        return child

    async def start(self, *children: Child) -> None:
        """First start: spawn them all, then wait until each is ready (StartFailed otherwise)."""
        for child in children:
            await child.spawn()
        for child in children:
            await child.wait_ready(self.ready_timeout)

    def supervise(self) -> None:
        """Restart every child that dies from now on, until ``stop``."""
        for child in self.children:
            if child.name not in self._keepers:
                self._keepers[child.name] = asyncio.get_running_loop().create_task(self._keep(child))

    async def stop(self, together: bool = False) -> None:
        """Cancel pending restarts, then stop the children: the last started first, or all at once."""
        self.stopping = True
        for name, task in self._keepers.items():
            if name in self._backing_off:
                log.log(f"{self.events}.restart_cancelled", name=name)
            task.cancel()
        await asyncio.gather(*self._keepers.values(), return_exceptions=True)
        self._keepers.clear()
        if together:
            await asyncio.gather(*(child.stop(self.grace) for child in self.children))
        else:
            for child in reversed(self.children):
                await child.stop(self.grace)

    def signal_all(self, signum: int) -> None:
        for child in self.children:
            if child.alive():
                assert child.process is not None
                child.process.send_signal(signum)

    async def _keep(self, child: Child) -> None:
        while not self.stopping:
            assert child.process is not None
            code = await child.process.wait()
            child.reap_leftovers()
            delay = child.policy.next_delay()
            fields: dict[str, object] = {**exit_fields(code), "restart_in": delay}
            log.error(f"{self.events}.died", name=child.name, pid=child.pid, **fields,
                      restarts=child.policy.restarts, **child.spec.fields)  # fmt: skip
            if self._on_died is not None:
                self._on_died(child, fields)
            self._backing_off.add(child.name)
            try:
                await self._sleep(delay)
            finally:
                self._backing_off.discard(child.name)
            await self._restart(child)

    async def _restart(self, child: Child) -> None:
        await child.spawn()
        try:
            await child.wait_ready(self.ready_timeout)
        except StartFailed:
            if child.alive():  # hung while starting: killed, and the next round backs off further
                log.error(f"{self.events}.unready", name=child.name, pid=child.pid,
                          timeout=self.ready_timeout, **child.spec.fields)  # fmt: skip
                assert child.process is not None
                child.process.kill()
            return  # died while starting: the next round sees it and backs off further
        log.log(f"{self.events}.restarted", name=child.name, pid=child.pid, listeners=child.listeners,
                restarts=child.policy.restarts, **child.spec.fields)  # fmt: skip
        if self._on_restarted is not None:
            self._on_restarted(child, {"listeners": child.listeners})
