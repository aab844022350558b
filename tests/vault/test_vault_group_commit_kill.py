"""kill -9 while many clients write at once (their writes group-committed): after a restart every write
that was acknowledged is there, at the version it was acknowledged with."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from vault_harness import VaultProcess, init_and_unseal, vault_config

pytestmark = pytest.mark.process

WRITERS = 12
ACKED_BEFORE_KILL = 150


@pytest.fixture
def process(tmp_path: Path) -> Iterator[VaultProcess]:
    vault = VaultProcess(tmp_path, vault_config(tmp_path))
    try:
        yield vault
    finally:
        vault.stop()


def test_kill_9_amid_concurrent_writers_loses_no_acknowledged_write(process: VaultProcess) -> None:
    process.start()
    keys, root = init_and_unseal(process)
    acked: dict[str, tuple[int, dict[str, str]]] = {}  # path -> (version, data) last acknowledged
    lock = threading.Lock()
    enough = threading.Event()

    def writer(k: int) -> None:
        kv = process.client(root).secrets.kv.v2
        for i in range(10_000):
            # A new secret each time, and a new version of the writer's own secret.
            for path in (f"crash/t{k}/s{i}", f"crash/t{k}"):
                data = {"value": secrets.token_hex(8)}
                try:
                    version = kv.create_or_update_secret(path, data)["data"]["version"]
                except Exception:  # the vault is gone: this write was not acknowledged
                    return
                with lock:
                    acked[path] = (version, data)
                    if len(acked) >= ACKED_BEFORE_KILL:
                        enough.set()

    threads = [threading.Thread(target=writer, args=(k,), daemon=True) for k in range(WRITERS)]
    for thread in threads:
        thread.start()
    assert enough.wait(120), "the writers did not get far enough"
    process.kill()  # while the writers are still writing
    for thread in threads:
        thread.join(30)
        assert not thread.is_alive()
    process.start()
    process.client().sys.submit_unseal_keys(keys[:3])
    kv = process.client(root).secrets.kv.v2
    for path, (version, data) in acked.items():
        read = kv.read_secret_version(path, version=version, raise_on_deleted_version=True)
        assert read["data"]["data"] == data, path
