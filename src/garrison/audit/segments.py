"""The audit log's files: segment naming, the line format, and reading lines with their offsets.

A segment is a file of JSON lines named for the seq of its first entry
(``segment-00000000000000000000.jsonl``). Each line is written by ``format_line`` as::

    {"seq":N,"chain":"<64 hex>","event":<the event's exact bytes>}

The event's bytes (``Event.to_json()``) are the Merkle leaf's entry, so they are stored verbatim,
never re-serialised: ``parse_line`` cuts them out of the line by position rather than through a JSON
parser (a parser would normalise them). ``chain`` is the running hash chain,
``chain_n = SHA-256(chain_{n-1} || leaf_hash_n)`` with ``chain_{-1}`` 32 zero bytes.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

__all__ = [
    "CHAIN_GENESIS",
    "ParsedLine",
    "chain_next",
    "format_line",
    "list_segments",
    "parse_line",
    "read_lines",
    "segment_name",
]

CHAIN_GENESIS: Final = bytes(32)
SEGMENT_GLOB: Final = "segment-*.jsonl"
_PREFIX = re.compile(rb'\{"seq":(0|[1-9][0-9]{0,18}),"chain":"([0-9a-f]{64})","event":')
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class ParsedLine:
    seq: int
    chain: bytes
    entry: bytes  # the event's exact bytes: the Merkle leaf's entry


def chain_next(previous: bytes, leaf: bytes) -> bytes:
    return hashlib.sha256(previous + leaf).digest()


def format_line(seq: int, chain: bytes, entry: bytes) -> bytes:
    """One line, with its newline."""
    return b'{"seq":%d,"chain":"%s","event":%s}\n' % (seq, chain.hex().encode(), entry)


def parse_line(line: bytes) -> ParsedLine | None:
    """The line's parts, or None when it is not a line ``format_line`` wrote (without its newline)."""
    match = _PREFIX.match(line)
    if match is None or not line.endswith(b"}"):
        return None
    entry = line[match.end() : -1]
    if not entry.startswith(b"{") or b"\n" in entry:
        return None
    return ParsedLine(int(match.group(1)), bytes.fromhex(match.group(2).decode()), entry)


def segment_name(first_seq: int) -> str:
    return f"segment-{first_seq:020d}.jsonl"


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    """The segments in the directory, ordered by their first seq."""
    found: list[tuple[int, Path]] = []
    for path in directory.glob(SEGMENT_GLOB):
        digits = path.name[len("segment-") : -len(".jsonl")]
        if digits.isdigit() and len(digits) == 20:
            found.append((int(digits), path))
    return sorted(found)


def read_lines(file: BinaryIO, offset: int = 0) -> Iterator[tuple[int, bytes, bool]]:
    """``(offset, line without newline, complete)`` for each line from ``offset``; only the last
    one may be incomplete (bytes after the last newline: a torn write)."""
    file.seek(offset)
    pending = b""
    position = offset
    while True:
        chunk = file.read(_CHUNK)
        if not chunk:
            break
        data = pending + chunk
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                break
            yield position, data[start:end], True
            position += end + 1 - start
            start = end + 1
        pending = data[start:]
    if pending:
        yield position, pending, False
