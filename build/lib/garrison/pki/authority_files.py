"""The workload CA on disk: its trust bundle, its issuing intermediate, its roots' keys, sealed.

Layout under ``state_dir/ca`` (directory 0700; keys 0600, sealed with the key-encryption key that
the identity provider already uses, ``pki/kek.py``, each bound to its certificate's serial so a key file
copied next to another certificate does not open):

- ``bundle.pem``: every root this deployment trusts, what each workload verifies its peers against.
  Two roots are in it during a root rotation; one otherwise.
- ``roots/<serial>.pem`` and ``roots/<serial>.key``: each root and, unless it is kept offline, its key.
- ``issuing.pem`` (the intermediate, then the certificates above it, roots excluded) and
  ``issuing.key``: what signs workload certificates.

Root rotation in three steps, so that no workload ever holds a certificate its peers cannot verify
(the failure Istio, Linkerd and SPIRE users keep reporting):

1. ``add_root``: the new root joins the bundle; issuing stays under the old root while every workload
   picks up the bundle (a sidecar refreshes it with each renewal, so within one certificate lifetime);
2. ``activate_root``: a new intermediate under the new root starts issuing; certificates under the
   old root stay valid, and both roots are still trusted;
3. ``retire_root``: once every certificate under the old root has expired (one workload lifetime after
   step 2), it leaves the bundle.

Every write is a whole file replaced atomically: a reader sees the old bundle or the new, never half.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from garrison.pki.authority import INTERMEDIATE_LIFETIME, Authority, new_intermediate, new_root, pem
from garrison.pki.kek import KeyEncryption, KeyEncryptionError

__all__ = ["AuthorityFiles", "AuthorityFilesError"]


class AuthorityFilesError(Exception):
    """The CA's files are missing, inconsistent or unreadable; the message says what to run."""


class AuthorityFiles:
    """Read and change the CA's files. Holds no key in memory beyond the call that needs it."""

    def __init__(self, directory: Path, kek: KeyEncryption) -> None:
        self.directory = directory
        self._kek = kek

    def __repr__(self) -> str:
        return f"AuthorityFiles({str(self.directory)!r})"

    @property
    def bundle_file(self) -> Path:
        return self.directory / "bundle.pem"

    def exists(self) -> bool:
        return self.bundle_file.exists() and (self.directory / "issuing.pem").exists()

    # -- set-up ----------------------------------------------------------------------------------

    def init(
        self,
        trust_domain: str,
        *,
        now: dt.datetime,
        offline_root: Path | None = None,
        intermediate_lifetime: dt.timedelta = INTERMEDIATE_LIFETIME,
    ) -> Authority:
        """A new root and an intermediate under it; the root's key goes to ``offline_root`` when given
        (a file to move off this machine), else next to its certificate. Refuses to overwrite a CA."""
        if self.exists():
            raise AuthorityFilesError(f"a CA already exists in {self.directory}; rotate it instead")
        for directory in (self.directory, self.directory / "roots"):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            directory.chmod(0o700)  # mkdir's mode is cut by the umask, and not applied to parents
        root = new_root(trust_domain, now=now)
        self._save_root(root, offline_root)
        self._write(self.bundle_file, pem(root.certificate))
        issuing = new_intermediate(root, trust_domain, now=now, lifetime=intermediate_lifetime)
        self._save_issuing(issuing)
        return issuing

    # -- reading ---------------------------------------------------------------------------------

    def bundle(self) -> list[x509.Certificate]:
        """The roots every workload trusts."""
        return x509.load_pem_x509_certificates(self._read(self.bundle_file))

    def issuing(self) -> Authority:
        """The intermediate that signs workload certificates, with its key."""
        chain = x509.load_pem_x509_certificates(self._read(self.directory / "issuing.pem"))
        key = self._open_key(self.directory / "issuing.key", chain[0])
        return Authority(chain[0], key, (*chain[1:], self._root_certificate(chain[-1])))

    def root(self, serial: int | None = None, key_file: Path | None = None) -> Authority:
        """A root with its key (the issuing intermediate's root unless ``serial`` says otherwise); an
        offline root's key is read from ``key_file``."""
        if serial is None:
            chain = x509.load_pem_x509_certificates(self._read(self.directory / "issuing.pem"))
            serial = self._root_certificate(chain[-1]).serial_number
        certificate = x509.load_pem_x509_certificate(self._read(self._root_file(serial, ".pem")))
        key_file = key_file or self._root_file(serial, ".key")
        if not key_file.exists():
            raise AuthorityFilesError(
                f"the key of root {serial:x} is not in {self.directory}: it is kept offline; "
                "pass the file that holds it (--root-key)"
            )
        return Authority(certificate, self._open_key(key_file, certificate))

    # -- rotation --------------------------------------------------------------------------------

    def rotate_intermediate(
        self,
        root: Authority,
        trust_domain: str,
        *,
        now: dt.datetime,
        lifetime: dt.timedelta = INTERMEDIATE_LIFETIME,
    ) -> Authority:
        """A fresh intermediate under ``root`` (which must be trusted); certificates it signed before
        stay valid, since the root they chain to is unchanged."""
        self._require_trusted(root.certificate)
        issuing = new_intermediate(root, trust_domain, now=now, lifetime=lifetime)
        self._save_issuing(issuing)
        return issuing

    def add_root(self, trust_domain: str, *, now: dt.datetime, offline_root: Path | None = None) -> Authority:
        """Step 1 of a root rotation: a new root joins the bundle; issuing does not change yet."""
        if len(self.bundle()) > 1:
            raise AuthorityFilesError("a root rotation is already under way: activate or retire it first")
        root = new_root(trust_domain, now=now)
        self._save_root(root, offline_root)
        self._write(self.bundle_file, pem(*self.bundle(), root.certificate))
        return root

    def activate_root(
        self,
        root: Authority,
        trust_domain: str,
        *,
        now: dt.datetime,
        lifetime: dt.timedelta = INTERMEDIATE_LIFETIME,
    ) -> Authority:
        """Step 2: issue under ``root`` (added by ``add_root``) from now on; both roots stay trusted."""
        return self.rotate_intermediate(root, trust_domain, now=now, lifetime=lifetime)

    def retire_root(self, serial: int) -> None:
        """Step 3: ``serial`` leaves the bundle. Refused for the root that is issuing."""
        if serial == self.issuing().parents[-1].serial_number:
            raise AuthorityFilesError("that root signs the issuing intermediate: activate the new root first")
        remaining = [cert for cert in self.bundle() if cert.serial_number != serial]
        if len(remaining) == len(self.bundle()):
            raise AuthorityFilesError(f"root {serial:x} is not in the bundle")
        self._write(self.bundle_file, pem(*remaining))

    # -- files -----------------------------------------------------------------------------------

    def _save_root(self, root: Authority, offline_root: Path | None) -> None:
        serial = root.certificate.serial_number
        self._write(self._root_file(serial, ".pem"), pem(root.certificate))
        self._write(offline_root or self._root_file(serial, ".key"), self._seal_key(root), private=True)

    def _save_issuing(self, issuing: Authority) -> None:
        # Key first: a crash between the two leaves the old certificate with a key that does not open
        # for it, which ``issuing()`` reports, rather than a new certificate with no key at all.
        self._write(self.directory / "issuing.key.new", self._seal_key(issuing), private=True)
        self._write(self.directory / "issuing.pem.new", pem(issuing.certificate, *issuing.chain()[1:]))
        os.replace(self.directory / "issuing.key.new", self.directory / "issuing.key")
        os.replace(self.directory / "issuing.pem.new", self.directory / "issuing.pem")

    def _root_certificate(self, top: x509.Certificate) -> x509.Certificate:
        """The trusted root that issued ``top`` (the last non-root certificate of a chain)."""
        for root in self.bundle():
            if root.subject == top.issuer and _key_id(root) == _issuer_key_id(top):
                return root
        raise AuthorityFilesError("the issuing intermediate chains to no root in bundle.pem")

    def _require_trusted(self, root: x509.Certificate) -> None:
        if all(cert.serial_number != root.serial_number for cert in self.bundle()):
            raise AuthorityFilesError(f"root {root.serial_number:x} is not in the bundle")

    def _root_file(self, serial: int, suffix: str) -> Path:
        return self.directory / "roots" / f"{serial:x}{suffix}"

    def _seal_key(self, authority: Authority) -> bytes:
        der = authority.key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return self._kek.seal(der, _key_context(authority.certificate))

    def _open_key(self, path: Path, certificate: x509.Certificate) -> ec.EllipticCurvePrivateKey:
        try:
            der = self._kek.open(self._read(path), _key_context(certificate))
        except KeyEncryptionError:
            raise AuthorityFilesError(
                f"{path} does not open for the certificate beside it (another CA's key, or another KEK)"
            ) from None
        key = serialization.load_der_private_key(der, password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)  # only this module writes these files
        return key

    def _read(self, path: Path) -> bytes:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise AuthorityFilesError(f"{path} is missing: run `garrison ca init` first") from None

    def _write(self, path: Path, data: bytes, *, private: bool = False) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)


def _key_context(certificate: x509.Certificate) -> str:
    return f"garrison-ca-key:{certificate.serial_number:x}"


def _key_id(certificate: x509.Certificate) -> bytes:
    return certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest


def _issuer_key_id(certificate: x509.Certificate) -> bytes | None:
    return certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
