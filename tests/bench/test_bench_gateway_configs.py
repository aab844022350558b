"""bench/gateway's cheap parts: the bare proxy (the floor column) relays keep-alive requests, and the nginx
configs of the scaling and TLS columns, rendered as the run renders them, pass `nginx -t`.

nginx is skipped (with the reason) when it is not installed, except under CI=true, where the check must run.
"""

from __future__ import annotations

import http.client
import http.server
import importlib.util
import os
import shutil
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
GATEWAY = BENCH / "gateway"
BODY = b'{"ok":true}'
START_TIMEOUT = 20.0  # seconds for the proxy to accept connections: a bound on a hang, not a measurement

pytestmark = pytest.mark.process


def _load(path: Path, name: str) -> ModuleType:
    """A bench module under a name of its own (the benchmarks are scripts, not a package)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))  # for `common`, as the run scripts do
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


class _Upstream(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the benchmark's nginx upstream
    connections: set[tuple[str, int]] = set()

    def do_GET(self) -> None:
        _Upstream.connections.add(self.client_address)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def upstream() -> Iterator[int]:
    _Upstream.connections = set()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _accepts(port: int) -> str | None:
    """ "yes" once something accepts connections on port (the bare proxy prints nothing when ready)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=START_TIMEOUT).close()
    except ConnectionRefusedError:
        return None
    return "yes"


def test_the_bare_proxy_relays_two_keep_alive_gets_on_one_connection(upstream: int, tmp_path: Path) -> None:
    processes = _load(BENCH / "common" / "processes.py", "bench_common_processes")
    with processes.reserved_port() as port:  # held until the proxy listens on it (SO_REUSEADDR)
        argv = [sys.executable, str(GATEWAY / "bare_proxy.py"), "--listen", f"127.0.0.1:{port}"]
        argv += ["--upstream", f"127.0.0.1:{upstream}"]
        proxy = processes.Server("bare", argv, tmp_path / "bare.out")
        with proxy:
            processes.wait_for(proxy, lambda: _accepts(port), "did not listen", START_TIMEOUT)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=START_TIMEOUT)
            for number in range(2):
                conn.request("GET", "/", headers={"Host": "bench"})
                response = conn.getresponse()
                assert (response.status, response.read()) == (200, BODY)
                assert not response.will_close
                if number == 0:
                    first = conn.sock
            assert conn.sock is first  # one client connection served both
            assert len(_Upstream.connections) == 1  # and one upstream connection
            conn.close()


def _nginx() -> ModuleType:
    if shutil.which("nginx") is None:
        message = "nginx is not installed"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (CI must run this check)")
        pytest.skip(message)
    return _load(BENCH / "common" / "nginx.py", "bench_common_nginx")


def test_the_two_worker_configs_are_valid(tmp_path: Path) -> None:
    nginx = _nginx()
    for template, values in (
        ("upstream.conf", {"port": 18000, "workers": 2}),
        ("nginx-proxy.conf", {"port": 18080, "upstream_port": 18000, "workers": 2, "name": "nginx-w2"}),
    ):
        conf = nginx.render(GATEWAY / "templates" / template, tmp_path, **values)
        assert "worker_processes 2;" in conf.read_text()
        assert nginx.check(conf, tmp_path) == ""


def test_the_tls_config_is_valid(tmp_path: Path) -> None:
    nginx = _nginx()
    tls = _load(GATEWAY / "tls.py", "bench_gateway_tls")
    files = tls.make_certificate(tmp_path / "tls")
    assert files.key.stat().st_mode & 0o777 == 0o600
    values = {
        "port": 18443,
        "upstream_port": 18000,
        "cert": files.cert,
        "key": files.key,
        "name": "nginx-tls",
    }
    conf = nginx.render(GATEWAY / "templates" / "nginx-tls.conf", tmp_path, **values)
    text = conf.read_text()
    for directive in ("ssl_protocols TLSv1.3 TLSv1.2;", "ssl_session_cache off;", "keepalive 64;"):
        assert directive in text
    assert nginx.check(conf, tmp_path) == ""


def test_openssl_brief_output_is_read() -> None:
    tls = _load(GATEWAY / "tls.py", "bench_gateway_tls")
    brief = (
        "CONNECTION ESTABLISHED\nProtocol version: TLSv1.3\nCiphersuite: TLS_AES_256_GCM_SHA384\n"
        "Peer certificate: O = Garrison server\nServer Temp Key: X25519, 253 bits\n"
    )
    assert tls.parse_brief(brief) == "TLSv1.3 TLS_AES_256_GCM_SHA384 X25519"
    assert tls.parse_brief("Negotiated TLS1.3 group: X25519MLKEM768\n") == "? ? X25519MLKEM768"
