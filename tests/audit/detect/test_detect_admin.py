"""`/suppressions` on a real admin listener behind the guard, driven by the `garrison audit` CLI."""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from detect_harness import Clock
from typer.testing import CliRunner

from garrison.admin.api import AdminApi
from garrison.admin.listener import start_admin_listener
from garrison.audit.cli_suppress import register
from garrison.audit.detect import suppressions_api
from garrison.audit.detect.suppressions import Suppressions
from garrison.audit.pipeline import LoggedEvent
from garrison.config.model import AdminConfig
from garrison.events.schema import Event

pytestmark = pytest.mark.process


class Collector:
    """The collector's admin listener in a thread of its own, as the CLI meets it."""

    def __init__(self, tmp: Path) -> None:
        self.store = Suppressions(tmp / "audit" / "suppressions.json", 2, Clock(1_800_000_000.0))
        self.logged: list[Event] = []
        self.loop = asyncio.new_event_loop()
        self.token_path = tmp / "admin.token"
        started = threading.Event()

        async def append(events: list[Event]) -> list[LoggedEvent]:
            self.logged.extend(events)
            return [LoggedEvent(i, e, e.to_json()) for i, e in enumerate(events)]

        async def start() -> None:
            api = AdminApi(list, lambda: asyncio.sleep(0, b""))
            api.register("/suppressions", suppressions_api(self.store, append))
            self.listener = await start_admin_listener(
                AdminConfig(listen="127.0.0.1:0"), self.token_path, tmp, api
            )
            started.set()

        self.thread = threading.Thread(target=self._run, args=(start,), daemon=True)
        self.thread.start()
        assert started.wait(10)

    def _run(self, start: object) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(start())  # type: ignore[operator]
        self.loop.run_forever()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.listener.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[tuple[Collector, Path]]:
    c = Collector(tmp_path)
    config = tmp_path / "garrison.yaml"
    config.write_text(
        f"state_dir: {tmp_path}\naudit:\n"
        f"  admin: {{listen: '{c.listener.address}', token_file: admin.token}}\n"
    )
    yield c, config
    c.close()


def cli(config: Path, *args: str) -> tuple[int, str]:
    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # a group of one command would swallow the command's name
    result = CliRunner().invoke(app, [*args, "-c", str(config)])
    return result.exit_code, result.output


def test_suppress_list_and_lift_through_the_cli(collector: tuple[Collector, Path]) -> None:
    c, config = collector
    code, out = cli(
        config,
        "suppress",
        "--rule",
        "scanning",
        "--actor",
        "ip:203.0.113.66",
        "--for",
        "2h",
        "--reason",
        "pentest",
    )
    assert code == 0, out
    [entry] = c.store.entries()
    assert (entry.rule, entry.actor, entry.until - entry.created, entry.reason) == (
        "scanning",
        "ip:203.0.113.66",
        7200.0,
        "pentest",
    )
    assert c.store.suppressed("scanning", "ip:203.0.113.66")
    code, out = cli(config, "suppressions")
    assert code == 0 and "203.0.113.66" in out
    code, out = cli(config, "suppress", "--for", "1h")
    assert code == 1 and "name a `rule`" in out  # the API's 400, shown
    cli(config, "suppress", "--actor", "subject:alice")
    code, out = cli(config, "suppress", "--rule", "token_reuse")
    assert code == 1 and "507" in out  # the cap is 2
    code, out = cli(config, "unsuppress", "--rule", "scanning", "--actor", "ip:203.0.113.66")
    assert code == 0 and "lifted" in out
    assert [e.details["action"] for e in c.logged if e.type == "audit.suppression"] == [
        "suppress",
        "suppress",
        "lift",
    ]


def test_changes_need_the_admin_token(collector: tuple[Collector, Path], tmp_path: Path) -> None:
    c, config = collector
    (tmp_path / "admin.token").write_text(secrets.token_urlsafe(32) + "\n")  # not the listener's
    (tmp_path / "admin.token").chmod(0o600)
    code, out = cli(config, "suppress", "--rule", "scanning")
    assert code == 1 and "401" in out
    assert c.store.entries() == []
