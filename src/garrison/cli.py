"""The ``garrison`` command line."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from garrison import __version__, build_status, compiled_modules

app = typer.Typer(
    help="Garrison: a zero-trust security plane for HTTP microservices, driven by one garrison.yaml.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True, highlight=False, soft_wrap=True)

ConfigOption = Annotated[
    Path, typer.Option("--config", "-c", help="Path of garrison.yaml.", show_default=True)
]


@app.command()
def check(config: ConfigOption = Path("garrison.yaml")) -> None:
    """Validate a config file: print every problem with the path of the bad key; exit 1 if any."""
    from garrison.config.loader import ConfigError, load_config

    try:
        loaded = load_config(config)
    except ConfigError as exc:
        for problem in exc.problems:
            err.print(f"[red]error[/red] {problem.render(exc.filename)}", soft_wrap=True)
        err.print(f"{len(exc.problems)} problem(s); fix them and run `garrison check -c {config}` again.")
        raise typer.Exit(1) from None
    for warning in loaded.warnings:
        err.print(f"[yellow]warning[/yellow] {warning.render(str(config))}", soft_wrap=True)
    cfg = loaded.config
    err.print(
        f"[green]ok[/green] {config}: {len(cfg.services)} service(s), {len(cfg.routes)} route(s), "
        f"{len(loaded.warnings)} warning(s)"
    )


@app.command()
def schema(
    markdown: Annotated[bool, typer.Option(help="Print the reference as Markdown (docs/config.md).")] = False,
) -> None:
    """Print the JSON Schema of garrison.yaml (for editors and CI), or its Markdown reference."""
    from garrison.config.docs import render_markdown
    from garrison.config.model import GarrisonConfig

    if markdown:
        sys.stdout.write(render_markdown())
    else:
        sys.stdout.write(json.dumps(GarrisonConfig.model_json_schema(), indent=2) + "\n")


@app.command()
def gateway(
    config: ConfigOption = Path("garrison.yaml"),
    ready_file: Annotated[
        Path | None, typer.Option(help="Write the listening addresses here as JSON once serving.")
    ] = None,
) -> None:
    """Run the edge gateway (reload: SIGHUP or edit the file; stop: SIGTERM drains)."""
    from garrison.admin.auth import AdminTokenError
    from garrison.config.loader import ConfigError
    from garrison.gateway.main import run

    try:
        code = run(str(config), str(ready_file) if ready_file else None)
    except ConfigError as exc:
        err.print(f"[red]cannot start[/red]: {exc}\nRun `garrison check -c {config}` for details.")
        raise typer.Exit(2) from None
    except (OSError, AdminTokenError) as exc:
        # Typically the port is taken, or a certificate or the admin token file is unreadable.
        err.print(f"[red]cannot start[/red]: {exc}")
        raise typer.Exit(2) from None
    raise typer.Exit(code)


@app.command()
def sidecar(
    service: Annotated[
        str, typer.Option("--service", help="The service (a key of mesh.sidecars) to run for.")
    ],
    config: ConfigOption = Path("garrison.yaml"),
    ready_file: Annotated[
        Path | None, typer.Option(help="Write the listening addresses here as JSON once serving.")
    ] = None,
    cert_dir: Annotated[
        Path | None, typer.Option(help="Use cert.pem, key.pem and bundle.pem from here instead of the CA.")
    ] = None,
) -> None:
    """Run a service's mesh sidecar (mTLS in and out; reload the call policy: SIGHUP)."""
    from garrison.config.loader import ConfigError
    from garrison.mesh.sidecar.main import run

    try:
        code = run(
            str(config), service, str(ready_file) if ready_file else None, str(cert_dir) if cert_dir else None
        )
    except ConfigError as exc:
        err.print(f"[red]cannot start[/red]: {exc}\nRun `garrison check -c {config}` for details.")
        raise typer.Exit(2) from None
    raise typer.Exit(code)


@app.command()
def up(
    config: ConfigOption = Path("garrison.yaml"),
    demo: Annotated[bool, typer.Option(help="Also run the demo upstream service from examples/.")] = False,
) -> None:
    """Run every configured component as a supervised process; Ctrl-C stops them all."""
    from garrison.supervisor import run_up

    raise typer.Exit(run_up(config, demo=demo, console=err))


def _admin_call(config: Path, method: str, path: str, query: dict[str, str]) -> dict[str, Any]:
    """One call to the running gateway's admin API (`gateway.admin.listen` in the config), with the
    admin token from `gateway.admin.token_file` (default state_dir/admin.token)."""
    from garrison.admin.auth import AdminTokenError, admin_token_path, read_admin_token
    from garrison.config.loader import ConfigError, load_config
    from garrison.core.commandline import admin_call

    try:
        loaded = load_config(config)
        token = read_admin_token(admin_token_path(loaded.config))
    except (ConfigError, AdminTokenError) as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    admin = loaded.config.gateway.admin
    return admin_call(admin, token, loaded.source.parent, (method, path, query), "gateway")


@app.command()
def block(
    ip: Annotated[str, typer.Argument(help="The client address to block (IPv4 or IPv6).")],
    duration: Annotated[str, typer.Option("--for", help="How long: 30s, 15m, 2h...")] = "15m",
    reason: Annotated[
        str, typer.Option(help="Why (kept with the block, shown in `garrison blocklist`).")
    ] = "",
    config: ConfigOption = Path("garrison.yaml"),
) -> None:
    """Block a client address at the running gateway (every worker; every replica with Redis)."""
    answer = _admin_call(config, "POST", "/blocklist", {"ip": ip, "for": duration, "reason": reason})
    entry = answer["blocked"]
    assert isinstance(entry, dict)
    until = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(entry["until"])))
    err.print(f"[green]blocked[/green] {entry['ip']} until {until}")


@app.command()
def unblock(
    ip: Annotated[str, typer.Argument(help="The client address to unblock.")],
    config: ConfigOption = Path("garrison.yaml"),
) -> None:
    """Lift a block at the running gateway."""
    answer = _admin_call(config, "DELETE", "/blocklist", {"ip": ip})
    err.print("[green]unblocked[/green]" if answer.get("unblocked") else f"{ip} was not blocked")


@app.command()
def blocklist(config: ConfigOption = Path("garrison.yaml")) -> None:
    """List the blocks in force at the running gateway."""
    from rich.table import Table

    answer = _admin_call(config, "GET", "/blocklist", {})
    entries = answer.get("blocked") or []
    assert isinstance(entries, list)
    table = Table(title=f"{len(entries)} blocked address(es)", title_justify="left")
    for column in ("address", "until (UTC)", "reason"):
        table.add_column(column)
    for entry in entries:
        until = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(entry["until"])))
        table.add_row(entry["ip"], until, entry["reason"])
    Console().print(table)


def _utc(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch))


@app.command()
def revoke(
    jti: Annotated[str, typer.Argument(help="The token's `jti` claim (every token carrying it is refused).")],
    until: Annotated[
        float | None, typer.Option(help="Until when, in epoch seconds: the token's `exp`.")
    ] = None,
    duration: Annotated[
        str | None, typer.Option("--for", help="Or for how long: 30s, 10m, 2h (at most 1 day).")
    ] = None,
    config: ConfigOption = Path("garrison.yaml"),
) -> None:
    """Revoke an access token at the running gateway (every worker; every replica with Redis)."""
    if (until is None) == (duration is None):
        err.print("give exactly one of --until EPOCH (the token's exp) or --for DURATION (such as 10m)")
        raise typer.Exit(2)
    query = {"jti": jti, "until": str(until)} if until is not None else {"jti": jti, "for": str(duration)}
    entry = _admin_call(config, "POST", "/revocations", query)["revoked"]
    assert isinstance(entry, dict)
    err.print(f"[green]revoked[/green] {entry['jti']} until {_utc(entry['until'])} UTC")


@app.command()
def revocations(config: ConfigOption = Path("garrison.yaml")) -> None:
    """List the token revocations in force at the running gateway."""
    from rich.table import Table

    entries = _admin_call(config, "GET", "/revocations", {}).get("revoked") or []
    assert isinstance(entries, list)
    table = Table(title=f"{len(entries)} revoked token(s)", title_justify="left")
    for column in ("jti", "until (UTC)"):
        table.add_column(column)
    for entry in entries:
        table.add_row(entry["jti"], _utc(entry["until"]))
    Console().print(table)


from garrison.identity.cli import identity_app  # noqa: E402 - a sub-application, registered here

app.add_typer(identity_app, name="identity")

from garrison.mesh.ca.cli import ca_app, quarantine, unquarantine  # noqa: E402 - a sub-application, registered here

app.add_typer(ca_app, name="ca")
app.command()(quarantine)
app.command()(unquarantine)

from garrison.vault.cli import vault_app  # noqa: E402 - a sub-application, registered here

app.add_typer(vault_app, name="vault")

from garrison.vault.secret_cli import secret_app  # noqa: E402 - a sub-application, registered here

app.add_typer(secret_app, name="secret")

from garrison.audit import cli_suppress, cli_verify  # noqa: E402 - sub-applications, registered here
from garrison.audit.cli import audit_app  # noqa: E402 - a sub-application, registered here

cli_verify.register(audit_app)
cli_suppress.register(audit_app)
app.add_typer(audit_app, name="audit")

from garrison.dbcli import db_app  # noqa: E402 - a sub-application, registered here

app.add_typer(db_app, name="db")

apikey_app = typer.Typer(
    help="Manage API keys for routes with `auth: {require: api_key}` (stored as SHA-256 digests).",
    no_args_is_help=True,
)
app.add_typer(apikey_app, name="apikey")


def _with_key_store(config: Path, work: Callable[[Any], Awaitable[Any]]) -> Any:
    """Open the API-key store the config names, run ``work(store)``, close it."""
    import asyncio

    from garrison.config.loader import ConfigError, load_config
    from garrison.gateway.auth.apikeys import ApiKeyStore
    from garrison.gateway.migrations import SCHEMA
    from garrison.store.db import make_engine
    from garrison.store.startup import prepare_schema

    try:
        loaded = load_config(config)
    except ConfigError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None

    async def run() -> Any:
        engine = make_engine(loaded.config.gateway.api_keys.database, loaded.config.state_dir)
        try:
            await prepare_schema(engine, SCHEMA, loaded.config.store, config_file=str(config))
            return await work(ApiKeyStore(engine))
        finally:
            await engine.dispose()

    return asyncio.run(run())


@apikey_app.command("create")
def apikey_create(
    name: Annotated[str, typer.Option(help="Who or what the key is for (shown in logs as apikey:NAME).")],
    scopes: Annotated[
        list[str] | None, typer.Option("--scope", help="A scope the key grants (repeat).")
    ] = None,
    expires: Annotated[
        str | None, typer.Option(help="Lifetime such as 30m, 12h or 2160h (90 days); unset: no expiry.")
    ] = None,
    config: ConfigOption = Path("garrison.yaml"),
) -> None:
    """Create a key and print it ONCE: only its digest is stored, it cannot be shown again."""
    from garrison.config.units import parse_duration

    lifetime = parse_duration(expires) if expires else None
    key, record = _with_key_store(config, lambda store: store.create(name, scopes or [], lifetime))
    err.print(f"[green]created[/green] {record.name} (prefix {record.prefix}); store the key now:")
    typer.echo(key)


@apikey_app.command("list")
def apikey_list(config: ConfigOption = Path("garrison.yaml")) -> None:
    """List keys: name, prefix, scopes, status, expiry (never the key or its digest)."""
    from rich.table import Table

    records = _with_key_store(config, lambda store: store.list())
    table = Table(title=f"{len(records)} API key(s)", title_justify="left")
    for column in ("name", "prefix", "scopes", "status", "created", "expires"):
        table.add_column(column)
    for record in records:
        expires = record.expires_at.strftime("%Y-%m-%d %H:%M") if record.expires_at else "never"
        table.add_row(
            record.name,
            record.prefix,
            " ".join(record.scopes),
            record.status(),
            record.created_at.strftime("%Y-%m-%d %H:%M"),
            expires,
        )
    Console().print(table)


def _change_keys(config: Path, name_or_prefix: str, action: str) -> None:
    from garrison.gateway.auth.apikeys import ApiKeyNotFound

    try:
        changed = _with_key_store(config, lambda store: getattr(store, action)(name_or_prefix))
    except ApiKeyNotFound:
        err.print(f"[red]no key named or prefixed {name_or_prefix!r}[/red]; see `garrison apikey list`")
        raise typer.Exit(1) from None
    verb = "revoked" if action == "revoke" else "expired"
    err.print(f"[green]{verb}[/green] {len(changed)} key(s); gateways refuse them within seconds")


@apikey_app.command("revoke")
def apikey_revoke(
    name_or_prefix: Annotated[str, typer.Argument(help="A key's prefix, or a name (all keys with it).")],
    config: ConfigOption = Path("garrison.yaml"),
) -> None:
    """Revoke keys now, for good."""
    _change_keys(config, name_or_prefix, "revoke")


@apikey_app.command("expire")
def apikey_expire(
    name_or_prefix: Annotated[str, typer.Argument(help="A key's prefix, or a name (all keys with it).")],
    config: ConfigOption = Path("garrison.yaml"),
) -> None:
    """Expire keys now (they show as expired rather than revoked)."""
    _change_keys(config, name_or_prefix, "expire")


@app.command()
def version(
    modules: Annotated[bool, typer.Option("--modules", help="List the modules that run compiled.")] = False,
) -> None:
    """Print Garrison's version, and whether its hot modules run compiled (mypyc) or as plain Python."""
    typer.echo(f"{__version__} ({build_status()})")
    if modules:
        for name in compiled_modules():
            typer.echo(f"  {name}")


def main() -> None:
    app()
