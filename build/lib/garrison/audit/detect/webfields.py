"""A gateway ``http.request`` event as the web-server fields Sigma's ``category: webserver`` rules read.

Sigma rules name W3C extended log fields (IIS and the Sigma taxonomy): ``cs-method``,
``cs-uri-stem``, ``cs-uri-query``, ``cs-user-agent``... The SigmaHQ web rules use ``cs-uri-query``
for the whole request target, path included (``cs-uri-query|endswith: '/mgmt/tm/util/bash'``,
``'../../../etc/'``), as Apache and nginx logs, which have no separate query field, are mapped by
the Sigma backends. So ``cs-uri-query`` and ``c-uri`` are the path and query as the client sent
them (``/a/b?x=1``), and ``cs-uri-stem`` is the path alone. Values are the raw (percent-encoded)
forms an access log holds: the rules list both the encoded and the plain forms of their strings.

Keywords (values a rule gives without a field) match ``fulltext``: the request line (method and
target), user agent and referer, one per line, as an access log line would show them.
"""

from __future__ import annotations

from typing import Any

from garrison.events.schema import Event

__all__ = ["COLUMNS", "FULLTEXT", "INTEGER_COLUMNS", "web_fields"]

COLUMNS = (
    "cs-method",
    "cs-uri-stem",
    "cs-uri-query",
    "c-uri",
    "cs-user-agent",
    "c-useragent",
    "cs-referer",
    "cs-host",
    "sc-status",
    "c-ip",
    "cs-username",
)
INTEGER_COLUMNS = frozenset({"sc-status"})
FULLTEXT = "fulltext"


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def web_fields(event: Event) -> tuple[str | int | None, ...]:
    """The ``COLUMNS`` values, then ``fulltext``, for one ``http.request`` event."""
    d = event.details
    method = _text(d.get("method"))
    path = _text(d.get("path")) or ""
    query = _text(d.get("query"))
    if query is not None and query.startswith("?"):
        query = query[1:] or None
    uri = f"{path}?{query}" if query else path
    agent = _text(d.get("user_agent"))
    referer = _text(d.get("referer"))
    status = d.get("status")
    fulltext = "\n".join(v for v in (f"{method or '-'} {uri}", agent, referer) if v)
    return (
        method,
        path or None,
        uri or None,
        uri or None,
        agent,
        agent,
        referer,
        _text(d.get("host")),
        status if isinstance(status, int) and not isinstance(status, bool) else None,
        event.actor.ip,
        event.actor.subject,
        fulltext,
    )
