"""The processes under test: start each on a free loopback port, wait until it answers, stop it.

Process groups, readiness polling, stopping and CPU accounting live in common.processes; here is what
each column runs: the nginx upstream and proxies (one worker, two workers, TLS), the bare and aiohttp
proxies, and Garrison in its configurations (GarrisonVariant: plain, chain, Redis, pure Python, two
workers, TLS).
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import socket
import ssl
import string
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from common import processes
from common.processes import StartError, Unavailable, reserved_port, wait_for
from issuer import Issuer
from loadgen import LoadShape
from tls import TlsFiles, client_context

from garrison.core.ready import read_ready

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
REPO = HERE.parent.parent
GARRISON_BIN = REPO / ".venv" / "bin" / "garrison"
EXPECTED_BODY = b'{"ok":true}'
READY_TIMEOUT = 20.0


class Pinning(processes.Pinning):
    """The proxy under test alone on core 0; the load generator and the upstream on core 1."""

    PINNED = (
        "pinned: proxy under test on core 0; wrk/hey and the upstream nginx on core 1 "
        "(so in the direct column wrk and the upstream share core 1)"
    )

    def upstream(self) -> list[str]:
        return self.client()


class Server(processes.Server):
    """A started column: its process group, where it answers, and what every request to it carries."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        super().__init__(name, argv, log_path, env)
        self.address = ""  # "host:port" once the server answers
        self.headers: dict[str, str] = {}  # sent with every request: readiness check, wrk and hey
        self.ca: Path | None = None  # set for a TLS column: the CA its certificate is checked against
        self.shape = LoadShape()  # how wrk (or hey) saturates it


def get_status(
    address: str, headers: dict[str, str], ca: Path | None = None
) -> tuple[int, bytes, str] | None:
    """GET / at address (over TLS checked against ca if given): (status, body, WWW-Authenticate), or None
    if nothing answered."""
    host, port = address.rsplit(":", 1)
    conn = (
        http.client.HTTPSConnection(host, int(port), timeout=1.0, context=client_context(ca))
        if ca is not None
        else http.client.HTTPConnection(host, int(port), timeout=1.0)
    )
    try:
        conn.request("GET", "/", headers=headers)
        response = conn.getresponse()
        return response.status, response.read(), response.getheader("WWW-Authenticate", "")
    except (OSError, http.client.HTTPException, ssl.SSLError):
        return None
    finally:
        conn.close()


def answers(server: Server, address: str) -> bool:
    """True when GET / (with the server's headers) returns 200 with the upstream's body.

    A 401 or 403 is final: the gateway is up but refuses the benchmark's request (token, IP rules),
    so waiting longer would only hide why.
    """
    got = get_status(address, server.headers, server.ca)
    if got is not None and got[0] in (401, 403):
        status, body, challenge = got
        detail = f" (WWW-Authenticate: {challenge})" if challenge else ""
        raise StartError(f"GET / was refused with {status}{detail}: {body[:200]!r}")
    return got is not None and got[0] == 200 and got[1] == EXPECTED_BODY


def started(server: Server, address: str) -> Server:
    """Wait for server to answer at address; stop it and raise StartError if it does not."""

    def answered() -> str | None:
        return address if answers(server, address) else None

    try:
        server.address = wait_for(server, answered, "did not answer GET /", READY_TIMEOUT)
    except BaseException:
        server.stop()
        raise
    return server


class _NginxTemplate(string.Template):
    delimiter = "@"  # nginx itself uses "$" for its variables


def render_nginx(template: str, tmp: Path, name: str | None = None, **values: object) -> Path:
    """tmp/<name or template's stem>.conf: the template with tmp, name and values filled in."""
    name = name or Path(template).stem
    text = _NginxTemplate((TEMPLATES / template).read_text()).substitute(tmp=tmp, name=name, **values)
    conf = tmp / f"{name}.conf"
    conf.write_text(text)
    return conf


def start_nginx(
    name: str, conf: Path, tmp: Path, prefix: list[str], port: int, tls: TlsFiles | None = None
) -> Server:
    directives = f"daemon off; pid {tmp / name}.pid;"
    argv = [*prefix, "nginx", "-p", str(tmp), "-c", str(conf), "-g", directives]
    server = Server(name, argv, tmp / f"{name}.out")
    server.ca = tls.ca if tls else None
    return started(server, f"127.0.0.1:{port}")


def start_upstream(tmp: Path, pin: Pinning, workers: int = 1) -> Server:
    """The nginx upstream: pinned with the client (the main columns), or unpinned with two workers
    (the scaling section, whose proxies use both cores)."""
    with reserved_port() as port:  # held until nginx answers on it
        conf = render_nginx("upstream.conf", tmp, port=port, workers=workers)
        return start_nginx("upstream", conf, tmp, pin.upstream(), port)


def start_nginx_proxy(
    tmp: Path, pin: Pinning, upstream_port: int, name: str = "nginx", workers: int = 1
) -> Server:
    with reserved_port() as port:  # held until nginx answers on it
        values = {"port": port, "upstream_port": upstream_port, "workers": workers}
        conf = render_nginx("nginx-proxy.conf", tmp, name, **values)
        return start_nginx(name, conf, tmp, pin.server(), port)


def start_nginx_tls(tmp: Path, pin: Pinning, upstream_port: int, name: str, tls: TlsFiles) -> Server:
    """nginx terminating TLS with the run's certificate, no session cache (templates/nginx-tls.conf)."""
    with reserved_port() as port:  # held until nginx answers on it
        values = {"port": port, "upstream_port": upstream_port, "cert": tls.cert, "key": tls.key}
        conf = render_nginx("nginx-tls.conf", tmp, name, **values)
        return start_nginx(name, conf, tmp, pin.server(), port, tls)


def start_aiohttp(tmp: Path, pin: Pinning, upstream_port: int, loop: str) -> Server:
    script = HERE / "aiohttp_proxy.py"
    upstream = f"http://127.0.0.1:{upstream_port}"
    with reserved_port() as port:  # held until aiohttp answers on it
        argv = [*pin.server(), sys.executable, str(script), "--listen", f"127.0.0.1:{port}"]
        argv += ["--upstream", upstream, "--loop", loop]
        return started(Server("aiohttp", argv, tmp / "aiohttp.out"), f"127.0.0.1:{port}")


def start_bare(tmp: Path, pin: Pinning, upstream_port: int) -> Server:
    """The floor: the bare uvloop + httptools proxy (bare_proxy.py) on the same core as the others."""
    script = HERE / "bare_proxy.py"
    with reserved_port() as port:  # held until it answers on it
        argv = [*pin.server(), sys.executable, str(script), "--listen", f"127.0.0.1:{port}"]
        argv += ["--upstream", f"127.0.0.1:{upstream_port}"]
        return started(Server("bare", argv, tmp / "bare.out"), f"127.0.0.1:{port}")


@dataclass(frozen=True)
class GarrisonVariant:
    """One Garrison column: what its config adds to the plain one, and what every request must carry."""

    name: str  # the column's name; also names its files in the temporary directory
    gateway: dict[str, object] = field(default_factory=dict)  # merged into `gateway:`
    top: dict[str, object] = field(default_factory=dict)  # top-level keys (`redis:`)
    route: dict[str, object] = field(default_factory=dict)  # merged into the one route
    headers: dict[str, str] = field(default_factory=dict)
    binary: Path = GARRISON_BIN  # another checkout's .venv/bin/garrison for a `--baseline` column
    env: dict[str, str] = field(default_factory=dict)  # added to the environment it runs in
    workers: int = 1  # gateway.workers
    tls: TlsFiles | None = None  # serve TLS with these files; None: plaintext (tls.insecure_disable)


def as_baseline(variant: GarrisonVariant, checkout: Path) -> GarrisonVariant:
    """The same column run by the Garrison installed in `checkout`'s .venv (named `<name>@base`)."""
    binary = checkout.resolve() / ".venv" / "bin" / "garrison"
    return dataclasses.replace(variant, name=f"{variant.name}@base", binary=binary)


PLAIN = GarrisonVariant("garrison")
# The plain column on the pure-Python path (no compiled hot modules), once GARRISON_PURE_PYTHON exists.
PURE = GarrisonVariant("garrison-pure", env={"GARRISON_PURE_PYTHON": "1"})
WORKERS_2 = GarrisonVariant("garrison-w2", workers=2)


def tls_variant(name: str, tls: TlsFiles) -> GarrisonVariant:
    """The plain column serving TLS with the run's certificate (garrison-tls, garrison-tls-new)."""
    return GarrisonVariant(name, tls=tls)


REDIS_URL = "redis://127.0.0.1:6379/0"
BENCH_AUDIENCE = BENCH_SCOPE = "bench"
NEVER_LIMITED = "10000000/minute"  # far above anything one core can serve: the limiter counts, never refuses


def chain_variant(issuer: Issuer) -> GarrisonVariant:
    """The full security chain: global IP deny list, JWT with a scope, a memory rate limit per IP."""
    token = issuer.mint(BENCH_AUDIENCE, BENCH_SCOPE)
    return GarrisonVariant(
        "garrison-chain",
        gateway={
            "ip_rules": {"deny": ["192.0.2.0/24"]},
            "jwt": {"issuer": issuer.url, "jwks_url": issuer.jwks_url, "audiences": [BENCH_AUDIENCE]},
        },
        route={
            "auth": {"require": "jwt", "scopes": [BENCH_SCOPE]},
            "rate_limit": {"rate": NEVER_LIMITED, "key": "ip", "strategy": "fixed_window"},
        },
        headers={"Authorization": f"Bearer {token}"},
    )


def redis_variant() -> GarrisonVariant:
    """The plain column plus a Redis-backed rate limit on the route (one shared counter)."""
    return GarrisonVariant(
        "garrison-redis",
        top={"redis": {"url": REDIS_URL}},
        route={
            "rate_limit": {
                "rate": NEVER_LIMITED,
                "key": "route",
                "strategy": "fixed_window",
                "storage": "redis",
            }
        },
    )


def check_redis(host: str = "127.0.0.1", port: int = 6379) -> None:
    """Raise Unavailable unless a Redis answers PING at host:port."""
    try:
        with socket.create_connection((host, port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            reply = sock.recv(64)
    except OSError as exc:
        raise Unavailable(f"Redis unreachable at {host}:{port} ({exc})") from None
    if not reply.startswith(b"+PONG"):
        raise Unavailable(f"Redis at {host}:{port} answered PING with {reply[:40]!r}")


def garrison_config(tmp: Path, port: int, upstream_port: int, variant: GarrisonVariant = PLAIN) -> Path:
    route: dict[str, object] = {
        "match": {"path": "/", "prefix": True},
        "service": "upstream",
        "auth": {"require": "none"},  # every route must say how it authenticates
    }
    route.update(variant.route)
    config = {
        "state_dir": str(tmp / f"{variant.name}-state"),
        "gateway": {
            "listen": f"127.0.0.1:{port}",
            "workers": variant.workers,
            # plaintext like nginx, unless the column is one of the TLS ones
            "tls": {"cert": str(variant.tls.cert), "key": str(variant.tls.key)}
            if variant.tls
            else {"insecure_disable": True},
            "admin": {"listen": "127.0.0.1:0"},  # Prometheus /metrics: always collected
            "access_log": {"path": str(tmp / f"{variant.name}-access.log")},
            **variant.gateway,
        },
        "services": {"upstream": {"targets": [f"http://127.0.0.1:{upstream_port}"]}},
        "routes": [route],
        **variant.top,
    }
    path = tmp / f"{variant.name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def ready_address(ready: Path) -> str | None:
    """The gateway's "host:port" from the ready file Garrison writes once it listens (core/ready.py)."""
    found = read_ready(ready)
    if found is not None:
        return found.listeners.get("gateway")
    try:  # a `--baseline` checkout from before the one ready-file schema (issue 8)
        listeners = json.loads(ready.read_text())["listeners"]
        return str(listeners.get("gateway") or listeners["main"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # not written yet, or written half-way


def start_garrison(tmp: Path, pin: Pinning, upstream_port: int, variant: GarrisonVariant = PLAIN) -> Server:
    if not variant.binary.exists():
        raise StartError(f"{variant.binary} not found (is the package installed in that .venv?)")
    config = garrison_config(tmp, 0, upstream_port, variant)  # port 0: the ready file says which
    ready = tmp / f"{variant.name}-ready.json"
    argv = [*pin.server(), str(variant.binary), "gateway", "-c", str(config), "--ready-file", str(ready)]
    env = {**os.environ, **variant.env} if variant.env else None
    server = Server(variant.name, argv, tmp / f"{variant.name}.out", env)
    server.headers = dict(variant.headers)
    server.ca = variant.tls.ca if variant.tls else None
    try:
        address = wait_for(server, lambda: ready_address(ready), "wrote no ready file", READY_TIMEOUT)
    except BaseException:
        server.stop()
        raise
    server = started(server, address)
    if variant.headers:
        check_refused_without_headers(server)
    return server


def check_refused_without_headers(server: Server) -> None:
    """The chain must be enforced: without its Authorization header the same request gets 401."""
    got = get_status(server.address, {}, server.ca)
    if got is None or got[0] != 401:
        server.stop()
        seen = "no answer" if got is None else f"{got[0]}"
        raise StartError(f"GET / without a token returned {seen}, expected 401: the chain is not enforced")
