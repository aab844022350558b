"""`garrison vault ...`: run the vault, and init, unseal, seal it or ask its status, over its HTTP API.

The commands are thin Vault API clients (the same calls hvac or the `vault` CLI make): they reach the
vault at ``--address`` (else ``VAULT_ADDR``, else the config's ``vault.listen``) and trust the CA the
config's ``auto`` certificate comes from (else ``VAULT_CACERT``). Unseal key shares are read from
standard input, never from the command line (where ``ps`` and shell history would keep them); the
token for ``seal`` comes from ``VAULT_TOKEN``. ``status`` exits 0 unsealed, 2 sealed, 1 on error, as
``vault status`` does.
"""

from __future__ import annotations

import json
import os
import ssl
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from garrison.core.commandline import load_or_exit, run_server

err = Console(stderr=True, highlight=False, soft_wrap=True)

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="Path of garrison.yaml.")]
AddressOption = Annotated[
    str | None, typer.Option(help="The vault's URL (default: VAULT_ADDR, else https:// and vault.listen).")
]

vault_app = typer.Typer(
    help="The secrets vault (Vault's HTTP API). Without a subcommand: run it.", invoke_without_command=True
)


@vault_app.callback()
def vault(
    ctx: typer.Context,
    config: ConfigOption = Path("garrison.yaml"),
    ready_file: Annotated[
        Path | None, typer.Option(help="Write the listening address here as JSON once serving.")
    ] = None,
) -> None:
    """Run the vault (starts sealed unless `vault.dev`; stop: SIGTERM finishes requests in flight)."""
    if ctx.invoked_subcommand is not None:
        return
    from garrison.telemetry import logging as log
    from garrison.vault.component import serve

    log.configure("vault")
    run_server(serve, _load(config), ready_file)


def _load(config: Path) -> Any:
    return load_or_exit(config, "vault")


def _call(
    config: Path, address: str | None, method: str, path: str, body: dict[str, Any] | None = None
) -> Any:
    """One API call; the decoded answer (None for 204). Vault's errors are printed and exit 1."""
    import httpx

    url, verify = endpoint(config, address)
    headers = {"X-Vault-Token": os.environ["VAULT_TOKEN"]} if os.environ.get("VAULT_TOKEN") else {}
    try:
        with httpx.Client(verify=verify, timeout=30) as client:
            answer = client.request(method, url.rstrip("/") + "/v1/" + path, json=body, headers=headers)
    except httpx.HTTPError as exc:
        err.print(f"[red]cannot reach the vault at {url}[/red]: {exc}")
        raise typer.Exit(1) from None
    if answer.status_code == 204:
        return None
    payload = answer.json() if answer.content else {}
    if answer.status_code >= 400 and not (path == "sys/seal-status" and answer.status_code == 200):
        errors = payload.get("errors") if isinstance(payload, dict) else None
        err.print(f"[red]refused[/red] ({answer.status_code}): {'; '.join(errors or []) or 'no detail'}")
        raise typer.Exit(1)
    return payload


def endpoint(config: Path, address: str | None) -> tuple[str, ssl.SSLContext | bool]:
    """The vault's URL (``--address``, else VAULT_ADDR, else vault.listen) and what to trust (VAULT_CACERT,
    else the CA of the config's ``auto`` certificate, else the system's roots)."""
    from garrison.config.model import parse_listen
    from garrison.pki.tls import auto_trust_file

    loaded = _load(config)
    settings = loaded.config.vault
    url = address or os.environ.get("VAULT_ADDR")
    if not url:
        host, port = parse_listen(settings.listen)
        host = "127.0.0.1" if host in ("0.0.0.0", "localhost") else ("::1" if host == "::" else host)
        if port == 0:
            err.print("vault.listen uses port 0: pass --address (or set VAULT_ADDR)")
            raise typer.Exit(2)
        scheme = "http" if settings.tls.insecure_disable else "https"
        url = f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"
    verify: ssl.SSLContext | bool = True
    cafile = os.environ.get("VAULT_CACERT")
    if cafile is None and settings.tls.cert == "auto":
        cafile = str(auto_trust_file(loaded.config, loaded.config.state_dir / "vault"))
    if cafile is not None:
        verify = ssl.create_default_context(cafile=cafile)
    return url, verify


@vault_app.command("init")
def init(
    shares: Annotated[int, typer.Option(help="How many unseal key shares to make.")] = 5,
    threshold: Annotated[int, typer.Option(help="How many of them unseal the vault.")] = 3,
    config: ConfigOption = Path("garrison.yaml"),
    address: AddressOption = None,
) -> None:
    """Initialise the vault: print the unseal key shares and the root token ONCE (JSON on stdout)."""
    result = _call(
        config, address, "PUT", "sys/init", {"secret_shares": shares, "secret_threshold": threshold}
    )
    typer.echo(json.dumps({"keys": result["keys"], "root_token": result["root_token"]}, indent=2))
    err.print(
        f"[green]initialised[/green]: {shares} shares, any {threshold} unseal. They are not stored anywhere: "
        "give each share to a different person now, and revoke the root token once you have narrower ones."
    )


@vault_app.command("unseal")
def unseal(config: ConfigOption = Path("garrison.yaml"), address: AddressOption = None) -> None:
    """Send one unseal key share, read from standard input (a prompt that does not echo on a terminal)."""
    share = typer.prompt("Unseal key share", hide_input=True) if sys.stdin.isatty() else sys.stdin.readline()
    status = _call(config, address, "PUT", "sys/unseal", {"key": share.strip()})
    if status["sealed"]:
        err.print(f"sealed: {status['progress']} of {status['t']} shares given")
    else:
        err.print("[green]unsealed[/green]")


@vault_app.command("seal")
def seal(config: ConfigOption = Path("garrison.yaml"), address: AddressOption = None) -> None:
    """Seal the vault now (VAULT_TOKEN: a token with `sudo` on sys/seal, e.g. root)."""
    _call(config, address, "PUT", "sys/seal")
    err.print("[green]sealed[/green]")


@vault_app.command("status")
def status(config: ConfigOption = Path("garrison.yaml"), address: AddressOption = None) -> None:
    """Print the seal status (JSON); exit 0 unsealed, 2 sealed or not initialised."""
    result = _call(config, address, "GET", "sys/seal-status")
    typer.echo(json.dumps(result, indent=2))
    raise typer.Exit(2 if result["sealed"] else 0)
