"""A tiny service app for the mesh demo (`make demo`): run once as `orders`, once as `payments`.

Behind its sidecar, it answers any request with JSON saying who called it: the caller identity its
sidecar verified (the `garrison-caller` headers; the sidecar drops any the caller sent itself).
`/call/<peer>/<path>` makes it call a peer instead, the way an app in the mesh does: plain HTTP to
its own sidecar's outbound port (`http://127.0.0.1:<outbound>/<peer>/<path>`), which adds mutual TLS,
the peer's identity check, and the policy. It answers with the peer's status and answer.

With ``--vault`` (`garrison up --demo` with a ``vault`` section), it first joins the mesh with a
workload certificate of its own (``spiffe://<td>/svc/<service>``, a one-time join token from `up` in
``GARRISON_JOIN_TOKEN``; later starts reuse the saved one), logs in to the vault with it
(``auth/cert/login``: no bootstrap secret), and, with ``--vault-secret``, reads its database password
there before it serves: a service that cannot get its password does not start. ``GET /vault`` says
how that went (identity, policies, where the password came from, never the password itself);
``GET /vault/read/<path>`` tries a KV read with the app's own token and answers the status only.

Standard library only, so it runs wherever Garrison does; the mesh join alone (``--vault``) uses
Garrison's workload helper (garrison.pki.workload), which makes the key and the CSR.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

PASSED_ON = ("content-type", "traceparent")  # what a call to a peer keeps from the request that made it


class Vault:
    """This app's session with the vault: its address, TLS context and token (never shown)."""

    def __init__(self, url: str, context: ssl.SSLContext) -> None:
        self.url, self.context = url.rstrip("/"), context
        self.token = ""
        self.report: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"Vault({self.url!r})"

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"X-Vault-Token": self.token} if self.token else {}
        url = self.url + "/v1/" + path
        request = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310
        try:
            with urllib.request.urlopen(request, context=self.context, timeout=10) as response:  # noqa: S310
                return int(response.status), json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            answer = exc.read()
            return int(exc.code), json.loads(answer) if answer.startswith(b"{") else {}

    def login(self) -> None:
        """``auth/cert/login`` with the certificate the TLS context presents."""
        status, answer = self.call("POST", "auth/cert/login", {})
        if status != 200:
            raise SystemExit(f"vault cert login refused ({status}): {answer.get('errors')}")
        auth = answer["auth"]
        self.token = auth["client_token"]
        self.report = {
            "login": "auth/cert/login",
            "spiffe_id": auth["metadata"].get("spiffe_id"),
            "policies": auth["policies"],
            "ttl": auth["lease_duration"],
        }

    def read_password(self, kv_path: str) -> str:
        """The ``password`` field of the KV v2 secret ``kv_path`` (``secret/orders/db``)."""
        mount, _, rest = kv_path.partition("/")
        status, answer = self.call("GET", f"{mount}/data/{rest}")
        if status != 200:
            raise SystemExit(f"cannot read {kv_path} from the vault ({status}): {answer.get('errors')}")
        password = answer["data"]["data"].get("password")
        if not isinstance(password, str) or not password:
            raise SystemExit(f"{kv_path} in the vault has no `password`")
        version = answer["data"]["metadata"]["version"]
        self.report["password"] = {"source": "vault", "path": kv_path, "version": version}
        return password

    def database_credentials(self, creds_path: str, database_url: str) -> bool:
        """Dynamic PostgreSQL credentials from ``creds_path`` (``database/creds/orders``), used at once
        to connect to ``database_url``: whether that worked (the reason is kept for the report)."""
        status, answer = self.call("GET", creds_path)
        if status != 200:
            self.report["fallback"] = (
                f"{creds_path} -> {status} {answer.get('errors')}: the KV secret instead"
            )
            return False
        username, password = answer["data"]["username"], answer["data"]["password"]
        try:
            connected_as = asyncio.run(_connect(database_url, username, password))
        except Exception as exc:  # any driver error means: fall back, and say why
            self.report["fallback"] = (
                f"connecting with {username} failed ({type(exc).__name__}): the KV secret"
            )
            return False
        self.report["password"] = {
            "source": "vault database",
            "path": creds_path,
            "username": username,
            "lease_duration": answer["lease_duration"],
            "connected_as": connected_as,
        }
        return True

    def try_read(self, kv_path: str) -> dict[str, Any]:
        """What the vault answers this app's token for ``kv_path``: the status, errors, key names only."""
        mount, _, rest = kv_path.partition("/")
        status, answer = self.call("GET", f"{mount}/data/{rest}")
        found: dict[str, Any] = {"path": kv_path, "status": status, "errors": answer.get("errors", [])}
        if status == 200:
            found["keys"] = sorted(answer["data"]["data"])
        return found


async def _connect(url: str, username: str, password: str) -> str:
    import asyncpg

    connection = await asyncpg.connect(url, user=username, password=password, timeout=10)
    try:
        return str(await connection.fetchval("SELECT current_user"))
    finally:
        await connection.close()


def join_mesh(ca_url: str, ca_bundle: Path, directory: Path) -> Path:
    """This app's workload certificate (joined once with GARRISON_JOIN_TOKEN, then reused): the file
    holding the chain and its key (0600)."""
    from garrison.pki.workload import WorkloadIdentity

    async def join() -> None:
        identity = WorkloadIdentity(ca_url, directory, ca_bundle=ca_bundle, follow_state=False)
        await identity.start()
        await identity.close()  # the demo app logs in once, at start: no renewals to keep

    asyncio.run(join())
    return directory / "identity.pem"


class Handler(BaseHTTPRequestHandler):
    service = "app"
    outbound = "127.0.0.1:15000"
    vault: Vault | None = None

    def do_GET(self) -> None:
        if self.path == "/vault" or self.path.startswith("/vault/read/"):
            self._vault()
            return
        self._answer()

    def _vault(self) -> None:
        if self.vault is None:
            status, payload = 404, {"error": "this app was started without --vault"}
        elif self.path == "/vault":
            status, payload = 200, {"service": self.service, **self.vault.report}
        else:
            status, payload = 200, self.vault.try_read(self.path[len("/vault/read/") :])
        data = json.dumps(payload, indent=2).encode() + b"\n"
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        self._answer()

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path.startswith("/call/"):
            status, payload = self._call_peer(self.path[len("/call") :], body)
        else:
            status, payload = (
                200,
                {
                    "service": self.service,
                    "method": self.command,
                    "path": self.path,
                    "caller": self.headers.get("garrison-caller"),
                    "caller_service": self.headers.get("garrison-caller-service"),
                },
            )
        data = json.dumps(payload, indent=2).encode() + b"\n"
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _call_peer(self, peer_path: str, body: bytes) -> tuple[int, dict[str, object]]:
        """``peer_path`` is ``/<peer>/<path>``: through this service's sidecar, as the sidecar wants it."""
        headers = {name: self.headers[name] for name in PASSED_ON if self.headers.get(name)}
        url = f"http://{self.outbound}{peer_path}"
        request = urllib.request.Request(url, data=body or None, method=self.command, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                status, answer = int(response.status), response.read()
        except urllib.error.HTTPError as exc:
            status, answer = int(exc.code), exc.read()
        except OSError as exc:
            return 502, {"service": self.service, "error": f"cannot reach the sidecar: {exc}"}
        try:
            decoded: object = json.loads(answer)
        except ValueError:
            decoded = answer.decode(errors="replace")
        return status, {"service": self.service, "called": peer_path, "status": status, "answer": decoded}

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the sidecars log every call already."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--service", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--outbound", required=True, help="host:port of this service's sidecar outbound")
    parser.add_argument("--vault", help="the vault's URL: log in there with a workload certificate")
    parser.add_argument("--vault-ca", type=Path, help="the CA file the vault's certificate is checked with")
    parser.add_argument("--ca-url", help="the mesh CA's URL (to join with GARRISON_JOIN_TOKEN)")
    parser.add_argument("--ca-bundle", type=Path, help="the mesh CA's trust bundle (state_dir/ca/bundle.pem)")
    parser.add_argument("--identity", type=Path, help="where this app keeps its workload identity")
    parser.add_argument(
        "--vault-secret", help="the KV v2 secret holding its database password, read at start"
    )
    parser.add_argument(
        "--vault-database", help="dynamic PostgreSQL credentials to ask first (database/creds/..)"
    )
    parser.add_argument(
        "--database-url", help="the PostgreSQL those credentials are for (no credentials in it)"
    )
    args = parser.parse_args()
    Handler.service, Handler.outbound = args.service, args.outbound
    if args.vault:
        Handler.vault = connect_vault(args)
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def connect_vault(args: argparse.Namespace) -> Vault:
    """Join the mesh, log in to the vault with the certificate, read the password: before serving."""
    identity = join_mesh(args.ca_url, args.ca_bundle, args.identity)
    context = ssl.create_default_context(cafile=str(args.vault_ca))
    context.load_cert_chain(identity)  # the chain and the key, in one 0600 file
    vault = Vault(args.vault, context)
    vault.login()
    if args.vault_database and vault.database_credentials(args.vault_database, args.database_url):
        print(  # the app's one line about its start; never the password
            f"{args.service}: logged in to the vault as {vault.report['spiffe_id']}; PostgreSQL "
            f"credentials from {args.vault_database} ({vault.report['password']['username']})",
            file=sys.stderr,
            flush=True,
        )
    elif args.vault_secret:
        vault.read_password(args.vault_secret)  # a real service would open its database with it now
        print(  # the app's one line about its start; never the password
            f"{args.service}: logged in to the vault as {vault.report['spiffe_id']} "
            f"(policies {', '.join(vault.report['policies'])}); database password read from "
            f"{args.vault_secret} v{vault.report['password']['version']}",
            file=sys.stderr,
            flush=True,
        )
    return vault


if __name__ == "__main__":
    main()
