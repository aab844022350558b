"""What `make demo` shows once everything is up: an open route, then a service that gets a token
from the identity provider with client_credentials and calls a protected route with it; then, with
a ``mesh`` section, a call between services that the mesh allows (orders -> payments, through both
sidecars, with the caller identity payments saw) and one it refuses (payments -> orders, 403, with
the ``mesh.call.denied`` line orders' sidecar logged). The vault's part is demo_vault.py; with an
``audit`` section, the demo ends with demo_attack.py's scripted attack and its audit trail.

Everything goes over the same sockets and TLS a user's curl would use; the demo client is
registered afresh on each run. Its secret is written to ``state_dir/demo-client.secret`` (0600) and
the "try it yourself" line reads it from there with ``$(cat ...)``: the secret never reaches the
terminal, its scrollback, or whatever log `garrison up` is piped into.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import shlex
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from rich.console import Console

from garrison.config.model import GarrisonConfig
from garrison.pki.tls import auto_trust_file

DEMO_CLIENT = "demo-service"
SECRET_FILE = "demo-client.secret"  # noqa: S105 - a file name, under state_dir


def _context(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca) if ca.exists() else None)


def _call(url: str, context: ssl.SSLContext | None, headers: dict[str, str] | None = None,
          data: bytes | None = None) -> tuple[int, str]:  # fmt: skip
    request = urllib.request.Request(url, data=data, headers=headers or {})  # noqa: S310 - our own URL
    try:
        with urllib.request.urlopen(request, context=context, timeout=5) as response:  # noqa: S310
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


def gateway_url(config: GarrisonConfig, gateway_listen: str, path: str) -> tuple[str, ssl.SSLContext | None]:
    port = gateway_listen.rpartition(":")[2]
    if config.gateway.tls.insecure_disable:
        return f"http://localhost:{port}{path}", None
    return f"https://localhost:{port}{path}", _context(auto_trust_file(config, config.state_dir))


def open_route(config: GarrisonConfig, gateway_listen: str, console: Console) -> None:
    url, context = gateway_url(config, gateway_listen, "/api/hello?from=garrison-up")
    try:
        status, body = _call(url, context)
    except OSError as exc:
        console.print(f"[red]demo request failed:[/red] {exc}")
        return
    console.print(f"[green]GET {url} -> {status}[/green] (an open route)")
    console.print(body.strip())
    ca = f"--cacert {auto_trust_file(config, config.state_dir)} " if context is not None else ""
    console.print(f"\nTry it yourself:  [bold]curl -i {ca}{url}[/bold]", soft_wrap=True)


async def _register_demo_client(config: GarrisonConfig) -> dict[str, Any]:
    from garrison.identity.clients import ClientStore
    from garrison.identity.migrations import SCHEMA
    from garrison.pki.kek import KeyEncryption
    from garrison.store.db import make_engine
    from garrison.store.startup import prepare_schema

    assert config.identity is not None
    engine = make_engine(config.identity.database, config.state_dir)
    try:
        await prepare_schema(engine, SCHEMA, config.store)
        store = ClientStore(engine, KeyEncryption.load(config.state_dir))
        await store.delete(DEMO_CLIENT)
        created = await store.create(DEMO_CLIENT, scopes=["orders:read"])
        return {"client_id": created.record.client_id, "client_secret": created.secret}
    finally:
        await engine.dispose()


def write_secret(state_dir: Path, secret: str) -> Path:
    """``secret`` in ``state_dir/demo-client.secret``, readable by its owner only from the first byte.

    The file is created 0600 (and chmod'ed, in case an older one was wider) before anything is written.
    """
    path = state_dir / SECRET_FILE
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(descriptor, "w") as file:
        os.fchmod(file.fileno(), 0o600)
        file.write(secret + "\n")
    return path


def protected_route(config: GarrisonConfig, gateway_listen: str, console: Console) -> None:
    """client_credentials at the identity provider, then the token on a `require: jwt` route."""
    identity = config.identity
    if identity is None:
        return
    client = asyncio.run(_register_demo_client(config))
    secret_file = write_secret(config.state_dir, client["client_secret"])
    idp_ca = auto_trust_file(config, config.state_dir / "identity")
    idp_context = None if identity.tls.insecure_disable else _context(idp_ca)
    basic = base64.b64encode(f"{client['client_id']}:{client['client_secret']}".encode()).decode()
    try:
        status, body = _call(
            identity.issuer + "/token",
            idp_context,
            {"Authorization": f"Basic {basic}", "Content-Type": "application/x-www-form-urlencoded"},
            b"grant_type=client_credentials&scope=orders:read",
        )
    except OSError as exc:
        console.print(f"[red]token request failed:[/red] {exc}")
        return
    if status != 200:
        console.print(f"[red]token request -> {status}[/red] {body}")
        return
    token = json.loads(body)["access_token"]
    console.print(f"\n[green]POST {identity.issuer}/token -> 200[/green] (client_credentials, {DEMO_CLIENT})")
    url, context = gateway_url(config, gateway_listen, "/api/orders/42")
    without, _ = _call(url, context)
    console.print(f"GET {url} without a token -> {without}")
    status, body = _call(url, context, {"Authorization": f"Bearer {token}"})
    console.print(f"[green]GET {url} with the token -> {status}[/green]")
    console.print(body.strip())
    gw_ca = f"--cacert {auto_trust_file(config, config.state_dir)} " if context is not None else ""
    idp_ca_flag = f"--cacert {idp_ca} " if idp_context is not None else ""
    console.print(
        f"\nTry it yourself ({DEMO_CLIENT}'s secret is in {secret_file}, readable by you only):\n"
        f'  TOKEN=$(curl -s {idp_ca_flag}-u "{client["client_id"]}:$(cat {shlex.quote(str(secret_file))})" '
        f"-d grant_type=client_credentials {identity.issuer}/token | python3 -c "
        "'import json,sys; print(json.load(sys.stdin)[\"access_token\"])')\n"
        f'  curl -i {gw_ca}-H "Authorization: Bearer $TOKEN" {url}',
        soft_wrap=True,
        markup=False,
    )


def _app_url(config: GarrisonConfig, service: str, path: str) -> str:
    """The demo app of ``service`` (its first target: examples/demo_mesh_app.py listens there)."""
    return config.services[service].targets[0].rstrip("/") + path


def _traceparent() -> tuple[str, str]:
    """A fresh W3C trace context, so the sidecars' log lines of one demo call can be picked out."""
    trace_id = secrets.token_hex(16)
    return trace_id, f"00-{trace_id}-{secrets.token_hex(8)}-01"


def mesh_calls(config: GarrisonConfig, console: Console) -> None:
    """orders' app calls payments (allowed), payments' app calls orders (denied), each through its
    own sidecar's outbound port; what came back, and who payments was told called it."""
    mesh = config.mesh
    if mesh is None or not {"orders", "payments"} <= set(mesh.sidecars):
        return
    console.print(
        "\n[bold]The mesh[/bold]: apps call their peers through their own sidecar (mTLS, default deny)"
    )
    try:
        _allowed_call(config, console)
        _denied_call(config, console)
    except OSError as exc:
        console.print(f"[red]demo call failed:[/red] {exc}")


def _app_call(config: GarrisonConfig, caller: str, path: str, headers: dict[str, str]) -> tuple[int, Any]:
    """POST to ``caller``'s app, which makes the call through its sidecar: status and the app's JSON."""
    url = _app_url(config, caller, "/call" + path)
    status, body = _call(url, None, {"content-type": "application/json", **headers}, b'{"amount": 42}')
    try:
        return status, json.loads(body)
    except ValueError:
        return status, {"answer": body}


def _allowed_call(config: GarrisonConfig, console: Console) -> None:
    status, answer = _app_call(config, "orders", "/payments/charges", {})
    colour = "green" if status == 200 else "red"
    console.print(
        f"[{colour}]orders -> payments: POST /charges -> {status}[/{colour}] (allowed: services.orders.calls)"
    )
    seen = answer.get("answer")
    if isinstance(seen, dict):
        console.print(f"  payments' app saw the caller {seen.get('caller')} (its sidecar verified it)")


def _denied_call(config: GarrisonConfig, console: Console) -> None:
    trace_id, traceparent = _traceparent()
    status, _ = _app_call(config, "payments", "/orders/orders/42", {"traceparent": traceparent})
    colour = "green" if status == 403 else "red"
    console.print(f"[{colour}]payments -> orders: POST /orders/42 -> {status}[/{colour}] (no rule allows it)")
    # The sidecar logs to the terminal up runs in, before it answers: the line is already above.
    console.print(
        f"  orders' sidecar refused it and logged the mesh.call.denied line above (trace_id {trace_id})",
        soft_wrap=True,
        markup=False,
    )
