"""A real `garrison identity` process for tests: its config, its CLI, a fresh PostgreSQL database, and a
browser without JavaScript (cookies and forms, no automatic redirects) for the sign-in pages."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import yaml
from gateway_harness import stop_process

from garrison.core.ready import read_ready

GARRISON = Path(sys.executable).parent / "garrison"
T = TypeVar("T")


def identity_config(directory: Path, database: str | None = None, **overrides: Any) -> dict[str, Any]:
    identity: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "issuer": "http://127.0.0.1:0",
        "tls": {"insecure_disable": True},
        "admin": {"listen": "127.0.0.1:0"},  # its address is in the ready file (admin_address)
        **overrides,
    }
    if database is not None:
        identity["database"] = database
    return {"state_dir": str(directory / "state"), "identity": identity}


class IdentityProcess:
    """`garrison identity` on port 0 (the issuer follows the port); SIGTERM to stop."""

    def __init__(self, directory: Path, config: dict[str, Any]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.config = config
        self.config_path = directory / "garrison.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.ready_path = directory / "identity-ready.json"
        self.stderr_path = directory / "identity.stderr"
        self.proc: subprocess.Popen[bytes] | None = None
        self.issuer = ""
        self.address = ""
        self.admin_address = ""  # the admin listener's host:port ("" when it did not open)

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """`garrison identity ARGS -c CONFIG`: exit code, stdout and stderr, as the command gives them.

        It runs the command's own typer app in this process: a process start per call cost seconds on a
        loaded machine, and test modules make dozens of calls while setting up. test_identity_cli.py runs
        the installed command as separate processes."""
        from typer.testing import CliRunner

        from garrison.cli import app

        argv = ["identity", *args, "-c", str(self.config_path)]
        result = CliRunner().invoke(app, argv, input=stdin)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return subprocess.CompletedProcess(argv, result.exit_code, result.stdout, result.stderr)

    def create_role(self, name: str, *scopes: str) -> None:
        result = self.cli("role", "create", name, *(arg for scope in scopes for arg in ("--scope", scope)))
        assert result.returncode == 0, result.stderr

    def create_user(self, username: str, password: str, *roles: str, email: str | None = None) -> str:
        """A user through `garrison identity user create`; returns its user_id (the `sub`)."""
        args = ["user", "create", username, "--password-stdin"]
        args += [arg for role in roles for arg in ("--role", role)]
        if email:
            args += ["--email", email]
        result = self.cli(*args, stdin=password + "\n")
        assert result.returncode == 0, result.stderr
        return result.stderr.rsplit("(sub ", 1)[1].split(")", 1)[0]

    def run_stores(self, work: Callable[[Any, Any], Awaitable[T]]) -> T:
        """``work(engine, kek)`` against this provider's database and key-encryption key (what the CLI
        cannot do yet: TOTP with a scripted code, clients with post-logout redirect URIs)."""
        from garrison.pki.kek import KeyEncryption
        from garrison.store.db import create_all, make_engine

        identity = self.config["identity"]
        state_dir = Path(self.config["state_dir"])

        async def main() -> T:
            engine = make_engine(identity.get("database"), state_dir)
            try:
                await create_all(engine)
                return await work(engine, KeyEncryption.load(state_dir))
            finally:
                await engine.dispose()

        return asyncio.run(main())

    def enroll_totp(self, user_id: str) -> tuple[str, list[str]]:
        """A confirmed authenticator for the user: its base32 seed and ten recovery codes."""
        import pyotp

        from garrison.identity.mfa import MfaStore

        async def work(engine: Any, kek: Any) -> tuple[str, list[str]]:
            store = MfaStore(engine, kek)
            secret, _ = await store.begin_enrollment(user_id)
            assert await store.confirm_enrollment(user_id, pyotp.TOTP(secret).now())
            return secret, await store.issue_recovery_codes(user_id)

        return self.run_stores(work)

    def create_web_client(
        self,
        name: str,
        redirect_uris: list[str],
        *,
        scopes: list[str],
        auth_method: str = "client_secret_basic",
        post_logout_redirect_uris: list[str] | None = None,
        require_mfa: bool = False,
        grants: tuple[str, ...] = ("authorization_code", "refresh_token"),
    ) -> dict[str, Any]:
        """A client of the browser flow; ``client_id``, ``client_secret`` (None for public clients) and
        ``redirect_uri`` (the first)."""
        from garrison.identity.clients import ClientStore

        async def work(engine: Any, kek: Any) -> Any:
            return await ClientStore(engine, kek).create(
                name,
                grant_types=grants,
                auth_method=auth_method,
                scopes=scopes,
                redirect_uris=redirect_uris,
                post_logout_redirect_uris=post_logout_redirect_uris or [],
                require_mfa=require_mfa,
            )

        created = self.run_stores(work)
        return {
            "client_id": created.record.client_id,
            "client_secret": created.secret,
            "redirect_uri": redirect_uris[0],
        }

    def create_client(self, name: str, *args: str) -> dict[str, Any]:
        result = self.cli("client", "create", "--name", name, "--json", *args)
        assert result.returncode == 0, result.stderr
        created: dict[str, Any] = json.loads(result.stdout)
        return created

    def start(self, timeout: float = 60.0) -> IdentityProcess:  # a ceiling for a loaded machine
        self.ready_path.unlink(missing_ok=True)
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [
                    str(GARRISON),
                    "identity",
                    "-c",
                    str(self.config_path),
                    "--ready-file",
                    str(self.ready_path),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=self.directory,
            )
        deadline = time.monotonic() + timeout
        while (ready := read_ready(self.ready_path)) is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"identity provider did not start:\n{self.stderr_path.read_text()[-3000:]}"
                )
            time.sleep(0.02)
        self.issuer, self.address = ready.details["issuer"], ready.listeners["identity"]
        self.admin_address = ready.listeners.get("admin", "")
        return self

    def stop(self) -> int | None:
        return stop_process(self.proc, grace=10.0)

    def stderr_text(self) -> str:
        return self.stderr_path.read_text()

    def post(self, path: str, data: dict[str, str], auth: tuple[str, str] | None = None) -> httpx.Response:
        return httpx.post(self.issuer + path, data=data, auth=auth, timeout=10)

    def token(self, client: dict[str, Any], **extra: str) -> httpx.Response:
        credentials = (client["client_id"], client["client_secret"])
        return self.post("/token", {"grant_type": "client_credentials", **extra}, credentials)


@contextmanager
def postgres_database(server_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database on the test server, dropped afterwards."""
    import asyncpg

    name = f"garrison_{uuid.uuid4().hex[:12]}"
    dsn = server_url.replace("postgresql+asyncpg://", "postgresql://")

    async def run(statement: str) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    try:
        base = dsn.rsplit("/", 1)[0]
        yield f"{base}/{name}"
    finally:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# -- the browser side -------------------------------------------------------------------------------------


def pkce() -> tuple[str, str]:
    """A fresh ``(code_verifier, S256 code_challenge)``."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


class _Form(HTMLParser):
    """The first form of a page: its action and its hidden fields (entities already decoded)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.action: str | None = None
        self.hidden: dict[str, str] = {}
        self._in_form = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        if tag == "form" and self.action is None:
            self.action, self._in_form = attributes.get("action", ""), True
        elif tag == "input" and self._in_form and attributes.get("type") == "hidden":
            self.hidden[attributes["name"]] = attributes.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._in_form = False


def page_form(page: httpx.Response) -> tuple[str, dict[str, str]]:
    parser = _Form()
    parser.feed(page.text)
    assert parser.action is not None, f"no form on the page:\n{page.text[:500]}"
    return urljoin(str(page.url), parser.action), parser.hidden


def page_kind(page: httpx.Response) -> str:
    """Which page this is ("login", "mfa", "consent", "logout"), from its form's action."""
    if page.status_code in (301, 302, 303):
        return "redirect"
    if "<form" not in page.text:
        return "page"
    return urlsplit(page_form(page)[0]).path.rsplit("/", 1)[-1]


def redirect_params(response: httpx.Response) -> dict[str, str]:
    """The query parameters of a redirect's Location (each once)."""
    assert response.status_code == 302, f"{response.status_code}: {response.text[:500]}"
    query = parse_qs(urlsplit(response.headers["location"]).query, keep_blank_values=True)
    assert all(len(values) == 1 for values in query.values())
    return {name: values[0] for name, values in query.items()}


class Browser:
    """A browser without JavaScript: keeps cookies, submits forms, never follows redirects by itself."""

    def __init__(self, issuer: str) -> None:
        self.issuer = issuer
        self.http = httpx.Client(follow_redirects=False, timeout=20)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def authorize(self, **params: str) -> httpx.Response:
        return self.http.get(self.issuer + "/authorize", params=params)

    def submit(self, page: httpx.Response, **fields: str) -> httpx.Response:
        """Post the page's form: its hidden fields (CSRF token included) plus ``fields``."""
        action, hidden = page_form(page)
        return self.http.post(action, data={**hidden, **fields})

    def sign_in(self, page: httpx.Response, username: str, password: str) -> httpx.Response:
        assert page_kind(page) == "login", page.text[:500]
        return self.submit(page, username=username, password=password)

    def allow(self, page: httpx.Response) -> httpx.Response:
        """Consent if asked; otherwise the page is already the answer."""
        return self.submit(page, decision="allow") if page_kind(page) == "consent" else page
