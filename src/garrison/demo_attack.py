"""The end of `make demo`: a scripted attack that the audit pipeline detects, answers and records.

With an ``audit`` section, once the other demo steps have run, an attacker probes the gateway
(a path traversal, a source-code enumeration, a sqlmap user agent: Sigma alerts), then guesses the
password of a demo user at the identity provider's sign-in form until the ``brute_force_ip`` rule
raises an alert whose ``block_ip`` response blocks the attacker's address at the gateway. The demo
then shows that the attacker gets 403 while everyone else still gets 200, prints the trail from the
audit index (alerts and responses) and runs ``garrison audit verify``.

The attacker speaks from its own loopback address (``ATTACKER_IP``, the client sockets' local
address), so that the block never locks the person running the demo (on 127.0.0.1) out of it. The
demo user's password is random, made here, and never printed; the attacker never knows it.
Everything goes through the same sockets and TLS a user's curl would use.
"""

from __future__ import annotations

import asyncio
import secrets
import shlex
import ssl
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
from rich.console import Console

from garrison.config.model import GarrisonConfig
from garrison.demo import gateway_url
from garrison.pki.tls import auto_trust_file

__all__ = ["ATTACKER_IP", "DEMO_USER", "WEB_CLIENT", "attack"]

ATTACKER_IP = "127.0.0.66"  # on loopback, like every demo address, but not the user's own
DEMO_USER = "demo-user"
WEB_CLIENT = "demo-web"
REDIRECT_URI = "https://app.demo.local/callback"
# (path, user agent, what it is): each matches one of the shipped SigmaHQ web rules. Under a route
# (/api): the gateway's event of a request refused before routing (no route: 404; a target the
# normaliser refuses, such as ..%2f: 400) deliberately echoes nothing of it, so Sigma has no path
# to match there (the `scanning` rule still counts those refusals per address).
PROBES = (
    ("/api/files?name=../../../etc/passwd", "Mozilla/5.0", "path traversal"),
    ("/api/.git/config", "Mozilla/5.0", "source-code enumeration"),
    ("/api/hello?id=1", "sqlmap/1.7.2#stable (https://sqlmap.org)", "sqlmap user agent"),
)
BLOCK_WAIT = 20.0  # seconds the demo waits for the response to reach the gateway
TRAIL_WAIT = 10.0  # and for the trail to be in the index


def _context(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca) if ca.exists() else None)


class _Form(HTMLParser):
    """The action and hidden fields of the sign-in page's one form. Hand-written: one known form of
    our own provider, for which a scraping library would be a dependency for twenty lines."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.hidden: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "form" and self.action is None:
            self.action = values.get("action", "")
        elif tag == "input" and values.get("type") == "hidden" and values.get("name"):
            self.hidden[values["name"]] = values.get("value", "")


def _form(page: httpx.Response) -> tuple[str, dict[str, str]] | None:
    parser = _Form()
    parser.feed(page.text)
    if parser.action is None:
        return None
    return urljoin(str(page.url), parser.action), parser.hidden


async def _prepare_identity(config: GarrisonConfig) -> str:
    """A web client (authorization code, PKCE) and a demo user with a random password, afresh: the
    client's id."""
    from garrison.identity.clients import ClientStore
    from garrison.identity.migrations import SCHEMA
    from garrison.identity.users import UserStore
    from garrison.pki.kek import KeyEncryption
    from garrison.store.db import make_engine
    from garrison.store.startup import prepare_schema

    assert config.identity is not None
    engine = make_engine(config.identity.database, config.state_dir)
    try:
        await prepare_schema(engine, SCHEMA, config.store)
        kek = KeyEncryption.load(config.state_dir)
        clients = ClientStore(engine, kek)
        await clients.delete(WEB_CLIENT)
        created = await clients.create(
            WEB_CLIENT,
            grant_types=["authorization_code"],
            auth_method="none",
            scopes=["openid"],
            redirect_uris=[REDIRECT_URI],
        )
        users = UserStore(engine, kek)
        password = secrets.token_urlsafe(24)  # nobody knows it: the attacker guesses, and fails
        existing = await users.get_by_username(DEMO_USER)
        if existing is None:
            await users.create(DEMO_USER, password)
        else:
            await users.set_password(existing.user_id, password)
        return created.record.client_id
    finally:
        await engine.dispose()


def _client(verify: ssl.SSLContext | bool, source: str) -> httpx.Client:
    """An HTTP client whose connections leave from ``source`` (a loopback address)."""
    transport = httpx.HTTPTransport(verify=verify, local_address=source)
    return httpx.Client(transport=transport, timeout=10, follow_redirects=False)


def _gateway_client(config: GarrisonConfig, gateway: str, source: str) -> tuple[httpx.Client, str]:
    url, context = gateway_url(config, gateway, "")
    return _client(context if context is not None else False, source), url


def _probe(config: GarrisonConfig, gateway: str, console: Console) -> None:
    http, base = _gateway_client(config, gateway, ATTACKER_IP)
    with http:
        for path, agent, what in PROBES:
            status = http.get(base + path, headers={"user-agent": agent}).status_code
            console.print(f"  GET {path} -> {status} ({what})", soft_wrap=True, markup=False)


def _sign_in_page(http: httpx.Client, issuer: str, client_id: str) -> httpx.Response | None:
    """The sign-in page for the demo web client; the provider picks a new client up within a
    second or so, hence the few bounded tries."""
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT_URI,
        "scope": "openid",
        "state": secrets.token_urlsafe(8),
        "code_challenge": secrets.token_urlsafe(32),
        "code_challenge_method": "S256",
    }
    for _ in range(20):
        page = http.get(issuer + "/authorize", params=params)
        if page.status_code == 200 and _form(page) is not None:
            return page
        time.sleep(0.25)
    return None


def _guess_passwords(config: GarrisonConfig, client_id: str, guesses: int, console: Console) -> None:
    """``guesses`` wrong passwords for the demo user, through the sign-in form (CSRF token and the
    carried authorization request included, as a browser posts them)."""
    identity = config.identity
    assert identity is not None
    trust = auto_trust_file(config, config.state_dir / "identity")
    verify: ssl.SSLContext | bool = False if identity.tls.insecure_disable else _context(trust)
    statuses: dict[int, int] = {}
    with _client(verify, ATTACKER_IP) as http:
        page = _sign_in_page(http, identity.issuer, client_id)
        form = _form(page) if page is not None else None
        if form is None:
            console.print("[red]  the sign-in page did not come up: no password guessing[/red]")
            return
        for attempt in range(guesses):
            action, hidden = form
            fields = {**hidden, "username": DEMO_USER, "password": f"guess-{attempt}-{secrets.token_hex(4)}"}
            answer = http.post(action, data=fields)
            statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
            form = _form(answer) or form  # the page again, with its form: post that one next
    shown = ", ".join(f"{count} x {status}" for status, count in sorted(statuses.items()))
    console.print(
        f"  POST {identity.issuer}/login as {DEMO_USER}: {guesses} wrong passwords -> {shown}",
        soft_wrap=True,
        markup=False,
    )


def _wait_for_block(config: GarrisonConfig, gateway: str, console: Console) -> bool:
    """Poll (bounded) until the attacker gets 403 at the gateway; then show 127.0.0.1 still gets in."""
    attacker, base = _gateway_client(config, gateway, ATTACKER_IP)
    user, _ = _gateway_client(config, gateway, "127.0.0.1")
    deadline = time.monotonic() + BLOCK_WAIT
    with attacker, user:
        status = 0
        while time.monotonic() < deadline:
            status = attacker.get(base + "/api/hello").status_code
            if status == 403:
                break
            time.sleep(0.2)
        theirs = user.get(base + "/api/hello").status_code
    if status != 403:
        console.print(
            f"[red]  the attacker was not blocked within {BLOCK_WAIT:g}s (last answer {status})[/red]"
        )
        return False
    console.print(f"[green]  attacker {ATTACKER_IP}: GET /api/hello -> 403[/green] (blocked at the gateway)")
    colour = "green" if theirs == 200 else "red"
    console.print(f"[{colour}]  you, 127.0.0.1: GET /api/hello -> {theirs}[/{colour}]")
    return True


async def _trail(config: GarrisonConfig, since: float) -> list[dict[str, Any]]:
    """The alerts about the attacker's address and the demo user's account, and the responses to
    them since ``since`` (this run's attack: a state_dir keeps earlier ones), oldest first, from the
    audit index."""
    from garrison.audit.index import index_engine
    from garrison.audit.search import SearchFilter, search

    engine = index_engine(config)
    try:
        found = []
        for actor in (("actor_ip", ATTACKER_IP), ("actor_subject", DEMO_USER)):
            for kind in ("audit.alert", "audit.response"):
                found += await search(engine, SearchFilter(since=since, actor=actor, type=kind, limit=50))
    finally:
        await engine.dispose()
    return [item.event for item in sorted(found, key=lambda item: item.seq)]


def _wait_for_trail(config: GarrisonConfig, since: float) -> list[dict[str, Any]]:
    """The trail, once it holds the brute-force alert and the block (bounded: the index trails the log)."""
    deadline = time.monotonic() + TRAIL_WAIT
    while True:
        events = asyncio.run(_trail(config, since))
        rules = {e["details"].get("rule") for e in events if e["type"] == "audit.alert"}
        blocked = any(
            e["details"].get("action") == "block_ip" for e in events if e["type"] == "audit.response"
        )
        if ("brute_force_ip" in rules and blocked) or time.monotonic() > deadline:
            return events
        time.sleep(0.2)


def _describe(event: dict[str, Any]) -> str:
    details = event["details"]
    if event["type"] == "audit.alert":
        return f"alert    {details['rule']} ({details['severity']}): {details['summary']}"
    until = f" until {details['expiry']}" if "expiry" in details else ""
    return f"response {details['action']} {event.get('target') or ''} -> {details['result']}{until}"


def _show_trail(config: GarrisonConfig, console: Console, since: float) -> None:
    events = _wait_for_trail(config, since)
    console.print(
        f"\nThe trail in the audit index (alerts and responses, ip:{ATTACKER_IP} and subject:{DEMO_USER}):"
    )
    for event in events:
        console.print(f"  {event['time'][:19]}Z {_describe(event)}", soft_wrap=True, markup=False)
    if not events:
        console.print("[red]  nothing in the audit index yet[/red]")


def _garrison() -> str:
    beside = Path(sys.executable).parent / "garrison"  # the venv's command, which may not be on PATH
    return shlex.quote(str(beside)) if beside.exists() else "garrison"


def _verify(source: Path, console: Console) -> None:
    """``garrison audit verify`` on the live log, as a user would run it: its summary line."""
    argv = [sys.executable, "-m", "garrison", "audit", "verify", "-c", str(source)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    summary = (done.stdout.strip() or done.stderr.strip()).splitlines()
    colour = "green" if done.returncode == 0 else "red"
    console.print(f"\n[{colour}]garrison audit verify -> exit {done.returncode}[/{colour}]")
    for line in summary[-3:]:
        console.print(f"  {line}", soft_wrap=True, markup=False)


def _try_it(config: GarrisonConfig, source: Path, console: Console) -> None:
    garrison, config_file = _garrison(), shlex.quote(str(source))
    console.print(
        "\nTry it yourself:\n"
        f"  {garrison} audit search -c {config_file} --actor ip:{ATTACKER_IP}\n"
        f"  {garrison} audit search -c {config_file} --type audit.alert --since 10m\n"
        f"  {garrison} audit verify -c {config_file}\n"
        f"  {garrison} blocklist -c {config_file}              # what the gateway refuses, until when\n"
        f"  {garrison} unblock {ATTACKER_IP} -c {config_file}   # lift the block before it expires",
        soft_wrap=True,
        markup=False,
    )


def attack(config: GarrisonConfig, gateway: str, console: Console, source: Path) -> None:
    """The scripted attack and its trail (blocking: HTTP and its own event loop; run it in a thread)."""
    if config.audit is None or config.identity is None:
        return
    from garrison.audit.detect.settings import settings_for

    console.print(
        f"\n[bold]The audit trail[/bold]: an attacker at {ATTACKER_IP} probes the gateway and guesses "
        "passwords; the collector detects it and blocks the address",
        soft_wrap=True,
    )
    started = time.time() - 1  # the trail of this run only (event times are wall-clock)
    try:
        _probe(config, gateway, console)
        client_id = asyncio.run(_prepare_identity(config))
        guesses = settings_for(config.audit.detection, "brute_force_ip").threshold + 2
        _guess_passwords(config, client_id, guesses, console)
        _wait_for_block(config, gateway, console)
    except (httpx.HTTPError, OSError) as exc:
        console.print(f"[red]demo attack failed:[/red] {exc}")
        return
    _show_trail(config, console, started)
    _verify(source, console)
    _try_it(config, source, console)
