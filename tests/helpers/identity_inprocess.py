"""The identity provider's component (``garrison identity``) on its own event loop in a thread, with a
recording emitter and a test clock injected: real sockets (the provider's listener and its admin
listener on port 0), nothing mocked, and the test thread stays synchronous.

``IdentityProcess`` (identity_harness.py) prepares the configuration, users and clients beforehand,
with the same CLI and stores; this thread then serves that configuration.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import uvloop
from recording_emitter import RecordingEmitter

from garrison.config.loader import load_config
from garrison.identity.component import IdentityComponent


class Clock:
    """A clock the test moves: what the throttle and the account locks read."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class IdentityThread:
    def __init__(self, config_path: Path) -> None:
        self.emitter = RecordingEmitter()
        self.clock = Clock()
        self.component = IdentityComponent(load_config(config_path), emitter=self.emitter, clock=self.clock)
        self.loop = uvloop.new_event_loop()  # as `garrison identity` runs
        self.thread = threading.Thread(target=self.loop.run_forever, name="identity", daemon=True)
        self.issuer = self.admin_address = ""

    def start(self) -> IdentityThread:
        self.thread.start()
        listeners = asyncio.run_coroutine_threadsafe(self.component.start(), self.loop).result(60)
        self.issuer = self.component.issuer
        self.admin_address = listeners.get("admin", "")
        return self

    def stop(self) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.component.drain(), self.loop).result(30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.run_until_complete(asyncio.sleep(0.2))  # closing callbacks of cut connections
            self.loop.close()
