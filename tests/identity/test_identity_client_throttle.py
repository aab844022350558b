"""Failed client authentication at /token, /introspect and /revoke is throttled like a password: per
registered client and per address, counted before the check once a key has failed, audited, with the
right secret refused while locked; on SQLite and PostgreSQL.

The first half runs a real provider process (real sockets; a trusted proxy lets each test speak from
an address of its own); the second builds the provider in-process with an injected clock, to watch
locks expire and survive a restart without waiting on the wall clock.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from identity_harness import IdentityProcess, identity_config, postgres_database
from sqlalchemy import event, select, text, update
from waiting import wait_until

from garrison.config.loader import parse_config
from garrison.identity.adapter import Headers
from garrison.identity.client_throttle import Suspects
from garrison.identity.clients import ClientStore
from garrison.identity.service import Provider, open_provider
from garrison.identity.tables import throttle as throttle_table
from garrison.identity.web import HttpRequest, HttpResponse, parse_params
from garrison.pki.kek import KeyEncryption
from garrison.telemetry import logging as log

pytestmark = pytest.mark.process  # every test here starts real processes or listeners

LOCKOUT = {"max_failures": 5, "ip_max_failures": 1000, "window": 300, "lock_for": 300}
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def idp(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[IdentityProcess]:
    directory = tmp_path_factory.mktemp(f"client-throttle-{request.param}")
    settings: dict[str, Any] = {"lockout": LOCKOUT, "trusted_proxies": ["127.0.0.0/8"]}
    if request.param == "sqlite":
        process = IdentityProcess(directory, identity_config(directory, **settings)).start()
        yield process
        process.stop()
        return
    with postgres_database(request.getfixturevalue("postgres_url")) as database:
        process = IdentityProcess(directory, identity_config(directory, database, **settings)).start()
        yield process
        process.stop()


def address() -> str:
    """A documentation address (RFC 5737) of this test's own, so tests do not share a per-address count."""
    number = uuid.uuid4().int
    return f"198.51.{number % 250}.{(number >> 8) % 250 + 1}"


def post(
    idp: IdentityProcess, path: str, data: dict[str, str], auth: tuple[str, str] | None, source: str
) -> httpx.Response:
    return httpx.post(
        idp.issuer + path, data=data, auth=auth, headers={"x-forwarded-for": source}, timeout=30
    )


def token(
    idp: IdentityProcess, client: dict[str, Any], source: str, secret: str | None = None
) -> httpx.Response:
    auth = (client["client_id"], client["client_secret"] if secret is None else secret)
    return post(idp, "/token", {"grant_type": "client_credentials"}, auth, source)


def events(idp: IdentityProcess, name: str, **fields: Any) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in idp.stderr_text().splitlines() if line.startswith("{")]
    return [r for r in records if r.get("event") == name and all(r.get(k) == v for k, v in fields.items())]


def known_client(idp: IdentityProcess, name: str, *args: str) -> dict[str, Any]:
    """A client made with `garrison identity client create`, once the running provider knows it: it
    reloads its client directory every second (sooner on a miss), and until then the client's requests
    count as an unknown client's. A client with a secret is known once the right one gets a token."""
    created = idp.create_client(name, *args)
    if created.get("client_secret"):
        known = lambda: token(idp, created, address()).status_code == 200  # noqa: E731
        wait_until(known, interval=0.1, what=f"the provider to know client {name}")
    return created


def refused_as_invalid_client(response: httpx.Response) -> bool:
    return response.status_code == 401 and response.json()["error"] == "invalid_client"


def test_parallel_wrong_secrets_lock_the_client_and_the_right_one_is_refused(idp: IdentityProcess) -> None:
    victim = known_client(idp, f"victim-{uuid.uuid4().hex[:6]}", "--scope", "orders:read")
    bystander = known_client(idp, f"bystander-{uuid.uuid4().hex[:6]}", "--scope", "orders:read")
    guesser = address()

    def guess(number: int) -> httpx.Response:
        return token(idp, victim, guesser, secret=f"gcs_wrong{number:04d}")

    with ThreadPoolExecutor(30) as pool:
        answers = list(pool.map(guess, range(30)))
    assert all(refused_as_invalid_client(answer) for answer in answers)

    def thirty_failures() -> list[dict[str, Any]] | None:
        found = events(idp, "identity.client_auth.failed", client_id=victim["client_id"])
        return found if len(found) >= 30 else None

    # The provider may log after it answers: wait for its thirty lines.
    failed = wait_until(thirty_failures, what="30 identity.client_auth.failed lines in the log")
    assert len(failed) == 30 and all(e["endpoint"] == "token" and e["ip"] == guesser for e in failed)
    assert sum(e["locked"] == "client" for e in failed) == 25  # counted on a locked key: after the 5th
    assert len(events(idp, "identity.lockout", key="client:" + victim["client_id"])) == 1
    # Locked: the right secret gets exactly a wrong secret's answer, from any address ...
    right = token(idp, victim, guesser)
    assert events(idp, "identity.client_auth.refused", client_id=victim["client_id"], locked="client")
    assert refused_as_invalid_client(right) and right.json() == answers[0].json()
    assert right.headers.get("www-authenticate") == answers[0].headers.get("www-authenticate")
    assert refused_as_invalid_client(token(idp, victim, address()))
    # ... while another client, even from the guesser's address, is not locked with it.
    assert token(idp, bystander, guesser).status_code == 200
    assert victim["client_secret"] not in idp.stderr_text() and "gcs_wrong" not in idp.stderr_text()


def test_failures_at_introspect_and_revoke_count_too(idp: IdentityProcess) -> None:
    client = known_client(idp, f"rs-{uuid.uuid4().hex[:6]}", "--scope", "garrison:introspect")
    source = address()
    good = token(idp, client, source).json()["access_token"]
    wrong = (client["client_id"], "gcs_" + "B" * 43)
    for path in ("/introspect", "/introspect", "/revoke", "/revoke", "/token"):
        data = {"token": good} if path != "/token" else {"grant_type": "client_credentials"}
        assert refused_as_invalid_client(post(idp, path, data, wrong, source)), path
    endpoints = [
        e["endpoint"] for e in events(idp, "identity.client_auth.failed", client_id=client["client_id"])
    ]
    assert sorted(endpoints) == ["introspection", "introspection", "revocation", "revocation", "token"]
    mine = (client["client_id"], client["client_secret"])
    assert refused_as_invalid_client(post(idp, "/introspect", {"token": good}, mine, source))
    assert refused_as_invalid_client(post(idp, "/revoke", {"token": good}, mine, source))
    assert refused_as_invalid_client(token(idp, client, source))


def test_private_key_jwt_failures_count_too(idp: IdentityProcess, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(pyjwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    jwks = tmp_path / "client.jwks"
    jwks.write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "alg": "ES256", "use": "sig"}]}))
    method = ("--auth-method", "private_key_jwt", "--jwks-file", str(jwks))
    created = known_client(idp, f"keyed-{uuid.uuid4().hex[:6]}", "--scope", "reports", *method)
    client_id, source = created["client_id"], address()

    def assertion(signer: ec.EllipticCurvePrivateKey) -> dict[str, str]:
        now = int(time.time())
        claims = {"iss": client_id, "sub": client_id, "aud": idp.issuer + "/token"}
        claims |= {"iat": now, "exp": now + 60, "jti": uuid.uuid4().hex}
        signed = pyjwt.encode(claims, signer, "ES256", headers={"kid": "k1"})
        form = {"client_assertion_type": ASSERTION_TYPE, "client_assertion": signed}
        return {"grant_type": "client_credentials", **form}

    assert post(idp, "/token", assertion(key), None, source).status_code == 200
    for _ in range(5):  # signed by someone else's key
        forged = post(idp, "/token", assertion(ec.generate_private_key(ec.SECP256R1())), None, source)
        assert forged.json()["error"] == "invalid_client"
    locked = post(idp, "/token", assertion(key), None, source)
    assert locked.status_code in (400, 401) and locked.json()["error"] == "invalid_client"
    assert events(idp, "identity.client_auth.refused", client_id=client_id, reason="locked")


def test_a_success_resets_the_client_counter(idp: IdentityProcess) -> None:
    client = known_client(idp, f"clumsy-{uuid.uuid4().hex[:6]}", "--scope", "orders:read")
    source = address()
    for _ in range(3):  # 12 failures in all, never 5 in a row
        for _ in range(4):
            assert refused_as_invalid_client(token(idp, client, source, secret="gcs_typo"))
        assert token(idp, client, source).status_code == 200
    assert not events(idp, "identity.lockout", key="client:" + client["client_id"])


def test_parallel_good_requests_of_a_client_with_failures_all_get_tokens(idp: IdentityProcess) -> None:
    """A busy service after a few typos (its own, or a guesser's): its good requests are not counted, so
    however many run at once they never lock it."""
    busy = known_client(idp, f"busy-{uuid.uuid4().hex[:6]}", "--scope", "orders:read")
    source = address()
    for _ in range(4):
        assert refused_as_invalid_client(token(idp, busy, source, secret="gcs_typo"))
    with ThreadPoolExecutor(20) as pool:
        statuses = list(pool.map(lambda _: token(idp, busy, source).status_code, range(40)))
    assert statuses == [200] * 40
    assert not events(idp, "identity.lockout", key="client:" + busy["client_id"])


def test_unknown_and_public_client_ids_count_on_the_address_only(idp: IdentityProcess) -> None:
    spa = f"spa-{uuid.uuid4().hex[:6]}"
    public = idp.create_web_client(spa, ["http://127.0.0.1:9/cb"], scopes=["openid"], auth_method="none")
    source = address()
    made_up = [f"gc_{uuid.uuid4().hex[:16]}" for _ in range(20)]
    for client_id in [*made_up, public["client_id"], public["client_id"]]:
        assert refused_as_invalid_client(
            token(idp, {"client_id": client_id, "client_secret": "gcs_x"}, source)
        )
    keys = idp.run_stores(_throttle_keys)
    assert not [key for key in keys if any(name in key for name in [*made_up, public["client_id"]])]
    assert "ip:" + source in keys
    failed = events(idp, "identity.client_auth.failed", ip=source)
    assert len(failed) == 22 and {e["client_id"] for e in failed} == {None}  # never what was typed


def test_one_credential_and_one_client_per_request(idp: IdentityProcess) -> None:
    """RFC 6749 §2.3: one authentication method per request; a good credential for one client can never
    be paired with a guess at another."""
    mine = known_client(idp, f"mine-{uuid.uuid4().hex[:6]}", "--scope", "a")
    theirs = known_client(idp, f"theirs-{uuid.uuid4().hex[:6]}", "--scope", "a")
    source, basic = address(), (mine["client_id"], mine["client_secret"])
    cases = [
        {"client_id": mine["client_id"], "client_secret": mine["client_secret"]},  # Basic and post
        {"client_id": theirs["client_id"]},  # Basic names one client, the body another
        {"client_assertion_type": ASSERTION_TYPE, "client_assertion": "a.b.c"},  # Basic and a JWT
    ]
    for extra in cases:
        answer = post(idp, "/token", {"grant_type": "client_credentials", **extra}, basic, source)
        assert answer.status_code == 400 and answer.json()["error"] == "invalid_request", extra
    same = post(
        idp, "/token", {"grant_type": "client_credentials", "client_id": mine["client_id"]}, basic, source
    )
    assert same.status_code == 200  # naming the same client twice is fine (some clients do)


async def _throttle_keys(engine: Any, kek: Any) -> set[str]:
    async with engine.connect() as connection:
        return set((await connection.execute(select(throttle_table.c.key))).scalars())


# -- in-process, with an injected clock -----------------------------------------------------------------


CLOCK_START = datetime(2031, 5, 17, 9, 30, 7, 250_001, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = CLOCK_START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest) -> Iterator[str | None]:
    if request.param == "sqlite":
        yield None
        return
    with postgres_database(request.getfixturevalue("postgres_url")) as url:
        yield url


@pytest.fixture
def captured_log(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    stream = io.StringIO()
    monkeypatch.setattr(log, "_stream", stream)
    return stream


Call = Callable[..., Awaitable[HttpResponse]]  # call(client_id, secret, source=address): POST /token
Scenario = Callable[[Provider, Call, dict[str, str]], Awaitable[None]]


def run_provider(
    tmp_path: Path, database: str | None, clock: Clock, lockout: dict[str, Any], *scenarios: Scenario
) -> None:
    """Each scenario against a provider opened afresh on the same state (a restart between two), with one
    confidential client registered before the first."""
    identity = {"issuer": "https://localhost:9443", "lockout": lockout}
    if database is not None:
        identity["database"] = database
    config = parse_config(
        json.dumps({"state_dir": str(tmp_path), "identity": identity}), base_dir=tmp_path
    ).config

    async def main() -> None:
        client: dict[str, str] = {}
        for scenario in scenarios:
            provider = await open_provider(config, "https://localhost:9443", clock=clock)
            try:
                if not client:
                    created = await ClientStore(provider.engine, KeyEncryption.load(tmp_path)).create(
                        "svc", scopes=["api"]
                    )
                    await provider.directory.reload()
                    client = {"client_id": created.record.client_id, "client_secret": created.secret or ""}
                await scenario(provider, _caller(provider), client)
            finally:
                await provider.directory.stop()
                await provider.engine.dispose()

    asyncio.run(main())


def _caller(provider: Provider) -> Call:
    app = provider.app
    assert app is not None

    async def call(client_id: str, secret: str, source: str = "203.0.113.5") -> HttpResponse:
        headers = Headers()
        headers["authorization"] = "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()
        body = "grant_type=client_credentials"
        return await app.token(
            HttpRequest("POST", "/token", {}, headers, body.encode(), source, parse_params(body))
        )

    return call


def test_the_lock_expires_after_lock_for_and_survives_a_restart(tmp_path: Path, database: str | None) -> None:
    clock = Clock()

    async def lock(provider: Provider, call: Call, client: dict[str, str]) -> None:
        for _ in range(5):
            assert (await call(client["client_id"], "gcs_wrong")).status == 401
        assert (await call(client["client_id"], client["client_secret"])).status == 401

    async def after_restart(provider: Provider, call: Call, client: dict[str, str]) -> None:
        # A new process has seen no failure yet: it learns the lock from the table when it starts.
        assert (await call(client["client_id"], client["client_secret"])).status == 401
        clock.advance(299)
        assert (await call(client["client_id"], client["client_secret"])).status == 401
        clock.advance(2)  # lock_for (300 s) is over
        assert (await call(client["client_id"], client["client_secret"])).status == 200

    run_provider(tmp_path, database, clock, LOCKOUT, lock, after_restart)


def test_parallel_good_requests_never_lock_their_client_and_a_burst_of_guesses_does(
    tmp_path: Path, database: str | None, captured_log: io.StringIO
) -> None:
    async def bursts(provider: Provider, call: Call, client: dict[str, str]) -> None:
        client_id, secret = client["client_id"], client["client_secret"]
        assert (await call(client_id, "gcs_typo")).status == 401  # one failure: the client is suspect now
        good = await asyncio.gather(*(call(client_id, secret) for _ in range(20)))
        assert {answer.status for answer in good} == {200}  # good requests are not counted
        guesses = await asyncio.gather(*(call(client_id, f"gcs_{n}") for n in range(50)))
        assert {answer.status for answer in guesses} == {401}
        assert (await call(client_id, secret)).status == 401  # locked: the right secret too

    run_provider(tmp_path, database, Clock(), LOCKOUT, bursts)
    lines = [json.loads(line) for line in captured_log.getvalue().splitlines()]
    assert sum(line["event"] == "identity.lockout" for line in lines) == 1
    assert sum(line["event"] == "identity.client_auth.failed" for line in lines) == 51


def test_a_right_secret_waits_for_failures_in_flight_and_sees_them(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """What makes parallel guessing useless: a right secret on a key with failures is answered after
    the failures queued before it. Here a failure holds the client's row (uncommitted, as a slow guess
    would) when the right secret arrives; PostgreSQL shows the right secret waiting for that row, and
    once the failure commits — the fifth, which locks — the right secret is refused."""
    with postgres_database(request.getfixturevalue("postgres_url")) as url:

        async def race(provider: Provider, call: Call, client: dict[str, str]) -> None:
            client_id, secret = client["client_id"], client["client_secret"]
            for _ in range(4):
                assert (await call(client_id, "gcs_wrong")).status == 401
            key = "client:" + client_id
            async with provider.engine.connect() as guess:
                transaction = await guess.begin()
                await guess.execute(  # the fifth failure, counted and locking, not committed yet
                    update(throttle_table)
                    .where(throttle_table.c.key == key)
                    .values(failures=5, locked_until=CLOCK_START + timedelta(seconds=300))
                )
                answer = asyncio.create_task(call(client_id, secret))
                await _until_a_backend_waits_for_a_row_lock(provider)
                assert not answer.done()
                await transaction.commit()
            assert (await answer).status == 401

        run_provider(tmp_path, url, Clock(), LOCKOUT, race)


async def _until_a_backend_waits_for_a_row_lock(provider: Provider) -> None:
    """Poll pg_stat_activity (a condition, not a timer) until some session waits on a lock."""
    waiting = "wait_event_type = 'Lock' AND datname = current_database()"
    query = text(f"SELECT count(*) FROM pg_stat_activity WHERE {waiting}")
    for _ in range(10_000):
        async with provider.engine.connect() as connection:
            if (await connection.execute(query)).scalar_one():
                return
        await asyncio.sleep(0)
    raise AssertionError("the right secret never waited for the row")


def test_an_address_lock_spans_client_ids(tmp_path: Path, database: str | None) -> None:
    lockout = {**LOCKOUT, "ip_max_failures": 3}

    async def spray(provider: Provider, call: Call, client: dict[str, str]) -> None:
        for _ in range(3):
            assert (await call(f"gc_{uuid.uuid4().hex[:16]}", "gcs_x", "203.0.113.66")).status == 401
        assert (await call(client["client_id"], client["client_secret"], "203.0.113.66")).status == 401
        assert (await call(client["client_id"], client["client_secret"], "203.0.113.67")).status == 200

    run_provider(tmp_path, database, Clock(), lockout, spray)


def test_suspects_are_bounded_and_fail_closed_when_full() -> None:
    now = datetime(2031, 1, 1, tzinfo=UTC)
    suspects = Suspects(capacity=2)
    suspects.mark("ip:a", now + timedelta(seconds=10), now)
    suspects.mark("client:b", now + timedelta(seconds=20), now, locked_until=now + timedelta(seconds=15))
    assert suspects.locked("client:b", now) and not suspects.locked("ip:a", now)
    assert not suspects.suspect("ip:c", now) and not suspects.overflowing(now)
    suspects.mark("ip:c", now + timedelta(seconds=30), now)  # no room: every key is suspect until then
    assert len(suspects) == 2 and suspects.suspect("ip:anyone", now + timedelta(seconds=29))
    assert suspects.overflowing(now) and not suspects.overflowing(now + timedelta(seconds=30))
    later = now + timedelta(seconds=35)
    suspects.mark("ip:d", later + timedelta(seconds=5), later)  # ip:a and client:b have expired: room
    assert len(suspects) == 1 and suspects.suspect("ip:d", later) and not suspects.suspect("ip:a", later)


def test_good_requests_touch_no_database_unless_their_client_has_failures(tmp_path: Path) -> None:
    """The client_credentials path stays database-free: for a clean client, and for a clean client
    whose address has failures (one bad secret behind a shared NAT must not slow every service)."""

    async def count_statements(provider: Provider, call: Call, client: dict[str, str]) -> None:
        statements: list[str] = []
        event.listen(provider.engine.sync_engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
        for _ in range(5):
            assert (await call(client["client_id"], client["client_secret"], "203.0.113.80")).status == 200
        assert statements == []
        assert (await call("gc_nobody", "gcs_x", "203.0.113.81")).status == 401  # the address has failures
        statements.clear()
        for _ in range(5):
            assert (await call(client["client_id"], client["client_secret"], "203.0.113.81")).status == 200
        assert statements == []

    run_provider(tmp_path, None, Clock(), LOCKOUT, count_statements)
