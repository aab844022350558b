"""``garrison db status|upgrade`` on SQLite and on a PostgreSQL database of the test's own."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from sqlalchemy import text
from typer.testing import CliRunner

import garrison.gateway.auth.apikeys
import garrison.identity.tables  # noqa: F401  (both components' tables on the shared metadata)
from garrison import dbcli
from garrison.cli import app
from garrison.store.db import create_all, make_engine


async def _execute(url: str, statement: str) -> None:
    engine = make_engine(url, Path("unused"))
    try:
        async with engine.connect() as connection:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            await connection.execute(text(statement))
    finally:
        await engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """None (SQLite in state_dir) or the URL of a new PostgreSQL database, dropped at the end."""
    if request.param == "sqlite":
        yield None
        return
    url: str = request.getfixturevalue("postgres_url")
    name = f"garrison_test_{secrets.token_hex(6)}"
    asyncio.run(_execute(url, f"CREATE DATABASE {name}"))
    try:
        yield url.rsplit("/", 1)[0] + "/" + name
    finally:
        asyncio.run(_execute(url, f"DROP DATABASE {name} WITH (FORCE)"))


def _config(tmp_path: Path, database: str | None) -> Path:
    settings: dict[str, object] = {"state_dir": str(tmp_path / "state"), "identity": {}}
    if database is not None:
        settings["identity"] = {"database": database}
        settings["gateway"] = {"api_keys": {"database": database}}
    return _write(tmp_path, settings)


def _config_of_all(tmp_path: Path, database: str | None) -> Path:
    """Every component with tables: identity, gateway API keys, the mesh CA, the vault, the audit index."""
    settings: dict[str, object] = {
        "state_dir": str(tmp_path / "state"),
        "identity": {},
        "mesh": {"ca": {}},
        "vault": {},
        "audit": {},
    }
    if database is not None:
        settings["identity"] = {"database": database}
        settings["gateway"] = {"api_keys": {"database": database}}
        settings["mesh"] = {"ca": {"database": database}}
        settings["vault"] = {"database": database}
        settings["audit"] = {"database": database}
    return _write(tmp_path, settings)


def _write(tmp_path: Path, settings: dict[str, object]) -> Path:
    path = tmp_path / "garrison.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


@pytest.fixture(autouse=True)
def _wide_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """rich fixes the console width from COLUMNS when dbcli is imported: make the table one line per row."""
    monkeypatch.setattr(dbcli.out, "width", 200)


def _db(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["db", *args], env={"COLUMNS": "200"})
    return result.exit_code, result.output


@pytest.mark.process
def test_status_then_upgrade(tmp_path: Path, database: str | None) -> None:
    config = str(_config(tmp_path, database))
    code, output = _db("status", "-c", config, "--check")
    assert code == 1, output
    assert "identity_0002" in output and "gateway_0001" in output and "no tables" in output

    code, output = _db("upgrade", "-c", config)
    assert code == 0, output
    assert output.count("up to date") == 2

    code, output = _db("status", "-c", config, "--check")
    assert code == 0, output
    lines = [line for line in output.splitlines() if "identity" in line]
    assert len(lines) == 1 and lines[0].count("identity_0002") == 2  # current and head


@pytest.mark.process
def test_every_component_with_tables_is_migrated(tmp_path: Path, database: str | None) -> None:
    config = str(_config_of_all(tmp_path, database))
    code, output = _db("status", "-c", config, "--check")
    assert code == 1, output
    for head in ("identity_0002", "gateway_0001", "mesh_0002", "vault_0001", "audit_0001"):
        assert head in output, output
    code, output = _db("upgrade", "-c", config)
    assert code == 0 and output.count("up to date") == 5, output
    assert _db("status", "-c", config, "--check")[0] == 0


@pytest.mark.process
def test_upgrade_adopts_a_database_created_before_migrations(tmp_path: Path, database: str | None) -> None:
    config = _config(tmp_path, database)

    async def legacy() -> None:
        engine = make_engine(database, tmp_path / "state")
        try:
            await create_all(engine)
        finally:
            await engine.dispose()

    asyncio.run(legacy())
    code, output = _db("status", "-c", str(config))
    assert code == 0 and output.count("created before") == 2, output  # rich may wrap the cell
    code, output = _db("upgrade", "-c", str(config))
    assert code == 0 and output.count("up to date") == 2, output


def test_a_bad_config_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "garrison.yaml"
    path.write_text("store: {migrate_at_strat: false}\n")
    code, output = _db("status", "-c", str(path))
    assert code == 2 and "migrate_at_strat" in output
