"""core/ready.py: the one ready-file schema, written atomically, read back as a typed object or None."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from garrison.core.ready import READY_VERSION, Ready, read_ready, write_ready


def test_round_trip_and_schema(tmp_path: Path) -> None:
    path = tmp_path / "gw.ready"
    ready = Ready("gateway", 1234, {"gateway": "127.0.0.1:8443", "admin": "[::1]:9090"}, {"workers": 2})
    write_ready(path, ready)
    assert json.loads(path.read_text()) == {
        "version": READY_VERSION,
        "component": "gateway",
        "pid": 1234,
        "listeners": {"gateway": "127.0.0.1:8443", "admin": "[::1]:9090"},
        "details": {"workers": 2},
    }
    assert read_ready(path) == ready
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert os.listdir(tmp_path) == ["gw.ready"]  # no temporary file left behind


def test_private_mode(tmp_path: Path) -> None:
    write_ready(tmp_path / "r", Ready("identity", 1, {}), mode=0o600)
    assert stat.S_IMODE((tmp_path / "r").stat().st_mode) == 0o600


def test_rewriting_replaces_the_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "r"
    write_ready(path, Ready("identity", 1, {"identity": "127.0.0.1:1"}, {"issuer": "https://a.example"}))
    write_ready(path, Ready("identity", 2, {"identity": "127.0.0.1:2"}))
    assert read_ready(path) == Ready("identity", 2, {"identity": "127.0.0.1:2"}, {})


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "r"
    old = Ready("gateway", 1, {"gateway": "127.0.0.1:1"})
    write_ready(path, old)
    with pytest.raises(TypeError):
        write_ready(path, Ready("gateway", 2, {}, {"not json": object()}))
    assert read_ready(path) == old and os.listdir(tmp_path) == ["r"]


@pytest.mark.parametrize(
    "text",
    [
        "",  # created, nothing written yet
        '{"version": 1, "component": "gateway", "pid": 12',  # caught half-way
        '{"pid": 12, "listeners": {"gateway": "127.0.0.1:1"}}',  # the format before version 1
        '{"identity": "127.0.0.1:1", "issuer": "https://a"}',  # the identity format before version 1
        '{"version": 2, "component": "gateway", "pid": 12, "listeners": {}, "details": {}}',
        '{"version": 1, "component": "gateway", "pid": "12", "listeners": {}, "details": {}}',
        '{"version": 1, "component": "gateway", "pid": 12, "listeners": {"a": 1}, "details": {}}',
        '{"version": 1, "component": "gateway", "pid": 12, "listeners": [], "details": {}}',
        "[1]",
    ],
)
def test_anything_else_is_not_ready(tmp_path: Path, text: str) -> None:
    path = tmp_path / "r"
    path.write_text(text)
    assert read_ready(path) is None


def test_missing_is_not_ready(tmp_path: Path) -> None:
    assert read_ready(tmp_path / "absent") is None
