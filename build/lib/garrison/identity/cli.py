"""`garrison identity ...`: run the identity provider, and manage its clients, roles and keys.

Secrets (client secrets) are printed once and never stored; `--json` prints machine-readable output
for scripts. Every command works on the database the config names, so it works while the provider
runs: a change reaches the running provider within about a second.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from garrison.core.commandline import load_or_exit, run_server

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from garrison.config.model import GarrisonConfig
    from garrison.identity.clients import ClientStore
    from garrison.pki.kek import KeyEncryption

err = Console(stderr=True, highlight=False, soft_wrap=True)
T = TypeVar("T")

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="Path of garrison.yaml.")]

identity_app = typer.Typer(
    help="The OAuth 2.0 / OpenID Connect identity provider. Without a subcommand: run it.",
    invoke_without_command=True,
)
client_app = typer.Typer(help="OAuth clients (services and applications).", no_args_is_help=True)
role_app = typer.Typer(help="Roles: named sets of scopes given to clients and users.", no_args_is_help=True)
identity_app.add_typer(client_app, name="client")
identity_app.add_typer(role_app, name="role")


@identity_app.callback()
def identity(
    ctx: typer.Context,
    config: ConfigOption = Path("garrison.yaml"),
    ready_file: Annotated[
        Path | None, typer.Option(help="Write the listening address here as JSON once serving.")
    ] = None,
) -> None:
    """Run the identity provider (stop: SIGTERM or Ctrl-C finishes requests in flight)."""
    ctx.obj = config
    if ctx.invoked_subcommand is not None:
        return
    from garrison.identity.component import serve

    run_server(serve, _load(config), ready_file)


def _load(config: Path) -> Any:
    return load_or_exit(config, "identity")


def with_stores(ctx: typer.Context, config: Path | None, work: Callable[[Any], Awaitable[T]]) -> T:
    """Open the provider's database for ``work(stores)`` and close it."""
    from garrison.identity.clients import ClientStore
    from garrison.identity.migrations import SCHEMA
    from garrison.pki.kek import KeyEncryption
    from garrison.store.db import make_engine
    from garrison.store.startup import prepare_schema

    loaded = _load(config or ctx.obj)
    settings = loaded.config

    async def run() -> T:
        assert settings.identity is not None
        engine = make_engine(settings.identity.database, settings.state_dir)
        try:
            await prepare_schema(engine, SCHEMA, settings.store, config_file=str(loaded.source))
            kek = KeyEncryption.load(settings.state_dir)
            stores = Stores(settings, engine, kek, ClientStore(engine, kek))
            return await work(stores)
        finally:
            await engine.dispose()

    return asyncio.run(run())


@dataclass(frozen=True)
class Stores:
    config: GarrisonConfig
    engine: AsyncEngine
    kek: KeyEncryption
    clients: ClientStore


def fail(message: str) -> typer.Exit:
    err.print(f"[red]{message}[/red]")
    return typer.Exit(1)


# -- clients ---------------------------------------------------------------------------------------------


@client_app.command("create")
def client_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Option(help="A name for the client (lower-case, unique).")],
    grant: Annotated[
        list[str] | None,
        typer.Option(help="A grant type it may use: client_credentials, authorization_code, refresh_token."),
    ] = None,
    scope: Annotated[list[str] | None, typer.Option(help="A scope it may receive (repeat).")] = None,
    role: Annotated[list[str] | None, typer.Option(help="A role whose scopes it may receive.")] = None,
    auth_method: Annotated[
        str, typer.Option(help="client_secret_basic, client_secret_post, private_key_jwt or none.")
    ] = "client_secret_basic",
    jwks_file: Annotated[
        Path | None, typer.Option(help="The client's public JWKS (for private_key_jwt).")
    ] = None,
    redirect_uri: Annotated[list[str] | None, typer.Option(help="An exact redirect URI (repeat).")] = None,
    post_logout_redirect_uri: Annotated[
        list[str] | None, typer.Option(help="An exact URI to return to after logout (repeat).")
    ] = None,
    require_mfa: Annotated[bool, typer.Option(help="Users signing in to it must use MFA.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (for scripts).")] = False,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Path of garrison.yaml.")] = None,
) -> None:
    """Register a client and print its secret ONCE (only a keyed digest is stored)."""
    from garrison.identity.clients import ClientError

    jwks = None
    if jwks_file is not None:
        try:
            jwks = json.loads(jwks_file.read_text())
        except (OSError, ValueError) as exc:
            raise fail(f"cannot read the JWKS file: {exc}") from None

    async def work(stores: Stores) -> Any:
        return await stores.clients.create(
            name,
            grant_types=grant or ["client_credentials"],
            auth_method=auth_method,
            scopes=scope or [],
            roles_=role or [],
            redirect_uris=redirect_uri or [],
            post_logout_redirect_uris=post_logout_redirect_uri or [],
            jwks=jwks,
            require_mfa=require_mfa,
        )

    try:
        created = with_stores(ctx, config, work)
    except ClientError as exc:
        raise fail(str(exc)) from None
    record = created.record
    if as_json:
        sys.stdout.write(json.dumps({"client_id": record.client_id, "client_secret": created.secret}) + "\n")
        return
    err.print(f"[green]created[/green] client {record.name}: client_id {record.client_id}")
    if created.secret:
        err.print("Store the secret now; it cannot be shown again:")
        sys.stdout.write(created.secret + "\n")


@client_app.command("list")
def client_list(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Path of garrison.yaml.")] = None,
) -> None:
    """List clients (never their secrets)."""

    async def work(stores: Stores) -> Any:
        return await stores.clients.load()

    records, role_scopes = with_stores(ctx, config, work)
    table = Table(title=f"{len(records)} client(s)", title_justify="left")
    for column in ("name", "client_id", "auth", "grants", "scopes (from roles)"):
        table.add_column(column)
    for record in sorted(records.values(), key=lambda r: r.name):
        scopes = sorted({s for role in record.roles for s in role_scopes.get(role, ())})
        table.add_row(
            record.name, record.client_id, record.auth_method, " ".join(record.grant_types), " ".join(scopes)
        )
    Console().print(table)


@client_app.command("delete")
def client_delete(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Client name or client_id.")],
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Path of garrison.yaml.")] = None,
) -> None:
    """Delete a client: its credentials stop working within about a second."""

    async def work(stores: Stores) -> bool:
        return await stores.clients.delete(name)

    if not with_stores(ctx, config, work):
        raise fail(f"no client named {name!r}; see `garrison identity client list`")
    err.print(f"[green]deleted[/green] {name}")


# -- roles -----------------------------------------------------------------------------------------------


@role_app.command("create")
def role_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Role name.")],
    scope: Annotated[list[str] | None, typer.Option(help="A scope the role grants (repeat).")] = None,
    description: Annotated[str, typer.Option(help="What the role is for.")] = "",
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Path of garrison.yaml.")] = None,
) -> None:
    """Create or replace a role."""
    from garrison.identity.clients import ClientError

    async def work(stores: Stores) -> None:
        await stores.clients.put_role(name, scope or [], description)

    try:
        with_stores(ctx, config, work)
    except ClientError as exc:
        raise fail(str(exc)) from None
    err.print(f"[green]saved[/green] role {name}: {' '.join(sorted(set(scope or []))) or '(no scopes)'}")


@role_app.command("list")
def role_list(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Path of garrison.yaml.")] = None,
) -> None:
    """List roles and their scopes."""

    async def work(stores: Stores) -> Any:
        return await stores.clients.load()

    _, role_scopes = with_stores(ctx, config, work)
    table = Table(title=f"{len(role_scopes)} role(s)", title_justify="left")
    table.add_column("role")
    table.add_column("scopes")
    for name in sorted(role_scopes):
        table.add_row(name, " ".join(sorted(role_scopes[name])))
    Console().print(table)


@role_app.command("delete")
def role_delete(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Role name.")],
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Path of garrison.yaml.")] = None,
) -> None:
    """Delete a role (clients and users that had it lose its scopes)."""

    async def work(stores: Stores) -> bool:
        return await stores.clients.delete_role(name)

    if not with_stores(ctx, config, work):
        raise fail(f"no role named {name!r}")
    err.print(f"[green]deleted[/green] role {name}")


# -- keys ------------------------------------------------------------------------------------------------


@identity_app.command("rotate-keys")
def rotate_keys(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Path of garrison.yaml.")] = None,
) -> None:
    """Announce a new signing key now; it signs after `identity.keys.publish_ahead`."""
    from garrison.identity.keys import SigningKeys

    async def work(stores: Stores) -> Any:
        identity = stores.config.identity
        assert identity is not None  # _load refused a config without one
        keys = SigningKeys(
            stores.engine,
            stores.kek,
            publish_ahead=identity.keys.publish_ahead,
            rotation_interval=identity.keys.rotation_interval,
            max_token_lifetime=max(identity.access_token_ttl, identity.id_token_ttl),
        )
        await keys.ensure()
        return await keys.rotate()

    rotation = with_stores(ctx, config, work)
    key = rotation.key
    when = key.activates_at.strftime("%Y-%m-%d %H:%M:%S UTC")
    if rotation.created:
        err.print(f"[green]announced[/green] key {key.kid}: in the JWKS now, signing from {when}")
    else:
        err.print(f"key {key.kid} is already announced and signs from {when}; nothing changed")


from garrison.identity.cli_users import user_app  # noqa: E402 - registered after the shared helpers

identity_app.add_typer(user_app, name="user")
