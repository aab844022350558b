"""The two identity providers under test: install (oidc-provider), start, wait until ready, stop.

Process groups, readiness polling, stopping and CPU accounting live in common.processes. Once a
provider serves, oauth.check_provider() checks a sample of what the benchmark will send before anything
is measured.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from common import processes
from common.processes import Server, StartError, Unavailable, wait_for
from oauth import basic_authorization

from garrison.core.ready import read_ready

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
OIDC_DIR = HERE / "oidc-provider"
GARRISON_BIN = REPO / ".venv" / "bin" / "garrison"
READY_TIMEOUT = 30.0
INSTALL_TIMEOUT = 300.0
CLI_TIMEOUT = 60.0
SCOPE = "api"
ACCESS_TOKEN_TTL = 300
TOKEN_BODY = f"grant_type=client_credentials&scope={SCOPE}"
# oidc-provider will not introspect JWT access tokens, so its introspection tokens are opaque ones for
# a second resource server (see oidc-provider/server.mjs).
OIDC_OPAQUE_RESOURCE = "urn:garrison-bench:api-opaque"


class Pinning(processes.Pinning):
    """The provider under test alone on core 0 (all its threads); wrk on core 1."""

    PINNED = "pinned: provider under test on core 0 (all its threads); wrk on core 1"
    UNPINNED = "pinning off: the scheduler places every process (figures are not one-core figures)"


@dataclass
class Provider:
    """A started provider and what a client of it needs: where it is, its endpoints, the bench client."""

    name: str
    server: Server
    address: str  # "127.0.0.1:port"
    issuer: str
    authorization: str  # "Basic ..." for the bench client
    token_body: str = TOKEN_BODY  # the measured token request
    introspection_token_body: str = TOKEN_BODY  # how the tokens that get introspected are obtained
    token_path: str = "/token"  # replaced by what discovery says
    introspection_path: str = "/introspect"
    jwks: dict[str, object] = field(default_factory=dict)
    checks: list[str] = field(default_factory=list)  # what the start-up checks saw, for the report


# --- oidc-provider ---------------------------------------------------------------------------------


def _pinned_oidc_version() -> str:
    return str(json.loads((OIDC_DIR / "package.json").read_text())["dependencies"]["oidc-provider"])


def installed_oidc_version() -> str | None:
    try:
        return str(json.loads((OIDC_DIR / "node_modules/oidc-provider/package.json").read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


def ensure_oidc_provider() -> str:
    """Install bench/identity/oidc-provider/node_modules (npm ci) unless the pinned version is there."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            raise Unavailable(f"{tool} not found (oidc-provider needs Node.js 20+ and npm)")
    pinned = _pinned_oidc_version()
    if installed_oidc_version() == pinned:
        return pinned
    print(f"oidc-provider: installing {pinned} with npm ci into {OIDC_DIR / 'node_modules'}", flush=True)
    argv = ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"]
    try:
        done = subprocess.run(
            argv, cwd=OIDC_DIR, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        raise StartError(f"npm ci did not finish within {INSTALL_TIMEOUT:.0f} s") from None
    if done.returncode != 0 or installed_oidc_version() != pinned:
        tail = "\n".join((done.stderr + done.stdout).strip().splitlines()[-15:])
        raise StartError(f"npm ci failed (exit {done.returncode}):\n{tail}")
    return pinned


def _oidc_ready_address(server: Server) -> str | None:
    for line in server.output().splitlines():
        if line.startswith("{") and '"oidc_provider"' in line:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                return str(json.loads(line)["oidc_provider"])
    return None


def start_oidc_provider(tmp: Path, pin: Pinning) -> Provider:
    ensure_oidc_provider()
    client_id, secret = "bench", secrets.token_urlsafe(32)
    env = dict(os.environ, CLIENT_ID=client_id, CLIENT_SECRET=secret, NODE_ENV="production")
    argv = [*pin.server(), "node", str(OIDC_DIR / "server.mjs"), "--port", "0"]
    server = Server("oidc-provider", argv, tmp / "oidc-provider.out", env)
    try:
        address = wait_for(
            server, lambda: _oidc_ready_address(server), "printed no ready line", READY_TIMEOUT
        )
    except BaseException:
        server.stop()
        raise
    return Provider(
        "oidc-provider",
        server,
        address,
        issuer=f"http://{address}",
        authorization=basic_authorization(client_id, secret),
        introspection_token_body=f"{TOKEN_BODY}&resource={OIDC_OPAQUE_RESOURCE}",
    )


# --- Garrison --------------------------------------------------------------------------------------


NOT_AVAILABLE = "garrison identity is not available yet"


def garrison_config(tmp: Path) -> Path:
    config = {
        "state_dir": str(tmp / "garrison-state"),
        "identity": {
            "listen": "127.0.0.1:0",
            "issuer": "http://127.0.0.1:0",  # port 0: the issuer follows the port, the ready file says both
            "tls": {"insecure_disable": True},  # plain HTTP, as oidc-provider is served here
            "access_token_ttl": ACCESS_TOKEN_TTL,
        },
    }
    path = tmp / "garrison.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _cli(argv: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=CLI_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise StartError(f"{' '.join(argv[1:4])} did not finish within {CLI_TIMEOUT:.0f} s") from None


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:]) or "(no output)"


def create_garrison_client(config: Path) -> tuple[str, str]:
    """`garrison identity client create ... --json`: (client_id, client_secret)."""
    argv = [str(GARRISON_BIN), "identity", "client", "create", "-c", str(config)]
    argv += ["--name", "bench", "--grant", "client_credentials", "--scope", SCOPE, "--json"]
    done = _cli(argv)
    output = done.stderr + done.stdout
    if done.returncode != 0:
        if "No such command" in output or "No such option" in output:
            raise StartError(f"{NOT_AVAILABLE}: {_tail(output)}")
        raise StartError(f"garrison identity client create failed (exit {done.returncode}):\n{_tail(output)}")
    for line in reversed(done.stdout.strip().splitlines()):
        with contextlib.suppress(ValueError, KeyError, TypeError):
            found = json.loads(line)
            return str(found["client_id"]), str(found["client_secret"])
    with contextlib.suppress(ValueError, KeyError, TypeError):
        found = json.loads(done.stdout)  # pretty-printed over several lines
        return str(found["client_id"]), str(found["client_secret"])
    raise StartError("garrison identity client create --json printed no {client_id, client_secret} JSON")


def _garrison_ready_address(ready: Path) -> str | None:
    """The provider's "host:port" from its ready file (core/ready.py), None until it is written."""
    found = read_ready(ready)
    return found.listeners.get("identity") if found is not None else None


def start_garrison(tmp: Path, pin: Pinning) -> Provider:
    if not GARRISON_BIN.exists():
        raise StartError(f"{NOT_AVAILABLE}: {GARRISON_BIN} not found (is the package installed in .venv?)")
    config = garrison_config(tmp)
    client_id, secret = create_garrison_client(config)
    ready = tmp / "garrison-ready.json"
    argv = [*pin.server(), str(GARRISON_BIN), "identity", "-c", str(config), "--ready-file", str(ready)]
    server = Server("garrison", argv, tmp / "garrison.out")
    try:
        address = wait_for(
            server, lambda: _garrison_ready_address(ready), "wrote no ready file", READY_TIMEOUT
        )
    except StartError as exc:
        server.stop()
        if "No such command" in str(exc) or "No such option" in str(exc):
            raise StartError(f"{NOT_AVAILABLE}: {exc}") from None
        raise
    except BaseException:
        server.stop()
        raise
    issuer = str(json.loads(ready.read_text())["issuer"])
    return Provider("garrison", server, address, issuer, basic_authorization(client_id, secret))
