"""`garrison identity user ...`: people who sign in. Passwords are read from a hidden prompt (typed
twice) or standard input, never from the command line, where they would land in shell history and
the process list; TOTP enrolment prints the otpauth:// URI and the recovery codes once.

Enrolment is deliberately an operator's command, not a web page: a page would let whoever learned
a password register their own authenticator before the user does.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from garrison.identity.cli import Stores, err, fail, with_stores

# -- users -----------------------------------------------------------------------------------------------

user_app = typer.Typer(help="People who sign in (argon2id passwords, TOTP, roles).", no_args_is_help=True)

ConfigFlag = Annotated[Path | None, typer.Option("--config", "-c", help="Path of garrison.yaml.")]


def _read_password(from_stdin: bool) -> str:
    """From standard input (scripts) or a hidden prompt typed twice; never from the command line,
    where it would land in shell history and the process list."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = typer.prompt("Password", hide_input=True)
    if typer.prompt("Again", hide_input=True) != first:
        raise fail("the two passwords differ; nothing changed")
    return str(first)


def _user_id(stores: Stores, username: str) -> Awaitable[Any]:
    from garrison.identity.users import UserStore

    return UserStore(stores.engine, stores.kek).get_by_username(username)


@user_app.command("create")
def user_create(
    ctx: typer.Context,
    username: Annotated[str, typer.Argument(help="Login name (lower-case).")],
    email: Annotated[str | None, typer.Option(help="E-mail address (the `email` claim).")] = None,
    role: Annotated[list[str] | None, typer.Option(help="A role whose scopes the user may receive.")] = None,
    password_stdin: Annotated[bool, typer.Option(help="Read the password from standard input.")] = False,
    config: ConfigFlag = None,
) -> None:
    """Create a user (at least 12 characters of password, stored as argon2id)."""
    from garrison.identity.users import UserExists, UserStore

    password = _read_password(password_stdin)

    async def work(stores: Stores) -> Any:
        return await UserStore(stores.engine, stores.kek).create(username, password, email, role or [])

    try:
        user = with_stores(ctx, config, work)
    except (UserExists, ValueError) as exc:
        raise fail(str(exc)) from None
    err.print(f"[green]created[/green] user {user.username} (sub {user.user_id})")


@user_app.command("set-password")
def user_set_password(
    ctx: typer.Context,
    username: Annotated[str, typer.Argument(help="Login name.")],
    password_stdin: Annotated[bool, typer.Option(help="Read the password from standard input.")] = False,
    config: ConfigFlag = None,
) -> None:
    """Set a new password."""
    from garrison.identity.users import UserStore

    password = _read_password(password_stdin)

    async def work(stores: Stores) -> bool:
        users = UserStore(stores.engine, stores.kek)
        user = await users.get_by_username(username)
        if user is None:
            return False
        await users.set_password(user.user_id, password)
        return True

    try:
        found = with_stores(ctx, config, work)
    except ValueError as exc:
        raise fail(str(exc)) from None
    if not found:
        raise fail(f"no user {username!r}; see `garrison identity user list`")
    err.print(f"[green]password set[/green] for {username}")


@user_app.command("enroll-totp")
def user_enroll_totp(
    ctx: typer.Context,
    username: Annotated[str, typer.Argument(help="Login name.")],
    replace: Annotated[bool, typer.Option(help="Replace an authenticator already confirmed.")] = False,
    config: ConfigFlag = None,
) -> None:
    """Start TOTP enrolment: prints the otpauth:// URI for an authenticator app and one-time
    recovery codes, then asks for a code from the app to confirm."""
    from garrison.identity.mfa import MfaError, MfaStore

    async def begin(stores: Stores) -> tuple[str, str, list[str]] | None:
        user = await _user_id(stores, username)
        if user is None:
            return None
        mfa = MfaStore(stores.engine, stores.kek)
        _, uri = await mfa.begin_enrollment(user.user_id, replace=replace)
        codes = await mfa.issue_recovery_codes(user.user_id)
        return user.user_id, uri, codes

    try:
        started = with_stores(ctx, config, begin)
    except MfaError as exc:
        raise fail(str(exc)) from None
    if started is None:
        raise fail(f"no user {username!r}; see `garrison identity user list`")
    user_id, uri, codes = started
    err.print("Add this to an authenticator app (or render it as a QR code):")
    sys.stdout.write(uri + "\n")
    err.print("Recovery codes, each usable once; store them now:")
    sys.stdout.write("\n".join(codes) + "\n")
    code = str(typer.prompt("Code from the app"))

    async def confirm(stores: Stores) -> bool:
        return await MfaStore(stores.engine, stores.kek).confirm_enrollment(user_id, code)

    if not with_stores(ctx, config, confirm):
        raise fail("that code does not match; run enroll-totp again with --replace")
    err.print(f"[green]TOTP enrolled[/green] for {username}")


def _set_disabled(ctx: typer.Context, config: Path | None, username: str, disabled: bool) -> None:
    from garrison.identity.users import UserStore

    async def work(stores: Stores) -> bool:
        users = UserStore(stores.engine, stores.kek)
        user = await users.get_by_username(username)
        if user is None:
            return False
        await (users.disable(user.user_id) if disabled else users.enable(user.user_id))
        return True

    if not with_stores(ctx, config, work):
        raise fail(f"no user {username!r}; see `garrison identity user list`")
    err.print(f"[green]{'disabled' if disabled else 'enabled'}[/green] {username}")


@user_app.command("disable")
def user_disable(
    ctx: typer.Context,
    username: Annotated[str, typer.Argument(help="Login name.")],
    config: ConfigFlag = None,
) -> None:
    """Disable a user: no sign-in, no password or code check succeeds."""
    _set_disabled(ctx, config, username, True)


@user_app.command("enable")
def user_enable(
    ctx: typer.Context,
    username: Annotated[str, typer.Argument(help="Login name.")],
    config: ConfigFlag = None,
) -> None:
    """Enable a disabled user again."""
    _set_disabled(ctx, config, username, False)


@user_app.command("list")
def user_list(ctx: typer.Context, config: ConfigFlag = None) -> None:
    """List users (never password hashes or TOTP seeds)."""
    from garrison.identity.users import UserStore

    async def work(stores: Stores) -> Any:
        return await UserStore(stores.engine, stores.kek).list()

    users = with_stores(ctx, config, work)
    table = Table(title=f"{len(users)} user(s)", title_justify="left")
    for column in ("username", "sub", "roles", "MFA", "status"):
        table.add_column(column)
    for user in users:
        table.add_row(
            user.username,
            user.user_id,
            " ".join(user.roles),
            "TOTP" if user.mfa_enrolled else "-",
            "disabled" if user.disabled else "active",
        )
    Console().print(table)
