"""The vault in `make demo`: the set-up before the apps start, and what the demo shows once they have.

Set-up (``seed_secret``, called by ``up`` before the orders app starts): the database password of
orders is put at ``secret/orders/db`` through the vault's API, with the dev-mode root token the vault
keeps in ``state_dir/vault/dev-root.token`` (0600). Only when absent (``cas: 0``): a restarted app
reads the same password. The password is random, made here, and never printed or logged.

Then the apps (examples/demo_mesh_app.py) join the mesh with workload certificates of their own and
log in with them (``auth/cert/login``): no bootstrap secret. Orders reads its password before it
serves. ``vault_calls`` asks the apps what happened and prints it: which identity logged in, with
which policies (generated from ``services.<name>.secrets``), where the password came from (never the
password), and that payments, whose policies do not grant it, is refused orders' secret (403).
"""

from __future__ import annotations

import json
import secrets
import shlex
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from rich.console import Console

from garrison.config.model import GarrisonConfig
from garrison.pki.tls import auto_trust_file

__all__ = ["DEMO_SECRET", "app_arguments", "seed_secret", "vault_calls", "vault_url"]

DEMO_SECRET = "secret/orders/db"  # noqa: S105 - a path in the vault, not a secret
ROOT_TOKEN_FILE = "dev-root.token"  # noqa: S105 - a file name (vault/core.py writes it in dev mode)
DEMO_CREDS = "database/creds/orders"
# A PostgreSQL the demo may create login roles in (a superuser's URL): then orders gets dynamic
# credentials. Unset (a fresh machine): orders reads the KV secret.
POSTGRES_ENV = "GARRISON_DEMO_POSTGRES_URL"


def vault_url(config: GarrisonConfig, address: str) -> str:
    """The URL of the vault listening at ``address`` (``localhost``: its ``auto`` certificate's name)."""
    assert config.vault is not None
    scheme = "http" if config.vault.tls.insecure_disable else "https"
    return f"{scheme}://localhost:{address.rpartition(':')[2]}"


def _trust(config: GarrisonConfig) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(auto_trust_file(config, config.state_dir / "vault")))


def app_arguments(
    config: GarrisonConfig, service: str, address: str, database: str | None = None
) -> list[str]:
    """What a demo app needs to join the mesh and log in to the vault at ``address``; ``database``:
    the URL (no credentials) orders connects to with dynamic credentials from ``database/creds/orders``."""
    assert config.mesh is not None and config.mesh.ca.url is not None
    args = [
        *("--vault", vault_url(config, address)),
        *("--vault-ca", str(auto_trust_file(config, config.state_dir / "vault"))),
        *("--ca-url", config.mesh.ca.url),
        *("--ca-bundle", str(config.state_dir / "ca" / "bundle.pem")),
        *("--identity", str(app_identity_directory(config, service))),
    ]
    if service != "orders":
        return args
    dynamic = ["--vault-database", DEMO_CREDS, "--database-url", database] if database else []
    return [*args, "--vault-secret", DEMO_SECRET, *dynamic]


def app_identity_directory(config: GarrisonConfig, service: str) -> Path:
    """Where the demo app of ``service`` keeps its workload identity (its sidecar keeps its own)."""
    return config.state_dir / "apps" / service


def _request(
    url: str, context: ssl.SSLContext, method: str, token: str, body: dict[str, Any] | None
) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"X-Vault-Token": token, "content-type": "application/json"}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:  # noqa: S310
            return int(response.status), json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        answer = exc.read()
        return int(exc.code), json.loads(answer) if answer.startswith(b"{") else {}


def seed_secret(config: GarrisonConfig, address: str) -> str:
    """Put orders' database password in the vault unless it is there: what happened, in words.

    Blocking (HTTP): call it from a thread. Never raises for the vault's answers: the orders app,
    which cannot start without its password, reports what is missing."""
    token_file = config.state_dir / "vault" / ROOT_TOKEN_FILE
    try:
        token = token_file.read_text().strip()
    except OSError:
        return f"no dev root token in {token_file}: put {DEMO_SECRET} yourself (garrison secret put)"
    mount, _, rest = DEMO_SECRET.partition("/")
    url = f"{vault_url(config, address)}/v1/{mount}/data/{rest}"
    body = {"options": {"cas": 0}, "data": {"username": "orders", "password": secrets.token_urlsafe(24)}}
    try:
        status, answer = _request(url, _trust(config), "POST", token, body)
    except (OSError, ValueError) as exc:
        return f"could not put {DEMO_SECRET} in the vault: {exc}"
    if status == 200:
        return f"put {DEMO_SECRET} in the vault (a random password, version {answer['data']['version']})"
    if status == 400 and any("check-and-set" in str(error) for error in answer.get("errors", [])):
        return f"{DEMO_SECRET} is in the vault already (kept)"
    return f"could not put {DEMO_SECRET} in the vault ({status}): {answer.get('errors')}"


def configure_database(config: GarrisonConfig, address: str, url: str) -> tuple[str, str | None]:
    """With ``GARRISON_DEMO_POSTGRES_URL``: the database engine's ``orders`` connection and role, so
    that orders can ask ``database/creds/orders``. What happened, and the URL (without credentials)
    orders connects to, None when it could not be set up (orders then reads the KV secret).

    Blocking (HTTP, and the vault connects to PostgreSQL to check the connection)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql") or not parts.hostname:
        return f"{POSTGRES_ENV} is not a postgresql:// URL: using the KV secret", None
    database = parts.path.lstrip("/") or "postgres"
    where = f"{parts.hostname}:{parts.port or 5432}/{database}"
    try:
        token = (config.state_dir / "vault" / ROOT_TOKEN_FILE).read_text().strip()
    except OSError:
        return "no dev root token to configure the database engine with: using the KV secret", None
    base, context = vault_url(config, address) + "/v1/database/", _trust(config)
    connection = {
        "plugin_name": "postgresql-database-plugin",
        "connection_url": "postgresql://{{username}}:{{password}}@" + where,
        "username": urllib.parse.unquote(parts.username or "postgres"),
        "password": urllib.parse.unquote(parts.password or ""),
        "allowed_roles": ["orders"],
        "max_open_connections": 2,
    }
    role = {
        "db_name": "orders",
        "default_ttl": "1h",
        "max_ttl": "1h",
        "creation_statements": [
            "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';"
            f'GRANT CONNECT ON DATABASE "{database}" TO "{{{{name}}}}";'
        ],
    }
    try:
        for path, body in (("config/orders", connection), ("roles/orders", role)):
            status, answer = _request(base + path, context, "POST", token, body)
            if status not in (200, 204):
                return f"database/{path} -> {status} {answer.get('errors')}: using the KV secret", None
    except (OSError, ValueError) as exc:
        return f"could not configure the database engine ({exc}): using the KV secret", None
    return f"database engine: orders' credentials are made in PostgreSQL at {where}", f"postgresql://{where}"


def _get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - the demo app's own URL
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), {}


def _describe_secret(config: GarrisonConfig, address: str) -> str:
    """The demo secret's metadata (version, when written), read with the dev root token."""
    try:
        token = (config.state_dir / "vault" / ROOT_TOKEN_FILE).read_text().strip()
    except OSError:
        return f"{DEMO_SECRET}: no dev root token to look at it with"
    mount, _, rest = DEMO_SECRET.partition("/")
    url = f"{vault_url(config, address)}/v1/{mount}/metadata/{rest}"
    status, answer = _request(url, _trust(config), "GET", token, None)
    if status != 200:
        return f"{DEMO_SECRET}: {status} {answer.get('errors')}"
    data = answer["data"]
    return (
        f"{DEMO_SECRET} was put in the vault by the demo set-up (dev root token, never printed): "
        f"version {data['current_version']}, written {data['updated_time'][:19]}Z"
    )


def vault_calls(config: GarrisonConfig, console: Console, address: str, source: Path) -> None:
    """What the apps got from the vault at their start, and payments refused orders' secret."""
    if config.vault is None or config.mesh is None or not {"orders", "payments"} <= set(config.mesh.sidecars):
        return
    console.print(
        "\n[bold]The vault[/bold]: services log in with their workload certificate, no bootstrap secret"
    )
    if config.vault.dev:
        console.print(
            "[bold yellow]The vault runs in DEV MODE[/bold yellow] (vault.dev): it unseals itself from a key "
            f"file under {config.state_dir / 'vault'}. For development only, never production.",
            soft_wrap=True,
        )
    try:
        console.print(f"  {_describe_secret(config, address)}", soft_wrap=True, markup=False)
        _orders_started(config, console)
        _payments_refused(config, console)
    except OSError as exc:
        console.print(f"[red]demo call failed:[/red] {exc}")
        return
    token_file = shlex.quote(str(config.state_dir / "vault" / ROOT_TOKEN_FILE))
    beside = Path(sys.executable).parent / "garrison"  # the venv's command, which may not be on PATH
    garrison = shlex.quote(str(beside)) if beside.exists() else "garrison"
    console.print(
        f"\nTry it yourself (the dev root token is in {token_file}, readable by you only):\n"
        f"  VAULT_TOKEN=$(cat {token_file}) {garrison} secret list secret/orders "
        f"-c {shlex.quote(str(source))} --address {vault_url(config, address)}",
        soft_wrap=True,
        markup=False,
    )


def _app(config: GarrisonConfig, service: str, path: str) -> tuple[int, dict[str, Any]]:
    return _get(config.services[service].targets[0].rstrip("/") + path)


def _orders_started(config: GarrisonConfig, console: Console) -> None:
    status, report = _app(config, "orders", "/vault")
    if status != 200 or "password" not in report:
        console.print(f"[red]orders' app has no vault report ({status})[/red]")
        return
    policies = ", ".join(report["policies"])
    console.print(
        f"[green]orders -> vault: auth/cert/login as {report['spiffe_id']} -> 200[/green], "
        f"policies {policies} (svc-orders from services.orders.secrets)",
        soft_wrap=True,
    )
    source = report["password"]
    if source["source"] == "vault database":
        console.print(
            f"  orders got dynamic PostgreSQL credentials from the vault at start: {source['path']} -> role "
            f"{source['username']} (lease {source['lease_duration']}s), and connected as "
            f"{source['connected_as']}; the password is not shown",
            soft_wrap=True,
            markup=False,
        )
        return
    console.print(
        f"  orders read its database password from the vault at start: {source['path']} "
        f"(version {source['version']}); it is not shown",
        soft_wrap=True,
        markup=False,
    )
    if report.get("fallback"):
        console.print(f"  ({report['fallback']})", soft_wrap=True, markup=False)


def _payments_refused(config: GarrisonConfig, console: Console) -> None:
    status, login = _app(config, "payments", "/vault")
    _, tried = _app(config, "payments", f"/vault/read/{DEMO_SECRET}")
    refused = tried.get("status")
    colour = "green" if refused == 403 else "red"
    policies = ", ".join(login.get("policies", [])) if status == 200 else "?"
    console.print(
        f"[{colour}]payments -> vault: GET {DEMO_SECRET} -> {refused}[/{colour}] "
        f"{' '.join(tried.get('errors', []))} (payments logged in with policies {policies}: "
        "nothing in services.payments.secrets grants orders' secret)",
        soft_wrap=True,
    )
