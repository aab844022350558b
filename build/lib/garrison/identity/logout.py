"""RP-initiated logout (OpenID Connect RP-Initiated Logout 1.0) at ``/logout``.

Authlib's ``EndSessionEndpoint`` (oidc.py) validates the request and decides where to go; this module
owns the cookie and the pages:

- a request with a valid ``id_token_hint`` for the signed-in user (or with no session at all) ends the
  session at once; a ``post_logout_redirect_uri`` is followed only when it is registered for the hint's
  client, exactly, and then carries ``state``;
- without a valid hint, or with one for another user, the user is asked first (a CSRF-protected form):
  a link on another site cannot sign anyone out;
- a request Authlib refuses (a forged or foreign hint, a client that does not match) gets an error
  page and never a redirect.

Ending the session does not revoke refresh tokens already issued: they belong to the applications,
which revoke them at /revoke when they sign out themselves.
"""

from __future__ import annotations

from authlib.oauth2.rfc6749 import OAuth2Error
from authlib.oidc.rpinitiated import EndSessionRequest

from garrison.identity import pages
from garrison.identity.adapter import IdentityRequest
from garrison.identity.authserver import IdentityServer
from garrison.identity.sessions import Browser
from garrison.identity.web import HttpRequest, HttpResponse, IdentityApp, call_authlib, redirect
from garrison.telemetry import logging as log

_PARAMETERS = ("id_token_hint", "post_logout_redirect_uri", "state", "client_id", "logout_hint", "ui_locales")


class LogoutFlow:
    def __init__(self, app: IdentityApp, server: IdentityServer, browser: Browser) -> None:
        self.app, self.server, self.browser = app, server, browser

    def install(self) -> None:
        self.app.route("GET", "/logout", self.logout)
        self.app.route("POST", "/logout", self.logout)

    async def logout(self, http: HttpRequest) -> HttpResponse:
        posted = http.method == "POST"
        if posted and (refused := self.browser.forged(http)) is not None:
            return refused
        source = http.form if posted else http.query
        params = {name: source[name] for name in _PARAMETERS if name in source}
        request = IdentityRequest(http.method, self.app.base_url + "/logout", http.headers, params, params)
        try:
            validated: EndSessionRequest = await call_authlib(
                self.server.validate_endpoint_request, "end_session", request
            )
        except OAuth2Error as error:
            log.warn("identity.logout.refused", error=error.error)
            return pages.error_page(400, error.error, error.description)
        session = await self.browser.session(http)
        hinted = (validated.id_token_claims or {}).get("sub")
        foreign = session is not None and hinted != session.user_id
        if not posted and (validated.needs_confirmation or foreign):
            fields, cookies = self.browser.form_fields(http, params)
            page = pages.logout_page(fields, target=pages.origin_of(validated.redirect_uri))
            page.headers.extend(cookies)
            return page
        result = await call_authlib(self.server.create_endpoint_response, "end_session", validated)
        user_id = await self.browser.sessions.end(http.cookie(self.browser.cookies.session_name))
        client = validated.client
        log.log("identity.logout", user_id=user_id, client_id=client.get_client_id() if client else None)
        clear = [("set-cookie", self.browser.cookies.clear_session())]
        location = result.location if result is not None else None
        if location:
            return redirect(location, clear)
        return pages.message_page("Signed out", "You are signed out.", headers=clear)
