"""The provider's HTML pages: sign-in, second factor, consent, logout and errors.

Plain server-rendered HTML that works without JavaScript. Every value that reaches a page goes
through ``html.escape`` (client names, scopes, the carried authorization parameters, messages), and
every page is served with a Content-Security-Policy that allows nothing but its own inline style (by
hash), forms posting back to the provider, and no framing:

    default-src 'none'; style-src 'sha256-...'; form-action 'self' <redirect origin>;
    frame-ancestors 'none'; base-uri 'none'

``form-action`` also names the origin of the client's redirect URI (already validated, exact) because
browsers apply it to the redirect that answers a form post: without it, the 302 back to the client
after sign-in or consent would be blocked.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable, Sequence
from html import escape
from urllib.parse import urlsplit

from garrison.identity.web import HttpResponse

STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:26rem;margin:3rem auto;padding:0 1rem;color:#222}"
    "h1{font-size:1.3rem}label{display:block;margin:.8rem 0 .2rem}"
    "input[type=text],input[type=password]{width:100%;padding:.4rem;box-sizing:border-box}"
    "button{margin:1rem .5rem 0 0;padding:.4rem 1rem}.error{color:#a00}ul{padding-left:1.2rem}"
)
_STYLE_SOURCE = "'sha256-" + base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode() + "'"
_ORIGIN = re.compile(r"https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
HTML = "text/html; charset=utf-8"


def origin_of(uri: str | None) -> str | None:
    """``scheme://host[:port]`` of a URI, or None when it would not be a plain CSP source expression."""
    if not uri:
        return None
    parts = urlsplit(uri)
    candidate = f"{parts.scheme}://{parts.netloc}"
    return candidate if _ORIGIN.fullmatch(candidate) else None


def content_security_policy(form_targets: Iterable[str] = ()) -> str:
    targets = " ".join(["'self'", *form_targets])
    return (
        f"default-src 'none'; style-src {_STYLE_SOURCE}; form-action {targets}; "
        "frame-ancestors 'none'; base-uri 'none'"
    )


def render(
    title: str,
    body: str,
    *,
    status: int = 200,
    form_targets: Sequence[str | None] = (),
    headers: Sequence[tuple[str, str]] = (),
) -> HttpResponse:
    """A whole page; ``body`` is HTML built here from escaped parts."""
    document = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head>"
        f"<body><h1>{escape(title)}</h1>{body}</body></html>"
    )
    policy = content_security_policy(target for target in form_targets if target)
    return HttpResponse(
        status,
        document.encode(),
        HTML,
        [("content-security-policy", policy), *headers],
    )


def _hidden(fields: dict[str, str]) -> str:
    return "".join(f'<input type="hidden" name="{escape(k)}" value="{escape(v)}">' for k, v in fields.items())


def _error(message: str | None) -> str:
    return f'<p class="error" role="alert">{escape(message)}</p>' if message else ""


def login_page(
    client_name: str,
    carried: dict[str, str],
    error: str | None = None,
    *,
    status: int = 200,
    target: str | None,
) -> HttpResponse:
    body = (
        f"<p>Sign in to continue to <strong>{escape(client_name)}</strong>.</p>{_error(error)}"
        f'<form method="post" action="login">{_hidden(carried)}'
        '<label for="username">Username</label>'
        '<input type="text" id="username" name="username" autocomplete="username" required autofocus>'
        '<label for="password">Password</label>'
        '<input type="password" id="password" name="password" autocomplete="current-password" required>'
        '<button type="submit">Sign in</button></form>'
    )
    return render("Sign in", body, status=status, form_targets=[target])


def mfa_page(
    client_name: str,
    carried: dict[str, str],
    error: str | None = None,
    *,
    status: int = 200,
    target: str | None,
) -> HttpResponse:
    body = (
        f"<p><strong>{escape(client_name)}</strong> needs a second factor: the 6-digit code from your "
        f"authenticator app, or one of your recovery codes.</p>{_error(error)}"
        f'<form method="post" action="mfa">{_hidden(carried)}'
        '<label for="code">Code</label>'
        '<input type="text" id="code" name="code" autocomplete="one-time-code" required autofocus>'
        '<button type="submit">Verify</button></form>'
    )
    return render("Two-step verification", body, status=status, form_targets=[target])


def consent_page(
    client_name: str, scopes: Sequence[str], carried: dict[str, str], *, target: str | None
) -> HttpResponse:
    items = "".join(f"<li><code>{escape(scope)}</code></li>" for scope in scopes)
    body = (
        f"<p><strong>{escape(client_name)}</strong> asks for access to:</p><ul>{items}</ul>"
        f'<form method="post" action="consent">{_hidden(carried)}'
        '<button type="submit" name="decision" value="allow">Allow</button>'
        '<button type="submit" name="decision" value="deny">Deny</button></form>'
    )
    return render("Allow access?", body, form_targets=[target])


def logout_page(carried: dict[str, str], *, target: str | None) -> HttpResponse:
    body = (
        "<p>Sign out of every application that uses this sign-in?</p>"
        f'<form method="post" action="logout">{_hidden(carried)}'
        '<button type="submit">Sign out</button></form>'
    )
    return render("Sign out", body, form_targets=[target])


def message_page(
    title: str, message: str, *, status: int = 200, headers: Sequence[tuple[str, str]] = ()
) -> HttpResponse:
    return render(title, f"<p>{escape(message)}</p>", status=status, headers=headers)


def error_page(status: int, error: str, description: str | None = None) -> HttpResponse:
    """An error shown to the user, never sent to a client: used whenever redirecting is not safe."""
    detail = f"<p><code>{escape(error)}</code></p>" + (f"<p>{escape(description)}</p>" if description else "")
    return render("This request cannot be completed", detail, status=status)
