"""bench/audit's cheap parts: the collector config it writes passes Garrison's loader (TLS on, Sigma
on or off, no shipping), rsyslogd accepts both of its configs (``rsyslogd -N1``), and the event mix
is schema-valid, seeded, and mostly gateway requests."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from garrison.config.loader import parse_config
from garrison.events.schema import Event

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str) -> ModuleType:
    """bench/audit/<name>.py under its own name (the benchmarks are scripts, not a package)."""
    for folder in (BENCH, BENCH / "audit"):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    if name in sys.modules and Path(sys.modules[name].__file__ or "").parent == BENCH / "audit":
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCH / "audit" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("sigma", [True, False])
def test_the_collector_config_loads(tmp_path: Path, sigma: bool) -> None:
    servers = _load("servers")
    config = servers.collector_config(tmp_path / "state", sigma)
    audit = parse_config(yaml.safe_dump(config), base_dir=tmp_path).config.audit
    assert audit is not None
    assert audit.tls.insecure_disable is False
    assert audit.detection.enabled and audit.detection.sigma_builtin is sigma
    assert audit.database is None  # SQLite under state_dir
    assert audit.shipping.shippers == []


@pytest.mark.process
@pytest.mark.parametrize("sync", [False, True])
def test_rsyslog_accepts_its_config(tmp_path: Path, sync: bool) -> None:
    if shutil.which("rsyslogd") is None:
        pytest.skip("rsyslogd is not installed (apt-get install -y rsyslog)")
    servers = _load("servers")
    text = servers.rsyslog_conf(tmp_path, tmp_path / "out.jsonl", 15140, sync)
    assert ('sync="on"' in text) is sync and "%rawmsg%" in text
    (tmp_path / "rsyslog.conf").write_text(text)
    argv = ["rsyslogd", "-N1", "-f", str(tmp_path / "rsyslog.conf")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_mix_is_valid_seeded_and_mostly_requests() -> None:
    mix = _load("mix")
    events = mix.events(2000, 7, "bench")
    assert [e.to_json() for e in events[:50]] != [e.to_json() for e in mix.events(50, 8, "bench")]
    again = mix.events(2000, 7, "bench")
    assert [(e.type, e.details) for e in events] == [(e.type, e.details) for e in again]
    kinds = Counter(Event.from_json(e.to_json(), "token").type for e in events)
    assert 0.8 < kinds["http.request"] / len(events) < 0.95
    assert {"auth.login", "token.issued", "mesh.edge", "secret.read"} <= set(kinds)
