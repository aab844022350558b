"""The CA's files: set-up, sealed keys, offline roots, and rotations in which every certificate verifies."""

from __future__ import annotations

import datetime as dt
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from garrison.pki.authority import Authority, new_key, request_for, sign_workload, workload_id
from garrison.pki.authority_files import AuthorityFiles, AuthorityFilesError
from garrison.pki.kek import KeyEncryption

NOW = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.UTC)
DOMAIN = "shop.local"


@pytest.fixture
def files(tmp_path: Path) -> AuthorityFiles:
    return AuthorityFiles(tmp_path / "ca", KeyEncryption(os.urandom(32)))


def svid(issuing: Authority, service: str = "orders", now: dt.datetime = NOW) -> list[x509.Certificate]:
    """A workload's certificate and the chain it sends."""
    cert = sign_workload(issuing, request_for(new_key()), workload_id(DOMAIN, service), now=now)
    return [cert, *issuing.chain()]


def verifies(bundle: list[x509.Certificate], chain: list[x509.Certificate], at: dt.datetime = NOW) -> bool:
    """What a peer holding ``bundle`` concludes of ``chain`` (cryptography's RFC 5280 path validation)."""
    verifier = PolicyBuilder().store(Store(bundle)).time(at).build_client_verifier()
    try:
        verifier.verify(chain[0], chain[1:])
    except VerificationError:
        return False
    return True


def test_init_writes_a_bundle_and_an_issuing_intermediate_with_private_keys(files: AuthorityFiles) -> None:
    issuing = files.init(DOMAIN, now=NOW)
    assert files.exists()
    assert stat.S_IMODE(files.directory.stat().st_mode) == 0o700
    keys = [files.directory / "issuing.key", *(files.directory / "roots").glob("*.key")]
    assert len(keys) == 2
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert b"PRIVATE KEY" not in key.read_bytes()  # sealed, not PEM
    loaded = files.issuing()
    assert loaded.certificate == issuing.certificate
    assert verifies(files.bundle(), svid(loaded))
    with pytest.raises(AuthorityFilesError, match="already exists"):
        files.init(DOMAIN, now=NOW)


def test_keys_open_only_with_their_kek_and_beside_their_certificate(files: AuthorityFiles) -> None:
    files.init(DOMAIN, now=NOW)
    stranger = AuthorityFiles(files.directory, KeyEncryption(os.urandom(32)))
    with pytest.raises(AuthorityFilesError, match="does not open"):
        stranger.issuing()
    root_key = next((files.directory / "roots").glob("*.key"))
    (files.directory / "issuing.key").write_bytes(root_key.read_bytes())
    with pytest.raises(AuthorityFilesError, match="does not open"):
        files.issuing()


def test_missing_files_say_what_to_run(files: AuthorityFiles) -> None:
    with pytest.raises(AuthorityFilesError, match="garrison ca init"):
        files.issuing()


def test_an_offline_root_is_needed_only_to_rotate(files: AuthorityFiles, tmp_path: Path) -> None:
    offline = tmp_path / "offline" / "root.key"
    files.init(DOMAIN, now=NOW, offline_root=offline)
    assert not list((files.directory / "roots").glob("*.key"))
    assert verifies(files.bundle(), svid(files.issuing()))  # issuing needs no root key
    with pytest.raises(AuthorityFilesError, match="kept offline"):
        files.root()
    rotated = files.rotate_intermediate(files.root(key_file=offline), DOMAIN, now=NOW)
    assert files.issuing().certificate == rotated.certificate


def test_intermediate_rotation_keeps_old_certificates_valid(files: AuthorityFiles) -> None:
    first = files.init(DOMAIN, now=NOW)
    before = svid(first)
    files.rotate_intermediate(files.root(), DOMAIN, now=NOW + dt.timedelta(minutes=5))
    after = svid(files.issuing(), now=NOW + dt.timedelta(minutes=5))
    assert files.issuing().certificate != first.certificate
    bundle = files.bundle()
    assert verifies(bundle, before, NOW + dt.timedelta(minutes=10))
    assert verifies(bundle, after, NOW + dt.timedelta(minutes=10))


def test_root_rotation_has_an_overlap_in_which_every_certificate_verifies(files: AuthorityFiles) -> None:
    files.init(DOMAIN, now=NOW)
    old_bundle = files.bundle()
    old_root = files.root()
    under_old = svid(files.issuing())

    # 1: the new root is trusted, issuing has not moved: a peer with either bundle accepts new certificates.
    new_root = files.add_root(DOMAIN, now=NOW)
    both = files.bundle()
    assert len(both) == 2
    still_old = svid(files.issuing())
    assert verifies(old_bundle, still_old) and verifies(both, still_old)
    with pytest.raises(AuthorityFilesError, match="already under way"):
        files.add_root(DOMAIN, now=NOW)

    # 2: issuing under the new root; a peer that refreshed its bundle accepts old and new certificates.
    files.activate_root(new_root, DOMAIN, now=NOW)
    under_new = svid(files.issuing())
    assert verifies(both, under_old) and verifies(both, under_new)
    assert not verifies(old_bundle, under_new)  # why step 1 comes first
    with pytest.raises(AuthorityFilesError, match="activate the new root first"):
        files.retire_root(new_root.certificate.serial_number)

    # 3: the old root leaves the bundle; only what it signed stops verifying.
    files.retire_root(old_root.certificate.serial_number)
    assert [cert.serial_number for cert in files.bundle()] == [new_root.certificate.serial_number]
    assert verifies(files.bundle(), under_new)
    assert not verifies(files.bundle(), under_old)
    with pytest.raises(AuthorityFilesError, match="not in the bundle"):
        files.retire_root(old_root.certificate.serial_number)


def test_repr_shows_no_key(files: AuthorityFiles) -> None:
    files.init(DOMAIN, now=NOW)
    assert "KeyEncryption" not in repr(files) and str(files.directory) in repr(files)
