"""`garrison secret put|get|list`: KV v2 secrets from the command line, over the vault's HTTPS API.

The same calls `vault kv put/get/list` make (``secret/data/<path>``, ``LIST secret/metadata/<path>``),
reaching the vault as ``garrison vault`` does (``--address``, VAULT_ADDR, else the config's
``vault.listen``; the ``auto`` certificate's CA, else VAULT_CACERT) with the token in VAULT_TOKEN.

Values never need to be on the command line, where ``ps`` and shell history keep them:
``key=@file`` reads a file, ``key=-`` reads standard input, and with no ``key=value`` at all (or a
lone ``-``) standard input is a JSON object. Secret values are printed only by ``get``, to stdout;
errors go to stderr and say what to do next.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from garrison.vault.cli import AddressOption, ConfigOption, endpoint

__all__ = ["secret_app"]

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)
MOUNT = "secret"
MAX_FILE = 1024 * 1024

secret_app = typer.Typer(help="KV v2 secrets in the vault: put, get, list (token from VAULT_TOKEN).")


def _kv_path(path: str) -> str:
    """``secret/orders/db`` or ``orders/db`` -> ``orders/db`` (the mount is ``secret/``)."""
    rest = path.strip("/")
    if rest.startswith(MOUNT + "/"):
        rest = rest[len(MOUNT) + 1 :]
    if not rest or any(part in ("", ".", "..") for part in rest.split("/")):
        err.print(f"[red]not a secret path[/red]: {path!r} (write it as secret/orders/db)")
        raise typer.Exit(2)
    return rest


def _request(config: Path, address: str | None, method: str, path: str, body: Any = None) -> Any:
    import httpx

    token = os.environ.get("VAULT_TOKEN", "").strip()
    if not token:
        err.print(
            "[red]no token[/red]: set VAULT_TOKEN (a token whose policies allow this path; a service gets "
            "one with `auth/cert/login` or AppRole)"
        )
        raise typer.Exit(1)
    url, verify = endpoint(config, address)
    try:
        with httpx.Client(verify=verify, timeout=30) as client:
            answer = client.request(
                method, f"{url.rstrip('/')}/v1/{path}", json=body, headers={"X-Vault-Token": token}
            )
    except httpx.HTTPError as exc:
        err.print(
            f"[red]cannot reach the vault at {url}[/red] ({type(exc).__name__}): is `garrison vault` "
            "running there? Point --address or VAULT_ADDR at it (and VAULT_CACERT at its CA)."
        )
        raise typer.Exit(1) from None
    if answer.status_code == 204:
        return None
    try:
        payload = answer.json() if answer.content else {}
    except ValueError:
        payload = {}
    if answer.status_code < 400:
        return payload
    _explain(answer.status_code, payload, path)
    raise typer.Exit(1)


def _explain(status: int, payload: Any, path: str) -> None:
    errors = payload.get("errors") if isinstance(payload, dict) else None
    detail = "; ".join(str(e) for e in errors or []) or "no detail"
    hint = {
        403: "the token in VAULT_TOKEN is unknown, expired, or its policies do not grant this path: "
        "grant it (garrison.yaml services.<name>.secrets, or a policy) or use another token",
        404: "nothing there: `garrison secret list` shows what exists",
        503: "the vault is sealed: `garrison vault unseal` with enough key shares",
        400: "the vault refused the request as malformed",
    }.get(status, "see the vault's log")
    err.print(f"[red]refused ({status})[/red]: {detail} — {hint}")


def _values(pairs: list[str]) -> dict[str, str]:
    if not pairs or pairs == ["-"]:
        return _json_from_stdin()
    values: dict[str, str] = {}
    stdin_used = False
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            err.print(f"[red]not key=value[/red]: {pair.split('=')[0]!r} (use key=value, key=@file or key=-)")
            raise typer.Exit(2)
        if value == "-":
            if stdin_used:
                err.print("[red]only one key can read standard input[/red]")
                raise typer.Exit(2)
            stdin_used = True
            value = sys.stdin.read().removesuffix("\n")
        elif value.startswith("@"):
            value = _read_file(Path(value[1:]), key)
        values[key] = value
    return values


def _read_file(path: Path, key: str) -> str:
    try:
        if path.stat().st_size > MAX_FILE:
            err.print(f"[red]{path} is larger than 1 MiB[/red] (the value of {key})")
            raise typer.Exit(2)
        return path.read_text(encoding="utf-8").removesuffix("\n")
    except (OSError, UnicodeDecodeError) as exc:
        err.print(f"[red]cannot read {path}[/red] for {key}: {type(exc).__name__}")
        raise typer.Exit(2) from None


def _json_from_stdin() -> dict[str, str]:
    if sys.stdin.isatty():
        err.print("give key=value pairs, or a JSON object on standard input")
        raise typer.Exit(2)
    try:
        data = json.loads(sys.stdin.read())
    except ValueError:
        err.print('[red]standard input is not JSON[/red]: give a JSON object such as {"password": "..."}')
        raise typer.Exit(2) from None
    if not isinstance(data, dict) or not data:
        err.print("[red]standard input must be a non-empty JSON object[/red]")
        raise typer.Exit(2)
    return data


@secret_app.command("put")
def put(
    path: Annotated[str, typer.Argument(help="The secret, e.g. secret/orders/db.")],
    pairs: Annotated[list[str] | None, typer.Argument(help="key=value, key=@file, key=- (stdin).")] = None,
    cas: Annotated[
        int | None, typer.Option(help="Write only if the current version is this (0: new).")
    ] = None,
    config: ConfigOption = Path("garrison.yaml"),
    address: AddressOption = None,
) -> None:
    """Write a new version of a secret (all its keys: keys not given are not kept)."""
    rest = _kv_path(path)
    body: dict[str, Any] = {"data": _values(pairs or [])}
    if cas is not None:
        body["options"] = {"cas": cas}
    answer = _request(config, address, "POST", f"{MOUNT}/data/{rest}", body)
    version = (answer or {}).get("data", {}).get("version")
    err.print(f"[green]written[/green] {MOUNT}/{rest} version {version}")


@secret_app.command("get")
def get(
    path: Annotated[str, typer.Argument(help="The secret, e.g. secret/orders/db.")],
    field: Annotated[str | None, typer.Option(help="Print only this key's value (for scripts).")] = None,
    version: Annotated[int | None, typer.Option(help="A given version (default: the latest).")] = None,
    config: ConfigOption = Path("garrison.yaml"),
    address: AddressOption = None,
) -> None:
    """Print a secret as a table, or one value with --field."""
    rest = _kv_path(path)
    query = f"?version={version}" if version is not None else ""
    answer = _request(config, address, "GET", f"{MOUNT}/data/{rest}{query}")
    data = answer["data"].get("data") or {}
    metadata = answer["data"].get("metadata") or {}
    if field is not None:
        if field not in data:
            err.print(f"[red]no key {field!r}[/red] in {MOUNT}/{rest}; its keys: {', '.join(sorted(data))}")
            raise typer.Exit(1)
        value = data[field]
        sys.stdout.write((value if isinstance(value, str) else json.dumps(value)) + "\n")
        return
    table = Table(title=f"{MOUNT}/{rest} (version {metadata.get('version')})", title_justify="left")
    table.add_column("key")
    table.add_column("value", overflow="fold")
    for key, value in sorted(data.items()):
        table.add_row(key, value if isinstance(value, str) else json.dumps(value))
    out.print(table)


@secret_app.command("list")
def list_(
    path: Annotated[str, typer.Argument(help="A folder, e.g. secret/orders (default: the top).")] = MOUNT,
    config: ConfigOption = Path("garrison.yaml"),
    address: AddressOption = None,
) -> None:
    """The secrets and folders (ending in /) under a path, one a line."""
    rest = path.strip("/")
    rest = "" if rest == MOUNT else _kv_path(rest)
    answer = _request(config, address, "LIST", f"{MOUNT}/metadata/{rest}".rstrip("/"))
    for key in (answer or {}).get("data", {}).get("keys", []):
        sys.stdout.write(f"{key}\n")
