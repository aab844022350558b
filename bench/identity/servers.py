"""The two identity providers under test: install (oidc-provider), start, wait until ready, stop.

Every server runs in its own process group (``start_new_session``) so that stopping it also stops what
it started. Output goes to a log file in the run's temporary directory, never to a pipe that could fill
up and stall the server mid-benchmark. Once a provider serves, oauth.check_provider() checks a sample
of what the benchmark will send before anything is measured.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import yaml
from oauth import basic_authorization

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
OIDC_DIR = HERE / "oidc-provider"
GARRISON_BIN = REPO / ".venv" / "bin" / "garrison"
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0
INSTALL_TIMEOUT = 300.0
CLI_TIMEOUT = 60.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SCOPE = "api"
ACCESS_TOKEN_TTL = 300
TOKEN_BODY = f"grant_type=client_credentials&scope={SCOPE}"
# oidc-provider will not introspect JWT access tokens, so its introspection tokens are opaque ones for
# a second resource server (see oidc-provider/server.mjs).
OIDC_OPAQUE_RESOURCE = "urn:garrison-bench:api-opaque"


class StartError(Exception):
    """A provider did not come up; the message carries the tail of its output."""


class Unavailable(StartError):
    """Something a provider needs (node, npm) is not there: it is skipped, not failed."""


def free_port() -> int:
    """A loopback port that was free a moment ago (bind port 0, read it, close)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Pinning:
    """CPU placement: the provider under test alone on core 0; wrk on core 1."""

    enabled: bool

    def server(self) -> list[str]:
        return ["taskset", "-c", "0"] if self.enabled else []

    def client(self) -> list[str]:
        return ["taskset", "-c", "1"] if self.enabled else []

    def describe(self) -> str:
        if not self.enabled:
            return "pinning off: the scheduler places every process (figures are not one-core figures)"
        return "pinned: provider under test on core 0 (all its threads); wrk on core 1"


class Server:
    """One started process group whose output is captured to a file."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )

    def __enter__(self) -> Server:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by the live processes of this server's group."""
        return group_cpu_seconds(self.proc.pid)

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def output_tail(self, lines: int = 15) -> str:
        return "\n".join(self.output().strip().splitlines()[-lines:]) or "(no output)"

    def stop(self) -> None:
        """SIGTERM the group, SIGKILL it if the leader is still there after STOP_TIMEOUT."""
        if self._log.closed:
            return  # already stopped
        self._signal_group(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._signal_group(signal.SIGKILL)
            self.proc.wait(STOP_TIMEOUT)
        self._log.close()

    def _signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)  # pgid == pid: the server leads its own session


def group_cpu_seconds(pgid: int) -> float:
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()  # after "pid (comm)": field 3 onwards
        except OSError:
            continue  # exited while we looked
        if int(fields[2]) == pgid:  # field 5, pgrp
            ticks += int(fields[11]) + int(fields[12])  # fields 14 and 15, utime and stime
    return ticks / CLOCK_TICKS


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

    def still_alive(self) -> bool:
        return self.server.alive()


def _wait_for(server: Server, read: Callable[[], str | None], what: str) -> str:
    """Poll read() (the address, or None) until it answers, the server exits, or time runs out."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if not server.alive():
            raise StartError(f"exited with status {server.proc.returncode}:\n{server.output_tail()}")
        found = read()
        if found:
            return found
        time.sleep(0.05)
    raise StartError(f"{what} within {READY_TIMEOUT:.0f} s:\n{server.output_tail()}")


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
        address = _wait_for(server, lambda: _oidc_ready_address(server), "printed no ready line")
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


def garrison_config(tmp: Path, port: int) -> Path:
    config = {
        "state_dir": str(tmp / "garrison-state"),
        "identity": {
            "listen": f"127.0.0.1:{port}",
            "issuer": f"http://127.0.0.1:{port}",  # the port is picked here because the issuer names it
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
    """The ready file: {"identity": "host:port"} (or {"listeners": {"identity": ...}}, as the gateway's)."""
    try:
        found = json.loads(ready.read_text())
        return str(found["identity"] if "identity" in found else found["listeners"]["identity"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # not written yet, or written half-way


def start_garrison(tmp: Path, pin: Pinning) -> Provider:
    if not GARRISON_BIN.exists():
        raise StartError(f"{NOT_AVAILABLE}: {GARRISON_BIN} not found (is the package installed in .venv?)")
    config = garrison_config(tmp, free_port())
    client_id, secret = create_garrison_client(config)
    ready = tmp / "garrison-ready.json"
    argv = [*pin.server(), str(GARRISON_BIN), "identity", "-c", str(config), "--ready-file", str(ready)]
    server = Server("garrison", argv, tmp / "garrison.out")
    try:
        address = _wait_for(server, lambda: _garrison_ready_address(ready), "wrote no ready file")
    except StartError as exc:
        server.stop()
        if "No such command" in str(exc) or "No such option" in str(exc):
            raise StartError(f"{NOT_AVAILABLE}: {exc}") from None
        raise
    except BaseException:
        server.stop()
        raise
    issuer = str(yaml.safe_load(config.read_text())["identity"]["issuer"])
    return Provider("garrison", server, address, issuer, basic_authorization(client_id, secret))
