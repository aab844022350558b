"""The access log: one JSON line per request, written in batches.

Lines are appended to an in-memory batch that the owner's sweeper writes (the gateway's, ten times
a second), so a request costs a string format instead of a write() system call, and no request's
callback waits for the disk. Only a batch past 1 MiB (about 3,000 lines: a sweeper held up) is
written from the request path, which bounds the memory. The gateway
builds each line itself rather than with ``json.dumps``: every variable field is either a number or
text the gateway has already restricted to a JSON-safe alphabet (normalized paths, tokens,
addresses, validated request ids), and a hand-built line is several times cheaper per request.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

FLUSH_BYTES = 1024 * 1024


class AccessLog:
    def __init__(self, path: str | None, sink: Callable[[bytes], None] | None = None) -> None:
        """``path`` ``"-"`` is standard output; None disables the log, unless ``sink`` is given: then
        each batch goes to ``sink`` (the mesh sidecar's lines join its structured log stream)."""
        self.enabled = path is not None or sink is not None
        self._sink = sink
        self._fd: int | None = None
        if path == "-":
            self._fd = sys.stdout.fileno()
        elif path is not None:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._owns_fd = path not in (None, "-")
        self._batch: list[bytes] = []
        self._size = 0
        self._second = 0
        self._prefix = b""

    def now(self) -> tuple[bytes, float]:
        """``YYYY-mm-ddTHH:MM:SS`` of the wall clock (formatted once a second) and the milliseconds
        past it: a line's time as ``b"%s.%03dZ" % log.now()``."""
        wall = time.time()
        second = int(wall)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)).encode()
        return self._prefix, (wall - second) * 1000

    def write(self, line: bytes) -> None:
        self._batch.append(line)
        self._size += len(line)
        if self._size >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self._batch or (self._fd is None and self._sink is None):
            return
        data = b"".join(self._batch)
        self._batch.clear()
        self._size = 0
        if self._sink is not None:
            self._sink(data)
            return
        assert self._fd is not None
        try:
            while data:
                written = os.write(self._fd, data)
                data = data[written:]
        except OSError:
            pass  # a full disk must not stop the gateway; metrics still count requests

    def close(self) -> None:
        self.flush()
        if self._owns_fd and self._fd is not None:
            os.close(self._fd)
        self._fd = None
