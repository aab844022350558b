"""The browser side of the provider: the authorization endpoint, and the sign-in, second-factor and
consent steps that may stand between an authorization request and its code.

Every step ends in one method, ``proceed``, which asks Authlib to validate the request and then
decides what is still missing::

    GET /authorize ──┐                               ┌ invalid, redirect URI unknown/wrong: error page
    POST /login ─────┤                               ├ invalid otherwise: 302 error + state + iss
    POST /mfa ───────┼─> proceed(params, session) ───┼ no session, or prompt=login / max_age: sign-in
    POST /consent ───┘                               ├ second factor required and missing: MFA page
                                                     ├ scopes not granted to this client yet: consent
                                                     └ 302 code + state + iss (Authlib)

The authorization parameters travel through the forms in one hidden field and Authlib validates them
again at every step, so editing them gains nothing a fresh request would not. A step that has just
signed the user in (or taken their consent) says so with ``Interaction``, so that ``prompt=login``
does not send them round again. Passwords and codes are checked behind the throttle (throttle.py):
a locked account gets exactly the answer a wrong password gets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from authlib.oauth2.rfc6749 import InvalidScopeError, OAuth2Error
from authlib.oauth2.rfc6749.util import scope_to_list
from authlib.oidc.core.errors import ConsentRequiredError, InteractionRequiredError, LoginRequiredError

from garrison.identity import pages
from garrison.identity.account_locks import AccountLocks
from garrison.identity.adapter import IdentityRequest
from garrison.identity.auditing import IdentityAudit
from garrison.identity.authserver import IdentityServer, OAuthClient
from garrison.identity.grants import EndUser, UserGrants, user_scope
from garrison.identity.mfa import MfaStore, mfa_required
from garrison.identity.sessions import Browser, ConsentStore, LoginSession
from garrison.identity.throttle import LockedOut, Throttle, ip_key, user_key
from garrison.identity.web import (
    BadRequest,
    HttpRequest,
    HttpResponse,
    IdentityApp,
    call_authlib,
    from_endpoint,
    parse_params,
    redirect,
)
from garrison.telemetry import logging as log

CARRIED = "authorization"  # the hidden field that carries the authorization request's parameters
WRONG_PASSWORD = "Wrong username or password."  # noqa: S105 - a message, the same for a locked account
WRONG_CODE = "That code is not valid."


@dataclass(frozen=True, slots=True)
class Interaction:
    """What the request being answered has just done: signed the user in, or answered the consent page."""

    reauthenticated: bool = False
    consent: bool | None = None


PageRenderer = Callable[..., HttpResponse]


class BrowserFlows:
    """GET /authorize and the POSTs of its pages (see the module docstring)."""

    def __init__(
        self,
        app: IdentityApp,
        server: IdentityServer,
        grants: UserGrants,
        browser: Browser,
        *,
        mfa: MfaStore,
        throttle: Throttle,
        consents: ConsentStore,
        mfa_roles: list[str],
        locks: AccountLocks,
        audit: IdentityAudit,
    ) -> None:
        self.app, self.server, self.grants, self.browser = app, server, grants, browser
        self.mfa, self.throttle, self.consents, self.mfa_roles = mfa, throttle, consents, frozenset(mfa_roles)
        self.locks, self.audit = locks, audit

    def install(self) -> None:
        self.app.route("GET", "/authorize", self.authorize)
        self.app.route("POST", "/authorize", self.authorize)  # OIDC Core §3.1.2.1: GET and POST
        self.app.route("POST", "/login", self.login)
        self.app.route("POST", "/mfa", self.second_factor)
        self.app.route("POST", "/consent", self.consent)

    async def authorize(self, http: HttpRequest) -> HttpResponse:
        params = http.form if http.method == "POST" else http.query
        return await self.proceed(http, params, await self.browser.session(http), Interaction())

    async def login(self, http: HttpRequest) -> HttpResponse:
        if (refused := self.browser.forged(http)) is not None:
            return refused
        params = parse_params(http.form.get(CARRIED, ""))
        user_id = await self._check_password(
            http, http.form.get("username", ""), http.form.get("password", "")
        )
        if user_id is None:
            return self._page(http, params, pages.login_page, WRONG_PASSWORD, 401)
        return await self._signed_in(http, params, user_id, ("pwd",))

    async def second_factor(self, http: HttpRequest) -> HttpResponse:
        if (refused := self.browser.forged(http)) is not None:
            return refused
        params = parse_params(http.form.get(CARRIED, ""))
        session = await self.browser.session(http)
        if session is None:  # expired or signed out meanwhile: start again
            return await self.proceed(http, params, None, Interaction())
        if not await self._check_code(http, session.user_id, http.form.get("code", "")):
            return self._page(http, params, pages.mfa_page, WRONG_CODE, 401)
        return await self._signed_in(http, params, session.user_id, (*session.amr, "otp", "mfa"))

    async def consent(self, http: HttpRequest) -> HttpResponse:
        if (refused := self.browser.forged(http)) is not None:
            return refused
        params = parse_params(http.form.get(CARRIED, ""))
        decision = http.form.get("decision")
        if decision not in ("allow", "deny"):
            return pages.error_page(400, "invalid_request", "Choose Allow or Deny.")
        session = await self.browser.session(http)
        done = Interaction(reauthenticated=session is not None, consent=decision == "allow")
        return await self.proceed(http, params, session, done)

    async def proceed(
        self, http: HttpRequest, params: dict[str, str], session: LoginSession | None, done: Interaction
    ) -> HttpResponse:
        user = None
        if session is not None and (done.reauthenticated or not _stale(session, params)):
            user = await self.grants.end_user(session.user_id, session.auth_time, session.amr)
        request = self.app.authorization_request(http, params)
        try:
            grant = await call_authlib(self.server.get_consent_grant, request, user)
            if user is None or session is None:
                if "none" in _prompts(params):
                    raise LoginRequiredError(redirect_uri=grant.redirect_uri)
                return self._page(http, params, pages.login_page)
            return await self._decide(http, params, request, grant, user, session, done)
        except OAuth2Error as error:
            return self._refuse(request, params, error)
        except BadRequest as bad:
            return pages.error_page(bad.status, bad.error, bad.description)

    async def _decide(
        self,
        http: HttpRequest,
        params: dict[str, str],
        request: IdentityRequest,
        grant: Any,
        user: EndUser,
        session: LoginSession,
        done: Interaction,
    ) -> HttpResponse:
        client: OAuthClient = request.client
        redirect_uri: str = grant.redirect_uri
        prompts = _prompts(params)
        if mfa_required(user.roles, client.record.require_mfa, self.mfa_roles) and "mfa" not in session.amr:
            if "none" in prompts:
                raise InteractionRequiredError(redirect_uri=redirect_uri)
            if not user.mfa_enrolled:
                return pages.error_page(
                    403,
                    "mfa_required",
                    "This application needs two-step verification and "
                    "your account has no authenticator yet. Ask an administrator to set one up.",
                )
            return self._page(http, params, pages.mfa_page)
        scopes = scope_to_list(user_scope(request.scope, user)) or []
        if not scopes:
            raise InvalidScopeError(redirect_uri=redirect_uri)
        if done.consent:
            await self.consents.grant(user.user_id, client.client_id, scopes)
        elif done.consent is None:
            granted = await self.consents.granted(user.user_id, client.client_id)
            if "consent" in prompts or not granted.issuperset(scopes):
                if "none" in prompts:
                    raise ConsentRequiredError(redirect_uri=redirect_uri)
                fields, cookies = self.browser.form_fields(http, {CARRIED: urlencode(params)})
                page = pages.consent_page(
                    client.record.name, scopes, fields, target=pages.origin_of(redirect_uri)
                )
                page.headers.extend(cookies)
                return page
        grant_user = user if done.consent is not False else None  # None: Authlib answers access_denied
        result = await call_authlib(self.server.create_authorization_response, request, grant_user, grant)
        if grant_user is not None and result.status == 302:
            log.log(
                "identity.authorization.granted",
                client_id=client.client_id,
                user_id=user.user_id,
                scope=" ".join(scopes),
                amr=list(session.amr),
            )
        location = result.location
        return redirect(location) if result.status == 302 and location else from_endpoint(result)

    def _refuse(self, request: IdentityRequest, params: dict[str, str], error: OAuth2Error) -> HttpResponse:
        """Back to the client when its redirect URI was validated (RFC 6749 §4.1.2.1), else a page."""
        error.state = params.get("state")
        if error.redirect_uri:
            result = self.server.handle_error_response(request, error)
            self.server.execute_hook("after_create_authorization_response", result)  # RFC 9207 iss
            return redirect(result.location)
        log.warn("identity.authorization.refused", error=error.error, client_id=params.get("client_id"))
        return pages.error_page(400, error.error, error.description)

    def _page(
        self,
        http: HttpRequest,
        params: dict[str, str],
        render: PageRenderer,
        error: str | None = None,
        status: int = 200,
    ) -> HttpResponse:
        record = self.grants.directory.get(params.get("client_id", ""))
        target = None
        if record is not None:
            uri = params.get("redirect_uri") or (
                record.redirect_uris[0] if len(record.redirect_uris) == 1 else ""
            )
            target = pages.origin_of(uri) if uri in record.redirect_uris else None
        fields, cookies = self.browser.form_fields(http, {CARRIED: urlencode(params)})
        name = record.name if record is not None else "the application"
        page = render(name, fields, error, status=status, target=target)
        page.headers.extend(cookies)
        return page

    async def _signed_in(
        self, http: HttpRequest, params: dict[str, str], user_id: str, amr: tuple[str, ...]
    ) -> HttpResponse:
        """A new session id for every step up (the old one ends), then on with the authorization."""
        session_id, session = await self.browser.sessions.create(user_id, dict.fromkeys(amr))
        await self.browser.sessions.end(http.cookie(self.browser.cookies.session_name))
        if params:
            response = await self.proceed(http, params, session, Interaction(reauthenticated=True))
        else:
            response = pages.message_page("Signed in", "You are signed in.")
        response.headers.append(("set-cookie", self.browser.cookies.session(session_id)))
        return response

    async def _check_password(self, http: HttpRequest, username: str, password: str) -> str | None:
        """The user_id when the password is right and neither the account nor the address is locked
        (by the throttle, or by an administrator: account_locks.py)."""
        users = self.grants.users
        user, locked = None, None
        attempt = self.throttle.attempt([user_key(username), ip_key(http.client_ip)])
        if await self.locks.locked(username) is not None:
            locked = "admin"  # refused unchecked and uncounted, as a throttle lock refuses
        else:
            try:
                async with attempt:
                    user = await users.verify_password(username, password)
                    if user is not None:
                        attempt.succeed()
            except LockedOut as refused:
                locked = refused.locked.key.split(":")[0]  # "user" or "ip": which limit refused it
                self.throttle.refused(refused.locked.key)
        self.app.metrics.login("success" if user is not None else "locked" if locked else "failure")
        if user is not None:
            log.log("identity.login.succeeded", user_id=user.user_id, ip=http.client_ip)
            self.audit.emit(
                "auth.login", "success", subject=username, user_id=user.user_id, method="password"
            )
            return user.user_id
        known = await users.get_by_username(username)  # the audit names an account, never what was typed
        fields = {"user_id": known.user_id if known else None, "ip": http.client_ip}
        if locked:
            log.warn("identity.login.refused", reason="locked", locked=locked, **fields)
        else:
            log.warn("identity.login.failed", lockout_started=bool(attempt.lockouts), **fields)
        reason = "locked" if locked else "bad_password" if known is not None else "unknown_user"
        self.audit.emit(
            "auth.login",
            "denied" if locked else "failure",
            subject=username,
            reason=reason,
            locked_by=locked,
            user_id=fields["user_id"],
            method="password",
            lockout_started=bool(attempt.lockouts) or None,
        )
        return None

    async def _check_code(self, http: HttpRequest, user_id: str, code: str) -> bool:
        """A TOTP code or a recovery code, throttled per user apart from the password."""
        attempt = self.throttle.attempt([f"otp:{user_id}", ip_key(http.client_ip)])
        ok = False
        try:
            async with attempt:
                ok = await self.mfa.verify(user_id, code) or await self.mfa.use_recovery_code(user_id, code)
                if ok:
                    attempt.succeed()
        except LockedOut as refused:
            self.throttle.refused(refused.locked.key)
            self.app.metrics.login("mfa_locked")
            log.warn("identity.mfa.refused", reason="locked", user_id=user_id, ip=http.client_ip)
            await self._mfa_event(user_id, "denied", reason="locked")
            return False
        self.app.metrics.login("mfa_success" if ok else "mfa_failure")
        log.log(
            "identity.mfa.succeeded" if ok else "identity.mfa.failed",
            user_id=user_id,
            ip=http.client_ip,
            lockout=bool(attempt.lockouts),
        )
        if ok:
            await self._mfa_event(user_id, "success")
        else:
            await self._mfa_event(
                user_id, "failure", reason="bad_code", lockout_started=bool(attempt.lockouts)
            )
        return ok

    async def _mfa_event(self, user_id: str, outcome: Any, **details: Any) -> None:
        """``auth.mfa``: the subject is the username, as for ``auth.login`` (the rules count per account)."""
        user = await self.grants.end_user(user_id)
        subject = user.username if user is not None else user_id
        self.audit.emit("auth.mfa", outcome, subject=subject, user_id=user_id, method="totp", **details)


def _prompts(params: dict[str, str]) -> set[str]:
    return set(params.get("prompt", "").split())


def _stale(session: LoginSession, params: dict[str, str]) -> bool:
    """``prompt=login``, or a sign-in older than ``max_age`` (validated as digits by the grant)."""
    max_age = params.get("max_age", "")
    return "login" in _prompts(params) or (max_age.isdigit() and session.age() > int(max_age))
