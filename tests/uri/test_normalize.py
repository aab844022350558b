"""Tests for the gateway's request-target parsing and path normalization (garrison.uri.normalize)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from garrison.uri.normalize import (
    MAX_PATH_LENGTH,
    RequestTarget,
    TargetRejected,
    _normalize_slow,
    _parse_slow,
    normalize_path,
    parse_request_target,
)

# --- table: targets that are accepted, and what they become -------------------------------------------

ACCEPTED = [
    # rule 1: origin-form and absolute-form
    (b"/", RequestTarget(b"/", b"", False, None)),
    (b"/api/orders/123?x=1", RequestTarget(b"/api/orders/123", b"x=1", True, None)),
    (b"/a?", RequestTarget(b"/a", b"", True, None)),
    (b"/a??b", RequestTarget(b"/a", b"?b", True, None)),
    (
        b"http://Example.COM:8080/x?y=1",
        RequestTarget(b"/x", b"y=1", True, b"example.com:8080"),
    ),
    (b"HTTPS://example.com", RequestTarget(b"/", b"", False, b"example.com")),
    (b"https://example.com?q", RequestTarget(b"/", b"q", True, b"example.com")),
    (b"http://10.0.0.1:80/", RequestTarget(b"/", b"", False, b"10.0.0.1:80")),
    (b"http://[::1]:8443/a", RequestTarget(b"/a", b"", False, b"[::1]:8443")),
    (b"http://[2001:DB8::1]/a", RequestTarget(b"/a", b"", False, b"[2001:db8::1]")),
    (b"http://h//admin/../x", RequestTarget(b"/x", b"", False, b"h")),
    # the query is passed through unchanged, percent-encodings and all
    (b"/x?a=%2f&b=%2E%2E", RequestTarget(b"/x", b"a=%2f&b=%2E%2E", True, None)),
    (b"/%2e/x?y", RequestTarget(b"/x", b"y", True, None)),
]


@pytest.mark.parametrize(("raw", "expected"), ACCEPTED)
def test_parse_accepts(raw: bytes, expected: RequestTarget) -> None:
    assert parse_request_target(raw) == expected


NORMALIZED = [
    # already normal (fast path)
    (b"/", b"/"),
    (b"/api/orders/123", b"/api/orders/123"),
    (b"/file.txt", b"/file.txt"),
    (b"/a/", b"/a/"),
    (b"/a:b@c!$&'()*+,=-_~", b"/a:b@c!$&'()*+,=-_~"),
    # rule 3: unreserved escapes decoded, others kept upper-cased, decoded once only
    (b"/%61dmin", b"/admin"),
    (b"/%41%7a%30%2D%5f%7E%2e", b"/Az0-_~."),
    (b"/caf%c3%a9", b"/caf%C3%A9"),
    (b"/%2561", b"/%2561"),
    (b"/%25", b"/%25"),
    # rule 4's second sentence refuses only what a further decoding turns into ".", "/", "\\", ";"
    # or a control character: other double encodings are data, kept as they are
    (b"/a%2520b", b"/a%2520b"),
    (b"/%2541%253F%2523", b"/%2541%253F%2523"),
    (b"/%25%25/%25.", b"/%25%25/%25."),
    (b"/%252", b"/%252"),
    (b"/a%20b", b"/a%20b"),
    # rule 5: encoded reserved characters are data
    (b"/a%23b%3fc", b"/a%23b%3Fc"),
    (b"/a%40b%3A", b"/a%40b%3A"),
    # rule 6: slashes merge
    (b"//admin", b"/admin"),
    (b"/a///b", b"/a/b"),
    (b"/a//", b"/a/"),
    (b"//", b"/"),
    # rule 7: dot segments, with the decoding of rule 3 first
    (b"/a/./b/../c", b"/a/c"),
    (b"/a/%2e%2e/b", b"/b"),
    (b"/a/.%2E/b", b"/b"),
    (b"/api%2e%2e/admin", b"/api../admin"),
    (b"/a/b/..", b"/a/"),
    (b"/a/b/.", b"/a/b/"),
    (b"/a/..", b"/"),
    (b"/.", b"/"),
    (b"/a//..", b"/"),
    (b"/.well-known/x", b"/.well-known/x"),
    (b"/...", b"/..."),
    (b"/..a/b..", b"/..a/b.."),
    # rule 8: case preserved
    (b"/ADMIN", b"/ADMIN"),
    (b"/Admin/%41", b"/Admin/A"),
]


@pytest.mark.parametrize(("raw", "expected"), NORMALIZED)
def test_normalize_path(raw: bytes, expected: bytes) -> None:
    assert normalize_path(raw) == expected
    assert normalize_path(expected) == expected
    assert parse_request_target(raw).path == expected


# --- table: targets that are rejected, with the status ----------------------------------------------------

REJECTED = [
    # rule 1: forms and schemes
    (b"", 400),
    (b"*", 400),
    (b"example.com:443", 400),
    (b"ftp://example.com/x", 400),
    (b"http:/x", 400),
    (b"api/orders", 400),
    (b"http://user@evil/x", 400),
    (b"http://user:pw@evil/x", 400),
    (b"http:///x", 400),
    (b"http://:80/x", 400),
    (b"http://host:/x", 400),
    (b"http://host:99999/x", 400),
    (b"http://host:8a/x", 400),
    (b"http://host:1:2/x", 400),
    (b"http://ho st/x", 400),
    (b"http://h%41st/x", 400),
    (b"http://[::1/x", 400),
    (b"http://[]/x", 400),
    (b"http://[::g]/x", 400),
    (b"http://[fe80::1%25eth0]/x", 400),
    (b"http://[::1]x/", 400),
    # rule 2: fragments
    (b"/x#frag", 400),
    (b"/x?a#b", 400),
    (b"http://h/x#f", 400),
    # rule 3: malformed escapes
    (b"/a%", 400),
    (b"/a%4", 400),
    (b"/a%g1", 400),
    (b"/a%%41", 400),
    # rule 4: forbidden encodings and bytes
    (b"/public/..%2Fadmin", 400),
    (b"/a%2fb", 400),
    (b"/a%5cb", 400),
    (b"/a\\b", 400),
    (b"/admin;x", 400),
    (b"/admin%3bx", 400),
    (b"/a%00b", 400),
    (b"/a%0Ab", 400),
    (b"/a%1f", 400),
    (b"/a%7F", 400),
    # rule 4: encodings of ".", "/", "\\", ";" and control characters behind "%25" (issue 7, item 5)
    (b"/public/%252e%252e/admin/x", 400),
    (b"/public/..%252fadmin/x", 400),
    *((b"/a/%25" + pair + b"b", 400) for pair in (b"2e", b"2E", b"2f", b"2F", b"5c", b"5C")),
    (b"/public/%252e%252E", 400),  # a dot inside a segment too: one rule, no guessing
    (b"/a/%25252e%25252e/b", 400),  # triple encoding
    (b"/a/%2525252f", 400),
    (b"/a/%25%32%65/b", 400),  # the "2e" spelt with escapes of unreserved digits (decoded by rule 3)
    (b"/a/%25%32e", 400),
    (b"/a/%253b", 400),
    (b"/a/%253B", 400),
    (b"/a/%2500", 400),
    (b"/a/%251f", 400),
    (b"/a/%257F", 400),
    (b"http://h/public/%252e%252e/admin", 400),
    (b"/a b", 400),
    (b"/a\x00b", 400),
    (b"/caf\xc3\xa9", 400),
    *((b"/a" + bytes([c]), 400) for c in b'"<>^`{|}[]'),
    # rule 7: climbing above the root
    (b"/..", 400),
    (b"/../a", 400),
    (b"/a/../..", 400),
    (b"/a/%2E%2E/%2e%2E/b", 400),
    (b"/%2e%2e/etc/passwd", 400),
    # query bytes
    (b"/x?a b", 400),
    (b"/x?a\tb", 400),
    (b"/x?a\x7fb", 400),
    (b"/x?caf\xc3\xa9", 400),
    # length
    (b"/" + b"a" * MAX_PATH_LENGTH, 414),
    (b"/a?" + b"q" * MAX_PATH_LENGTH, 414),
]


@pytest.mark.parametrize(("raw", "status"), REJECTED)
def test_parse_rejects(raw: bytes, status: int) -> None:
    with pytest.raises(TargetRejected) as info:
        parse_request_target(raw)
    assert info.value.status == status
    assert info.value.reason == str(info.value)


def test_max_length_is_inclusive() -> None:
    raw = b"/" + b"a" * (MAX_PATH_LENGTH - 1)
    assert parse_request_target(raw).path == raw
    assert normalize_path(raw) == raw
    with pytest.raises(TargetRejected):
        normalize_path(raw + b"a")


@pytest.mark.parametrize("raw", [b"", b"a/b", b"%2Fa", b"*"])
def test_normalize_path_requires_leading_slash(raw: bytes) -> None:
    with pytest.raises(TargetRejected):
        normalize_path(raw)


def test_target_rejected_is_a_value_error_with_default_status() -> None:
    error = TargetRejected("bad")
    assert isinstance(error, ValueError)
    assert (error.reason, error.status) == ("bad", 400)


def test_request_target_compares_by_value() -> None:
    """Its fields are Final (mypy refuses an assignment); equal targets are equal and hash alike."""
    target = parse_request_target(b"/a?b")
    assert target == RequestTarget(b"/a", b"b", True, None)
    assert target != RequestTarget(b"/a", b"b", False, None)
    assert hash(target) == hash(RequestTarget(b"/a", b"b", True, None))
    assert "path=b'/a'" in repr(target)


# --- properties -----------------------------------------------------------------------------------

# Tokens that make the interesting cases likely: escapes of every class, dots, slashes, bad bytes.
_TOKENS = [
    b"/", b"//", b".", b"..", b"a", b"B", b"~", b"-", b":", b"@", b"!", b"%", b"%2e", b"%2E", b"%41",
    b"%61", b"%2f", b"%5C", b"%3b", b"%25", b"%23", b"%3f", b"%c3", b"%7e", b"%00", b"%7f", b"%g", b";",
    b"\\", b"?", b"#", b" ", b"\xff", b"zqx", b"2e", b"2F", b"5c", b"3B", b"25", b"%32", b"%65",
]  # fmt: skip
_PATHLIKE = st.lists(st.sampled_from(_TOKENS), max_size=20).map(lambda parts: b"/" + b"".join(parts))
_ABSOLUTE = st.tuples(
    st.sampled_from([b"http://", b"HTTPS://", b"ftp://", b"http:/", b""]),
    st.sampled_from([b"Example.com", b"h:80", b"[::1]", b"u@h", b"h:", b"", b"zqx"]),
    _PATHLIKE | st.just(b"") | st.just(b"?q"),
).map(b"".join)
TARGETS = st.binary(max_size=64) | _PATHLIKE | _ABSOLUTE

_REENCODED = re.compile(rb"%25(?:25)*(?:2[eEfF]|5[cC]|3[bB]|[01][0-9a-fA-F]|7[fF])")
_DOT_SEGMENT = re.compile(rb"(?:^|/)\.\.?(?:/|$)")
_UNRESERVED_ESCAPE = re.compile(rb"%(2[dDeE]|3[0-9]|[46][1-9a-fA-F]|[57][0-9aA]|5[fF]|7[eE])")


def _parse_or_none(raw: bytes) -> RequestTarget | None:
    try:
        return parse_request_target(raw)
    except TargetRejected as error:
        assert error.status in (400, 414)
        assert "zqx" not in error.reason.lower(), "reason must not echo the input"
        return None


@given(TARGETS)
def test_parse_returns_or_rejects(raw: bytes) -> None:
    target = _parse_or_none(raw)
    if target is not None:
        assert target.path.startswith(b"/")
        assert target.has_query or target.query == b""


@given(TARGETS)
def test_output_path_is_idempotent(raw: bytes) -> None:
    target = _parse_or_none(raw)
    if target is not None:
        assert normalize_path(target.path) == target.path
        assert parse_request_target(target.path).path == target.path


@given(TARGETS)
def test_output_path_is_canonical(raw: bytes) -> None:
    target = _parse_or_none(raw)
    if target is None:
        return
    path = target.path
    assert b"//" not in path
    assert _DOT_SEGMENT.search(path) is None
    for forbidden in (b"%2F", b"%2f", b"%5C", b"%5c", b"\\", b";", b"%3B", b"%3b", b"#"):
        assert forbidden not in path
    assert _REENCODED.search(path) is None, "a further decoding must not yield a rule-4 or dot escape"
    assert re.search(rb"%[0-9A-Fa-f]?[a-f]", path) is None, "hex in escapes must be upper-case"
    decoded = _UNRESERVED_ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), path)
    assert _DOT_SEGMENT.search(decoded) is None


@given(TARGETS)
def test_fast_path_agrees_with_slow_path(raw: bytes) -> None:
    try:
        slow = _normalize_slow(raw)
    except TargetRejected:
        with pytest.raises(TargetRejected):
            normalize_path(raw)
    else:
        assert normalize_path(raw) == slow


@given(TARGETS | TARGETS.map(lambda raw: raw + b"?a=1&b=%7E") | st.binary(max_size=24).map(b"/x?".__add__))
def test_fast_target_agrees_with_slow_target(raw: bytes) -> None:
    try:
        slow = _parse_slow(raw)
    except TargetRejected:
        with pytest.raises(TargetRejected):
            parse_request_target(raw)
    else:
        assert parse_request_target(raw) == slow


@given(st.lists(st.sampled_from([b"a", b"Z", b"9", b".", b"-", b"~", b"/", b"@"]), max_size=20))
def test_normal_paths_take_the_fast_path_unchanged(parts: list[bytes]) -> None:
    """Whatever the fast path accepts must be exactly what the slow path would produce."""
    raw = b"/" + b"".join(parts)
    try:
        expected = _normalize_slow(raw)
    except TargetRejected:
        return
    assert normalize_path(raw) == expected
    assert parse_request_target(raw + b"?x=1") == RequestTarget(expected, b"x=1", True, None)
