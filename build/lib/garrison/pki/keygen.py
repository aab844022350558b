"""``python -m garrison.pki.keygen``: a new workload key and its CSR, printed on stdout, by a process
that ends at once.

Why a process: generating a key and signing a CSR is the only thing a workload's long-lived process
(a sidecar, the gateway's mesh identity) needs ``cryptography`` for, once per renewal, and importing
it there keeps about 10 MB resident for the life of the process. The key travels over the pipe to
the parent only: never in argv, the environment, a file of its own or a log line; the parent writes
it 0600 with its certificate (pki/workload.py). The CSR names nothing: the CA sets the identity.
"""

from __future__ import annotations

import sys

from cryptography.hazmat.primitives import serialization

from garrison.pki.authority import new_key, request_for

__all__ = ["main"]


def main() -> None:
    key = new_key()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    csr_pem = request_for(key).public_bytes(serialization.Encoding.PEM)
    sys.stdout.buffer.write(key_pem + csr_pem)
    sys.stdout.buffer.flush()


if __name__ == "__main__":
    main()
