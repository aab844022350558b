"""`garrison up`'s own layer (supervisor.py) above the one supervisor (core/supervisor.py, tested in
tests/core/test_core_supervisor.py): which components it runs, in which order and how, what it prints,
and that a component failing its first start stops `up` with that component's error."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from garrison.config.loader import load_config
from garrison.core.supervisor import Supervisor
from garrison.supervisor import build_components, console_supervisor

CONFIG = {
    "identity": {"listen": "127.0.0.1:0", "issuer": "http://127.0.0.1:0", "tls": {"insecure_disable": True}},
    "gateway": {
        "listen": "127.0.0.1:0",
        "tls": {"insecure_disable": True},
        "admin": {"listen": "127.0.0.1:0"},
    },
    "services": {"demo": {"targets": ["http://127.0.0.1:9"]}},
    "routes": [{"match": {"path": "/"}, "service": "demo", "auth": {"require": "none"}}],
}


def write_config(tmp_path: Path, **changes: object) -> Path:
    path = tmp_path / "garrison.yaml"
    path.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"), **CONFIG, **changes}))
    return path


def test_identity_starts_before_the_gateway_each_as_in_production(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    run_dir = tmp_path / "run"
    specs = build_components(load_config(config), demo=False, run_dir=run_dir)
    assert [spec.name for spec in specs] == ["identity", "gateway"]
    for spec in specs:
        assert spec.argv == [sys.executable, "-m", "garrison", spec.name, "-c", str(config),
                             "--ready-file", str(run_dir / f"up-{spec.name}.ready")]  # fmt: skip
        assert spec.ready_file == run_dir / f"up-{spec.name}.ready" and spec.own_session


def test_without_identity_only_the_gateway(tmp_path: Path) -> None:
    loaded = load_config(write_config(tmp_path, identity=None))
    assert [spec.name for spec in build_components(loaded, False, tmp_path)] == ["gateway"]


def test_the_demo_upstream_comes_first_and_is_probed_on_its_port(tmp_path: Path) -> None:
    (tmp_path / "demo_upstream.py").write_text("")
    specs = build_components(load_config(write_config(tmp_path)), demo=True, run_dir=tmp_path)
    assert [spec.name for spec in specs] == ["demo upstream", "identity", "gateway"]
    assert specs[0].probe == ("127.0.0.1", 9) and specs[0].ready_file is None


def test_up_logs_and_prints_deaths_under_its_own_event_names() -> None:
    output = io.StringIO()
    supervisor = console_supervisor(Console(file=output, width=200))
    assert isinstance(supervisor, Supervisor) and supervisor.events == "up.component"


@pytest.mark.process
def test_a_component_failing_its_first_start_stops_up_with_its_error(tmp_path: Path) -> None:
    """The identity provider cannot bind (its port is in use): `up` says so, starts nothing else, exits 1."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        identity = {**CONFIG["identity"], "listen": f"127.0.0.1:{port}"}
        config = write_config(tmp_path, identity=identity)
        up = subprocess.run(
            [sys.executable, "-m", "garrison", "up", "-c", str(config)],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    assert up.returncode == 1, up.stderr
    assert "StartFailed: identity could not start: [Errno 98] Address already in use" in up.stderr
    assert "identity exited (exit_code 2) while starting" in up.stderr
    assert not (tmp_path / "state" / "run" / "up-gateway.ready").exists()  # never started
    assert "stopped." in up.stderr


MESH = {
    "ca": {"listen": "127.0.0.1:8700", "admin": {"listen": "127.0.0.1:0"}},
    "sidecars": {
        "orders": {"inbound": "127.0.0.1:15001", "outbound": "127.0.0.1:15000"},
        "payments": {"inbound": "127.0.0.1:15002", "outbound": "127.0.0.1:15010"},
    },
}
MESH_SERVICES = {
    "demo": {"targets": ["http://127.0.0.1:9"]},
    "orders": {"targets": ["http://127.0.0.1:7002"]},
    "payments": {"targets": ["http://127.0.0.1:7003"]},
}


def test_with_a_mesh_the_ca_and_the_sidecars_start_first_and_stop_last(tmp_path: Path) -> None:
    (tmp_path / "demo_upstream.py").write_text("")
    (tmp_path / "demo_mesh_app.py").write_text("")
    config = write_config(tmp_path, mesh=MESH, services=MESH_SERVICES)
    run_dir = tmp_path / "run"
    specs = build_components(load_config(config), demo=True, run_dir=run_dir)
    names = [spec.name for spec in specs]
    assert names[:3] == ["ca", "sidecar orders", "sidecar payments"]
    assert names[3:] == ["demo upstream", "orders app", "payments app", "identity", "gateway"]
    ca, orders = specs[0], specs[1]
    assert ca.argv == [sys.executable, "-m", "garrison", "ca", "serve", "-c", str(config),
                       "--ready-file", str(run_dir / "up-ca.ready")]  # fmt: skip
    ready = str(run_dir / "up-sidecar-orders.ready")
    assert orders.argv == [sys.executable, "-m", "garrison", "sidecar", "--service", "orders",
                           "-c", str(config), "--ready-file", ready]  # fmt: skip
    assert orders.prepare is not None and specs[-1].prepare is not None  # tokens, minted at each start
    assert specs[4].argv[-2:] == ["--outbound", "127.0.0.1:15000"] and specs[4].probe == ("127.0.0.1", 7002)


def test_a_token_that_cannot_be_minted_is_logged_and_the_sidecar_starts_without_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No CA yet (and its admin port 0: no API to ask): nothing minted, the sidecar will say why it
    cannot join. up's own GARRISON_JOIN_TOKEN, if it has one, is never handed down."""
    from garrison.telemetry import logging as log

    config = write_config(tmp_path, mesh=MESH, services=MESH_SERVICES)
    [_, orders, *_] = build_components(load_config(config), demo=False, run_dir=tmp_path)
    assert orders.prepare is not None
    log.configure("up", sys.stdout)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("GARRISON_JOIN_TOKEN", "gjt_inherited")
            asyncio.run(orders.prepare(orders))
    finally:
        log.configure("garrison", sys.__stderr__)
    assert orders.env is not None and "GARRISON_JOIN_TOKEN" not in orders.env
    assert '"event":"up.join_token.failed"' in capsys.readouterr().out
    assert "env=" not in repr(orders)  # where a token would be


VAULT = {"listen": "127.0.0.1:0", "dev": True}


def test_the_vault_starts_after_the_mesh_and_before_the_apps_that_read_its_secrets(tmp_path: Path) -> None:
    (tmp_path / "demo_upstream.py").write_text("")
    (tmp_path / "demo_mesh_app.py").write_text("")
    config = write_config(tmp_path, mesh=MESH, services=MESH_SERVICES, vault=VAULT)
    run_dir = tmp_path / "run"
    specs = build_components(load_config(config), demo=True, run_dir=run_dir)
    names = [spec.name for spec in specs]
    assert names == ["ca", "sidecar orders", "sidecar payments", "vault", "demo upstream", "orders app",
                     "payments app", "identity", "gateway"]  # fmt: skip
    vault, orders_app = specs[3], specs[5]
    assert vault.argv == [sys.executable, "-m", "garrison", "vault", "-c", str(config),
                          "--ready-file", str(run_dir / "up-vault.ready")]  # fmt: skip
    assert vault.prepare is not None  # a join token for spiffe://<td>/vault unless it can renew
    assert orders_app.prepare is not None  # the vault's address, the demo secret, a join token


def test_without_a_mesh_the_vault_runs_before_the_gateway_and_needs_no_token(tmp_path: Path) -> None:
    loaded = load_config(write_config(tmp_path, vault=VAULT))
    specs = build_components(loaded, False, tmp_path)
    assert [spec.name for spec in specs] == ["vault", "identity", "gateway"]
    assert specs[0].prepare is None


def test_demo_apps_are_told_how_to_reach_the_vault_and_orders_what_to_read(tmp_path: Path) -> None:
    from garrison import demo_vault

    config = load_config(write_config(tmp_path, mesh=MESH, services=MESH_SERVICES, vault=VAULT)).config
    orders = demo_vault.app_arguments(config, "orders", "127.0.0.1:8201")
    assert orders[:2] == ["--vault", "https://localhost:8201"]
    assert orders[-2:] == ["--vault-secret", "secret/orders/db"] and "--vault-database" not in orders
    with_pg = demo_vault.app_arguments(config, "orders", "127.0.0.1:8201", "postgresql://db:5432/orders")
    assert with_pg[-4:] == ["--vault-database", "database/creds/orders", "--database-url",
                            "postgresql://db:5432/orders"]  # fmt: skip
    payments = demo_vault.app_arguments(config, "payments", "127.0.0.1:8201")
    assert "--vault-secret" not in payments and "--identity" in payments
    assert payments[payments.index("--identity") + 1] == str(tmp_path / "state" / "apps" / "payments")
    done, url = demo_vault.configure_database(config, "127.0.0.1:8201", "mysql://db/orders")
    assert url is None and "not a postgresql:// URL" in done


def test_the_audit_collector_starts_before_the_components_that_send_it_events(tmp_path: Path) -> None:
    config = write_config(tmp_path, audit={"listen": "127.0.0.1:0", "admin": {"listen": "127.0.0.1:0"}})
    specs = build_components(load_config(config), demo=False, run_dir=tmp_path)
    assert [spec.name for spec in specs] == ["audit", "identity", "gateway"]
    assert specs[0].argv[3:6] == ["audit", "serve", "-c"]
