"""`garrison ca ...` and `garrison quarantine`/`unquarantine`: run and operate the workload CA.

Commands that change who may hold or use an identity (join-token, revoke, reinstate, quarantine) go
through the running CA's admin API (``mesh.ca.admin.listen``, the admin token as for the gateway) so the
change is published to sidecars at once; when the CA is not running they work on its database directly
and the CA publishes them when it starts. Rotations always work on the CA's files (they may need an
offline root key); a running CA picks them up within a second.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console

from garrison.core.commandline import load_or_exit, run_server

if TYPE_CHECKING:
    from garrison.config.loader import LoadedConfig
    from garrison.mesh.ca.server import CaParts

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)
T = TypeVar("T")

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="Path of garrison.yaml.")]
RootKeyOption = Annotated[
    Path | None,
    typer.Option(
        "--root-key", help="The root's sealed key file, for a root kept offline (`ca init --offline-root`)."
    ),
]

ca_app = typer.Typer(
    help="The workload certificate authority: SPIFFE certificates for services, join tokens, rotation, "
    "revocation. Changes go through the running CA's admin API when it is up, else to its files and "
    "database directly.",
    no_args_is_help=True,
)
rotate_app = typer.Typer(
    help="Rotate the issuing intermediate or the root (with an overlap).", no_args_is_help=True
)
root_app = typer.Typer(
    help="Root rotation in three steps: add (trusted, not issuing), activate (issuing), retire (after "
    "one workload lifetime: no certificate chains to the old root any more).",
    no_args_is_help=True,
)
ca_app.add_typer(rotate_app, name="rotate")
rotate_app.add_typer(root_app, name="root")


def _load(config: Path) -> LoadedConfig:
    return load_or_exit(config, "mesh")


def _fail(message: str) -> typer.Exit:
    err.print(f"[red]{message}[/red]")
    return typer.Exit(1)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _intermediate_ttl(loaded: LoadedConfig) -> dt.timedelta:
    assert loaded.config.mesh is not None
    return dt.timedelta(seconds=loaded.config.mesh.ca.intermediate_ttl)


def _with_parts(loaded: LoadedConfig, work: Callable[[CaParts], Awaitable[T]]) -> T:
    """Run ``work`` on the CA's files and database (the CA not running)."""
    from garrison.core.runner import StartFailed
    from garrison.mesh.ca.server import open_ca

    async def run() -> T:
        try:
            parts = await open_ca(loaded.config)
        except StartFailed as exc:
            raise _fail(str(exc)) from None
        try:
            return await work(parts)
        finally:
            await parts.engine.dispose()

    return asyncio.run(run())


def _admin(loaded: LoadedConfig, method: str, path: str, query: dict[str, str]) -> dict[str, Any] | None:
    """One call to the running CA's admin API; None when it is not running (nothing listens)."""
    from garrison.admin.auth import AdminTokenError
    from garrison.mesh.ca.admin_client import AdminUnreachable, ca_admin_call

    try:
        return ca_admin_call(loaded, method, path, query)
    except AdminUnreachable:
        return None
    except (ValueError, OSError, AdminTokenError) as exc:
        raise _fail(str(exc)) from None


@ca_app.command()
def serve(
    config: ConfigOption = Path("garrison.yaml"),
    ready_file: Annotated[
        Path | None, typer.Option(help="Write the listening addresses here as JSON once serving.")
    ] = None,
) -> None:
    """Run the CA (TLS API on mesh.ca.listen, admin API on mesh.ca.admin.listen; stop: SIGTERM)."""
    from garrison.mesh.ca.server import serve as serve_ca
    from garrison.telemetry import logging as log

    log.configure("ca")
    run_server(serve_ca, _load(config), ready_file)


@ca_app.command()
def init(
    config: ConfigOption = Path("garrison.yaml"),
    offline_root: Annotated[
        Path | None,
        typer.Option(
            help="Write the root's sealed key here (to move off this machine) instead of state_dir/ca."
        ),
    ] = None,
) -> None:
    """Create the CA: a root and an issuing intermediate under state_dir/ca (keys sealed, 0600)."""
    from garrison.mesh.ca.server import ca_files
    from garrison.pki.authority_files import AuthorityFilesError

    loaded = _load(config)
    files = ca_files(loaded.config)
    try:
        issuing = files.init(
            loaded.config.trust_domain,
            now=_now(),
            offline_root=offline_root,
            intermediate_lifetime=_intermediate_ttl(loaded),
        )
    except AuthorityFilesError as exc:
        raise _fail(str(exc)) from None
    out.print(f"CA created in {files.directory}: issuing {issuing.certificate.subject.rfc4514_string()}")
    out.print(f"Trust bundle (give it to workloads for their first join): {files.bundle_file}")
    if offline_root:
        out.print(f"The root's key is in {offline_root}: move it off this machine.")


@ca_app.command("join-token")
def join_token(
    service: Annotated[
        str | None, typer.Option(help="The service the token lets a workload join as.")
    ] = None,
    spiffe_id: Annotated[
        str | None,
        typer.Option(
            help="Instead of --service: another identity of the trust domain (spiffe://TD/gateway)."
        ),
    ] = None,
    ttl: Annotated[str, typer.Option(help="How long the token may be used (at most 1d).")] = "10m",
    config: ConfigOption = Path("garrison.yaml"),
) -> None:
    """Mint a one-time join token, printed once: give it to the workload (GARRISON_JOIN_TOKEN)."""
    from garrison.config.units import parse_duration
    from garrison.mesh.ca.admin import identity_of

    loaded = _load(config)
    named = {"service": service} if service is not None else {}
    named |= {"spiffe_id": spiffe_id} if spiffe_id is not None else {}
    answer = _admin(loaded, "POST", "/join-tokens", {**named, "ttl": ttl})
    if answer is None:
        try:
            identity = identity_of(loaded.config.trust_domain, named)
            lifetime = dt.timedelta(seconds=parse_duration(ttl))
        except ValueError as exc:
            raise _fail(str(exc)) from None

        async def mint(parts: CaParts) -> str:
            from garrison.mesh.ca.join_tokens import TooManyJoinTokens

            try:
                return await parts.tokens.mint(identity, lifetime)
            except (ValueError, TooManyJoinTokens) as exc:
                raise _fail(str(exc)) from None

        answer = {"token": _with_parts(loaded, mint)}
    out.print(answer["token"])


@ca_app.command()
def revoke(
    service: Annotated[str, typer.Option(help="The service whose identity is cut off.")],
    reason: Annotated[str, typer.Option(help="Why (kept with the revocation, in the audit log).")],
    config: ConfigOption = Path("garrison.yaml"),
) -> None:
    """Revoke a service's identity: no more certificates, and every sidecar refuses the ones it holds."""
    loaded = _load(config)
    if _admin(loaded, "POST", "/revocations", {"service": service, "reason": reason}) is None:
        _change(loaded, service, lambda parts, spiffe_id: parts.state.revoke(spiffe_id, reason))
    out.print(f"revoked {service}")


@ca_app.command()
def reinstate(
    service: Annotated[str, typer.Option(help="The revoked service to reinstate.")],
    config: ConfigOption = Path("garrison.yaml"),
) -> None:
    """Lift a revocation (the workload then needs a new join token if its certificate lapsed)."""
    loaded = _load(config)
    if _admin(loaded, "DELETE", "/revocations", {"service": service}) is None:
        _change(loaded, service, lambda parts, spiffe_id: parts.state.reinstate(spiffe_id))
    out.print(f"reinstated {service}")


def _change(loaded: LoadedConfig, service: str, change: Callable[[CaParts, str], Awaitable[Any]]) -> None:
    from garrison.pki.authority import workload_id

    try:
        spiffe_id = workload_id(loaded.config.trust_domain, service)
    except ValueError as exc:
        raise _fail(str(exc)) from None

    async def run(parts: CaParts) -> None:
        await change(parts, spiffe_id)

    _with_parts(loaded, run)


def quarantine(
    service: Annotated[str, typer.Argument(help="The service to cut off from every peer.")],
    reason: Annotated[str, typer.Option(help="Why (kept with the quarantine, in the audit log).")] = "",
    config: ConfigOption = Path("garrison.yaml"),
) -> None:
    """Quarantine SERVICE: every sidecar refuses its calls and calls to it within a second."""
    loaded = _load(config)
    if _admin(loaded, "POST", "/quarantine", {"service": service, "reason": reason}) is None:
        _change(loaded, service, lambda parts, _: parts.state.quarantine(service, reason))
    out.print(f"quarantined {service}")


def unquarantine(
    service: Annotated[str, typer.Argument(help="The quarantined service to release.")],
    config: ConfigOption = Path("garrison.yaml"),
) -> None:
    """Release SERVICE from quarantine."""
    loaded = _load(config)
    if _admin(loaded, "DELETE", "/quarantine", {"service": service}) is None:
        _change(loaded, service, lambda parts, _: parts.state.unquarantine(service))
    out.print(f"released {service}")


@rotate_app.command("intermediate")
def rotate_intermediate(config: ConfigOption = Path("garrison.yaml"), root_key: RootKeyOption = None) -> None:
    """A new issuing intermediate under the current root; certificates already issued stay valid."""
    from garrison.mesh.ca.server import ca_files
    from garrison.pki.authority_files import AuthorityFilesError

    loaded = _load(config)
    files = ca_files(loaded.config)
    try:
        issuing = files.rotate_intermediate(
            files.root(key_file=root_key),
            loaded.config.trust_domain,
            now=_now(),
            lifetime=_intermediate_ttl(loaded),
        )
    except AuthorityFilesError as exc:
        raise _fail(str(exc)) from None
    out.print(f"issuing now: {issuing.certificate.subject.rfc4514_string()}")


@root_app.command("add")
def root_add(
    config: ConfigOption = Path("garrison.yaml"),
    offline_root: Annotated[Path | None, typer.Option(help="Write the new root's sealed key here.")] = None,
) -> None:
    """Step 1: a new root joins the trust bundle (not issuing yet). Wait until every workload has
    the new bundle (sidecars get it within a second; others at their next renewal) before `activate`."""
    from garrison.mesh.ca.server import ca_files
    from garrison.pki.authority_files import AuthorityFilesError

    loaded = _load(config)
    files = ca_files(loaded.config)
    try:
        root = files.add_root(loaded.config.trust_domain, now=_now(), offline_root=offline_root)
    except AuthorityFilesError as exc:
        raise _fail(str(exc)) from None
    out.print(f"added root {root.certificate.serial_number:x} to the bundle")


@root_app.command("activate")
def root_activate(config: ConfigOption = Path("garrison.yaml"), root_key: RootKeyOption = None) -> None:
    """Step 2: issue under the newest root from now on; both roots stay trusted. Retire the old one
    after one workload certificate lifetime."""
    from garrison.mesh.ca.server import ca_files
    from garrison.pki.authority_files import AuthorityFilesError

    loaded = _load(config)
    files = ca_files(loaded.config)
    try:
        newest = max(files.bundle(), key=lambda cert: cert.not_valid_before_utc)
        root = files.root(newest.serial_number, key_file=root_key)
        files.activate_root(root, loaded.config.trust_domain, now=_now(), lifetime=_intermediate_ttl(loaded))
    except AuthorityFilesError as exc:
        raise _fail(str(exc)) from None
    out.print(f"issuing under root {newest.serial_number:x}")


@root_app.command("retire")
def root_retire(config: ConfigOption = Path("garrison.yaml")) -> None:
    """Step 3: the roots that do not sign the issuing intermediate leave the trust bundle."""
    from garrison.mesh.ca.server import ca_files
    from garrison.pki.authority_files import AuthorityFilesError

    loaded = _load(config)
    files = ca_files(loaded.config)
    try:
        active = files.issuing().parents[-1].serial_number
        retired = [cert.serial_number for cert in files.bundle() if cert.serial_number != active]
        if not retired:
            raise _fail("only the active root is trusted: nothing to retire")
        for serial in retired:
            files.retire_root(serial)
    except AuthorityFilesError as exc:
        raise _fail(str(exc)) from None
    out.print("retired root(s) " + ", ".join(f"{serial:x}" for serial in retired))


@ca_app.command()
def status(config: ConfigOption = Path("garrison.yaml")) -> None:
    """Roots with expiry, the issuing intermediate, outstanding join tokens, revoked and quarantined."""
    from garrison.mesh.ca.status import ca_status

    loaded = _load(config)
    out.print(_with_parts(loaded, ca_status))
