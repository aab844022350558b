"""bench/mesh's nginx pair: the configs it generates (with the run's certificates) pass `nginx -t`."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"

pytestmark = [
    pytest.mark.process,
    pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed"),
]


def _load(name: str) -> ModuleType:
    """bench/mesh/<name>.py under a name of its own (the benchmarks are scripts, not a package)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))  # for `common`, as the run script does
    spec = importlib.util.spec_from_file_location(f"bench_mesh_{name}", BENCH / "mesh" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_nginx_pair_configs_are_valid(tmp_path: Path) -> None:
    certs, servers = _load("certs"), _load("servers")
    nginx = sys.modules["common.nginx"]
    certs.make_certificates(tmp_path / "certs")
    inbound, outbound = servers.nginx_pair_configs(tmp_path, tmp_path / "certs", 18080, 18443, 18000)
    for conf in (inbound, outbound):
        assert nginx.check(conf, tmp_path) == ""
    text = inbound.read_text() + outbound.read_text()
    for directive in (
        "ssl_verify_client on;",
        "proxy_ssl_verify on;",
        "keepalive 64;",
        "proxy_http_version 1.1;",
    ):
        assert directive in text


def test_an_invalid_config_is_reported(tmp_path: Path) -> None:
    _load("servers")
    nginx = sys.modules["common.nginx"]
    conf = tmp_path / "broken.conf"
    conf.write_text(
        "events {}\nhttp { server { listen 127.0.0.1:1 ssl; ssl_certificate /nonexistent.pem; } }\n"
    )
    assert nginx.check(conf, tmp_path) != ""
