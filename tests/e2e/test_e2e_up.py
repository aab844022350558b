"""`garrison up --demo`, the command behind `make demo`, run end to end on free ports."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_up_runs_the_demo_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    shutil.copy(ROOT / "examples" / "demo_upstream.py", tmp_path / "demo_upstream.py")
    ports = {name: free_port() for name in ("gateway", "admin", "redirect", "demo", "identity")}
    config = (ROOT / "examples" / "garrison.yaml").read_text()
    for old, new in (
        ("127.0.0.1:8443", f"127.0.0.1:{ports['gateway']}"),
        ("127.0.0.1:9901", f"127.0.0.1:{ports['admin']}"),
        ("127.0.0.1:8080", f"127.0.0.1:{ports['redirect']}"),
        ("127.0.0.1:7001", f"127.0.0.1:{ports['demo']}"),
        ("127.0.0.1:9443", f"127.0.0.1:{ports['identity']}"),
        ("https://localhost:9443", f"https://localhost:{ports['identity']}"),
        ("state_dir: ../.garrison", f"state_dir: {tmp_path / 'state'}"),
    ):
        assert old in config
        config = config.replace(old, new)
    (tmp_path / "garrison.yaml").write_text(config)
    output = tmp_path / "up.out"
    with output.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "garrison", "up", "-c", str(tmp_path / "garrison.yaml"), "--demo"],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 30
            while "Press Ctrl-C" not in output.read_text():
                assert proc.poll() is None, output.read_text()
                assert time.monotonic() < deadline, output.read_text()
                time.sleep(0.1)
            text = output.read_text()
            assert "Garrison is up" in text
            assert f"gateway 127.0.0.1:{ports['gateway']}" in text
            assert "-> 200" in text and '"service": "demo"' in text  # one request went through
            assert "curl -i --cacert" in text
            # A service got a token from the identity provider and called the protected route with it.
            assert f"identity 127.0.0.1:{ports['identity']}" in text
            assert "/token -> 200 (client_credentials" in text
            assert "/api/orders/42 without a token -> 401" in text
            assert "/api/orders/42 with the token -> 200" in text
            assert '"x-garrison-scopes": "orders:read"' in text
            try_it_yourself_reads_the_secret_from_a_private_file(text, tmp_path / "state")
            proc.send_signal(signal.SIGINT)
            assert proc.wait(20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert "stopped." in output.read_text()
    for port in (ports["gateway"], ports["demo"], ports["identity"]):
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open"


def try_it_yourself_reads_the_secret_from_a_private_file(text: str, state_dir: Path) -> None:
    """The demo client's secret is in a 0600 file under state_dir, never on the terminal: the printed
    curl line reads it with $(cat ...), and run by a shell as printed, it gets a token."""
    secret_file = state_dir / "demo-client.secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    secret = secret_file.read_text().strip()
    assert secret.startswith("gcs_") and secret not in text
    assert "gcs_" not in text  # no client secret at all in the output
    token_line = next(line.strip() for line in text.splitlines() if line.strip().startswith("TOKEN=$(curl"))
    assert f"$(cat {secret_file})" in token_line
    # The line as a user would paste it (TLS to the provider's local CA, as printed): a token comes back.
    env = {"PATH": os.environ["PATH"]}
    done = subprocess.run(
        ["bash", "-c", f'{token_line} && test -n "$TOKEN" && echo "got a token"'],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )
    assert done.returncode == 0 and "got a token" in done.stdout, done.stderr
    assert not re.search(r"gcs_\S+", done.stderr)
