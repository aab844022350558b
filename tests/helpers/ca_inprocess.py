"""A workload CA running in the test's own event loop (``garrison ca serve``'s component, on port 0).

For tests of what talks to the CA (the workload client, the Python transport and middleware) where a
separate process adds nothing; ``ca_harness.py`` runs the real process."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import yaml

from garrison.config.loader import load_config
from garrison.mesh.ca.server import CaComponent, ca_files


@contextlib.asynccontextmanager
async def running_ca(
    directory: Path, services: Iterable[str] = ("orders", "payments")
) -> AsyncIterator[CaComponent]:
    """A CA for trust domain shop.local knowing ``services``; ``.url`` is where it listens."""
    config = {
        "state_dir": str(directory / "state"),
        "trust_domain": "shop.local",
        "services": {name: {"targets": ["http://127.0.0.1:9"]} for name in services},
        "mesh": {"ca": {"listen": "127.0.0.1:0", "admin": {"listen": "127.0.0.1:0"}}},
    }
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "garrison.yaml").write_text(yaml.safe_dump(config))
    loaded = load_config(directory / "garrison.yaml")
    ca_files(loaded.config).init("shop.local", now=dt.datetime.now(dt.UTC))
    component = CaComponent(loaded)
    listeners = await component.start()
    component.url = f"https://{listeners['ca']}"  # type: ignore[attr-defined]
    try:
        yield component
    finally:
        await component.drain()
