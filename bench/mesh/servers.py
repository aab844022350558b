"""The mesh benchmark's processes: the app, the nginx mTLS pair and the Garrison sidecar pair.

Every column ends at the same app, the gateway benchmark's nginx upstream (``return 200
'{"ok":true}'``). A column is the address the load generator calls and the process groups that
serve the hop (none for `direct`), so that their CPU and memory can be counted.
"""

from __future__ import annotations

import http.client
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from common import nginx, processes
from common.processes import Server, StartError, reserved_port, wait_for

from garrison.core.ready import read_ready

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
UPSTREAM_TEMPLATE = HERE.parent / "gateway" / "templates" / "upstream.conf"
GARRISON_BIN = HERE.parent.parent / ".venv" / "bin" / "garrison"
EXPECTED_BODY = b'{"ok":true}'
READY_TIMEOUT = 30.0


class Pinning(processes.Pinning):
    """Both proxies of the hop (either pair) on core 0; the load generator and the app on core 1."""

    PINNED = (
        "pinned: the two proxies of the hop under test on core 0 (one core for the pair); "
        "wrk and the app nginx on core 1"
    )


@dataclass
class Column:
    """Where the load generator calls one column, and the processes that serve its hop."""

    name: str
    address: str  # host:port
    path: str = "/"  # what wrk asks for
    servers: list[Server] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.address}{self.path}"

    @property
    def target(self) -> str:
        """What gateway.loadgen's run_wrk takes as address: it calls http://<target>/."""
        return self.address + self.path.rstrip("/")


def get(url: str) -> tuple[int, bytes] | None:
    """GET url (plain http): (status, body), or None if nothing answered."""
    rest = url.removeprefix("http://")
    hostport, _, path = rest.partition("/")
    host, port = hostport.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=2.0)
    try:
        conn.request("GET", "/" + path)
        response = conn.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def wait_answers(server: Server, url: str) -> None:
    """Wait until GET url returns the app's 200 and body through server; stop it if it never does."""

    def answered() -> str | None:
        got = get(url)
        return url if got == (200, EXPECTED_BODY) else None

    try:
        wait_for(server, answered, f"GET {url} did not return the app's answer", READY_TIMEOUT)
    except BaseException:
        server.stop()
        raise


def start_nginx(stack: ExitStack, name: str, conf: Path, tmp: Path, prefix: list[str]) -> Server:
    return stack.enter_context(nginx.start(name, conf, tmp, prefix))


def start_app(stack: ExitStack, tmp: Path, pin: Pinning) -> Column:
    """The app (nginx, one worker) as the `direct` column: no hop at all."""
    with reserved_port() as port:  # held until nginx answers on it
        conf = nginx.render(UPSTREAM_TEMPLATE, tmp, port=port, workers=1)
        app = start_nginx(stack, "app", conf, tmp, pin.client())
        direct = Column("direct", f"127.0.0.1:{port}")
        wait_answers(app, direct.url)
    return direct


def app_port(direct: Column) -> int:
    return int(direct.address.rsplit(":", 1)[1])


def nginx_pair_configs(tmp: Path, certs: Path, port: int, inbound_port: int, app: int) -> tuple[Path, Path]:
    """The inbound and outbound nginx configs of the pair (rendered into tmp)."""
    inbound = nginx.render(
        TEMPLATES / "nginx-inbound.conf", tmp, port=inbound_port, app_port=app, certs=certs
    )
    outbound = nginx.render(
        TEMPLATES / "nginx-outbound.conf", tmp, port=port, inbound_port=inbound_port, certs=certs
    )
    return inbound, outbound


def start_nginx_pair(stack: ExitStack, tmp: Path, certs: Path, pin: Pinning, app: int) -> Column:
    """client -> nginx outbound -> mTLS -> nginx inbound -> app."""
    with reserved_port() as port, reserved_port() as inbound_port:
        inbound_conf, outbound_conf = nginx_pair_configs(tmp, certs, port, inbound_port, app)
        inbound = start_nginx(stack, "nginx-in", inbound_conf, tmp, pin.server())
        outbound = start_nginx(stack, "nginx-out", outbound_conf, tmp, pin.server())
        column = Column("nginx-pair", f"127.0.0.1:{port}", servers=[outbound, inbound])
        wait_answers(outbound, column.url)
    return column


def sidecar_config(tmp: Path, app: int, orders_in: int, payments_in: int) -> Path:
    """orders may GET anything of payments; both sidecars' apps are the app."""
    config = {
        "trust_domain": "bench.local",
        "state_dir": str(tmp / "garrison-state"),
        "services": {
            "orders": {
                "targets": [f"http://127.0.0.1:{app}"],
                "calls": [{"service": "payments", "methods": ["GET"]}],
            },
            "payments": {"targets": [f"http://127.0.0.1:{app}"]},
        },
        "mesh": {
            "sidecars": {
                "orders": {"inbound": f"127.0.0.1:{orders_in}", "outbound": "127.0.0.1:0"},
                "payments": {"inbound": f"127.0.0.1:{payments_in}"},
            }
        },
    }
    path = tmp / "garrison.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def start_sidecar(stack: ExitStack, tmp: Path, config: Path, service: str, prefix: list[str]) -> Server:
    ready = tmp / f"{service}-ready.json"
    argv = [*prefix, str(GARRISON_BIN), "sidecar", "-c", str(config), "--service", service]
    argv += ["--cert-dir", str(tmp / "certs" / service), "--ready-file", str(ready)]
    server = stack.enter_context(Server(f"sidecar-{service}", argv, tmp / f"sidecar-{service}.out"))
    wait_for(server, _ready_reader(ready), "wrote no ready file", READY_TIMEOUT)
    return server


def _ready_reader(ready: Path) -> Callable[[], str | None]:
    def read() -> str | None:
        found = read_ready(ready)
        return None if found is None else found.listeners.get("outbound") or found.listeners.get("inbound")

    return read


def start_sidecar_pair(stack: ExitStack, tmp: Path, pin: Pinning, app: int) -> Column:
    """client -> orders' sidecar outbound -> mTLS -> payments' sidecar inbound -> app."""
    if not GARRISON_BIN.exists():
        raise StartError(f"{GARRISON_BIN} not found (make .venv/.installed)")
    with reserved_port() as orders_in, reserved_port() as payments_in:
        config = sidecar_config(tmp, app, orders_in, payments_in)
        payments = start_sidecar(stack, tmp, config, "payments", pin.server())
        orders = start_sidecar(stack, tmp, config, "orders", pin.server())
    found = read_ready(tmp / "orders-ready.json")
    assert found is not None  # start_sidecar waited for it
    column = Column("sidecar-pair", found.listeners["outbound"], "/payments/", [orders, payments])
    wait_answers(orders, column.url)
    return column
