"""`garrison identity user|role|client|rotate-keys` as a user runs them (real processes, SQLite)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.process  # every test here starts real processes or listeners

GARRISON = Path(sys.executable).parent / "garrison"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "garrison.yaml"
    path.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"), "identity": {}}))
    return path


def run(config: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(GARRISON), "identity", *args, "-c", str(config)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_users_are_created_listed_and_disabled_without_showing_secrets(config: Path) -> None:
    password = "correct horse battery staple"
    created = run(
        config, "user", "create", "alice", "--email", "a@example.com", "--password-stdin", stdin=password
    )
    assert created.returncode == 0, created.stderr
    again = run(config, "user", "create", "alice", "--password-stdin", stdin=password)
    assert again.returncode == 1 and "alice" in again.stderr
    weak = run(config, "user", "create", "bob", "--password-stdin", stdin="short")
    assert weak.returncode == 1 and "12" in weak.stderr and "short" not in weak.stderr
    listing = run(config, "user", "list")
    assert "alice" in listing.stdout and "active" in listing.stdout
    assert "argon2" not in listing.stdout + listing.stderr and password not in listing.stdout
    assert run(config, "user", "disable", "alice").returncode == 0
    assert "disabled" in run(config, "user", "list").stdout
    missing = run(config, "user", "disable", "nobody")
    assert missing.returncode == 1 and "user list" in missing.stderr


def test_roles_and_clients(config: Path) -> None:
    assert run(config, "role", "create", "reader", "--scope", "orders:read").returncode == 0
    bad = run(config, "role", "create", "Bad Name", "--scope", "x")
    assert bad.returncode == 1
    created = run(config, "client", "create", "--name", "svc", "--role", "reader")
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert secret.startswith("gcs_")
    listing = run(config, "client", "list")
    assert "svc" in listing.stdout and "orders:read" in listing.stdout and secret not in listing.stdout
    unknown_role = run(config, "client", "create", "--name", "svc2", "--role", "nope")
    assert unknown_role.returncode == 1 and "role create" in unknown_role.stderr
    no_jwks = run(config, "client", "create", "--name", "svc3", "--auth-method", "private_key_jwt")
    assert no_jwks.returncode == 1 and "JWKS" in no_jwks.stderr


def test_rotate_keys_announces_once(config: Path) -> None:
    first = run(config, "rotate-keys")
    assert first.returncode == 0 and "announced" in first.stderr
    second = run(config, "rotate-keys")
    assert second.returncode == 0 and "already announced" in second.stderr
