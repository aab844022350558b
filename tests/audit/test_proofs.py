"""`garrison audit prove` and `garrison audit verify-proof` on a real log: inclusion under the latest
checkpoint and consistency between two checkpoints; wrong roots, modified and truncated proofs and
forged checkpoints are refused (exit 1)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import typer
from audit_log import WrittenLog, write_log
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from garrison.audit.cli_verify import register


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> WrittenLog:
    # 45 entries; checkpoints at 7, 20, 33 and 45
    return write_log(tmp_path_factory.mktemp("proofs"), [7, 13, 13, 12], {0, 1, 2})


def invoke(*args: str) -> tuple[int, str]:
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def prove(written: WrittenLog, *args: str) -> dict[str, Any]:
    code, output = invoke("prove", *args, "--log-dir", str(written.directory))
    assert code == 0, output
    body: dict[str, Any] = json.loads(output)
    return body


def check(written: WrittenLog, document: dict[str, Any], tmp_path: Path, third_party: bool = False) -> int:
    path = tmp_path / "proof.json"
    path.write_text(json.dumps(document))
    where = (
        ["--public-key", str(written.paths.checkpoint_public_key)]
        if third_party
        else ["--log-dir", str(written.directory)]
    )
    code, output = invoke("verify-proof", str(path), *where)
    assert output.startswith("valid proof" if code == 0 else "invalid proof"), output
    return code


def test_inclusion_of_every_event(written: WrittenLog, tmp_path: Path) -> None:
    for seq in (0, 6, 7, 31, 44):
        document = prove(written, "--event", written.events[seq].id)
        assert document["seq"] == seq and document["tree_size"] == 45
        assert document["entry"].encode() == written.events[seq].to_json()
        assert check(written, document, tmp_path) == 0
        assert check(written, document, tmp_path, third_party=True) == 0


def test_consistency_between_checkpoints(written: WrittenLog, tmp_path: Path) -> None:
    for old, new in ((7, 20), (7, 45), (20, 33), (33, 45), (20, 20)):
        document = prove(written, "--from-size", str(old), "--to-size", str(new))
        assert check(written, document, tmp_path) == 0, (old, new)


def _flip(hex_text: str) -> str:
    return ("0" if hex_text[0] != "0" else "1") + hex_text[1:]


def test_broken_inclusion_proofs_are_refused(written: WrittenLog, tmp_path: Path) -> None:
    good = prove(written, "--event", written.events[12].id)
    cases = [
        {**good, "proof": [_flip(good["proof"][0]), *good["proof"][1:]]},
        {**good, "proof": good["proof"][:-1]},
        {**good, "proof": [*good["proof"], good["proof"][0]]},
        {**good, "seq": 13},
        {**good, "tree_size": 44},
        {**good, "entry": good["entry"].replace("user", "usex")},
        {**good, "checkpoint": {**good["checkpoint"], "root": _flip(good["checkpoint"]["root"])}},
        {**good, "proof": "not a list"},
        {**good, "type": "something else"},
    ]
    for number, document in enumerate(cases):
        assert check(written, document, tmp_path) == 1, number
        assert check(written, document, tmp_path, third_party=True) == 1, number


def test_a_checkpoint_signed_by_another_key_is_refused(written: WrittenLog, tmp_path: Path) -> None:
    document = prove(written, "--event", written.events[3].id)
    other = Ed25519PrivateKey.generate().public_key()
    key = tmp_path / "other.pub"
    key.write_bytes(
        other.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    path = tmp_path / "proof.json"
    path.write_text(json.dumps(document))
    code, output = invoke("verify-proof", str(path), "--public-key", str(key))
    assert code == 1 and "names key" in output


def test_broken_consistency_proofs_are_refused(written: WrittenLog, tmp_path: Path) -> None:
    good = prove(written, "--from-size", "20", "--to-size", "45")
    cases = [
        {**good, "proof": [_flip(good["proof"][0]), *good["proof"][1:]]},
        {**good, "proof": good["proof"][:-1]},
        {**good, "proof": []},
        {**good, "old": {**good["old"], "root": _flip(good["old"]["root"])}},
        {**good, "old": good["new"], "new": good["old"]},
    ]
    for number, document in enumerate(cases):
        assert check(written, document, tmp_path) == 1, number


def test_prove_says_what_it_cannot_prove(written: WrittenLog) -> None:
    code, output = invoke("prove", "--event", "f" * 32, "--log-dir", str(written.directory))
    assert code == 1 and "no event" in output
    code, output = invoke("prove", "--from-size", "8", "--to-size", "45", "--log-dir", str(written.directory))
    assert code == 1 and "no checkpoint at size 8" in output
    code, _ = invoke("prove", "--log-dir", str(written.directory))
    assert code == 2
