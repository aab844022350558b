"""Every tampering case on a real log (written by EventLog, checkpointed by Checkpointer), found by
`garrison audit verify` with the kind and the seq where the damage starts; and what it cannot see."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from audit_log import WrittenLog, write_log
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from garrison.audit.checkpoints import Checkpoint, key_id, load_public_key, read_checkpoints, signed_text
from garrison.audit.cli_verify import register
from garrison.audit.merkle import leaf_hash, mth
from garrison.audit.paths import CHECKPOINTS_FILE
from garrison.audit.segments import CHAIN_GENESIS, chain_next, format_line, parse_line
from garrison.audit.verify import VerifyReport, verify_log


@pytest.fixture
def written(tmp_path: Path) -> WrittenLog:
    # 40 entries; checkpoints at sizes 10, 20, 30 and 40 (the last at close)
    return write_log(tmp_path, [10, 10, 10, 10], {0, 1, 2})


def check(written: WrittenLog) -> VerifyReport:
    return verify_log(written.directory, load_public_key(written.paths.checkpoint_public_key))


def first(report: VerifyReport) -> tuple[str, int | None]:
    assert not report.ok
    return report.problems[0].kind, report.problems[0].seq


def cli(written: WrittenLog, *args: str) -> tuple[int, str]:
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, [*args, "--log-dir", str(written.directory)])
    return result.exit_code, result.output


def rechain(lines: list[bytes]) -> list[bytes]:
    """What an attacker without the key can do: renumber and recompute the chain end to end."""
    chain, out = CHAIN_GENESIS, []
    for seq, raw in enumerate(lines):
        parsed = parse_line(raw.rstrip(b"\n"))
        assert parsed is not None
        chain = chain_next(chain, leaf_hash(parsed.entry))
        out.append(format_line(seq, chain, parsed.entry))
    return out


def test_an_intact_log_verifies_with_a_summary(written: WrittenLog) -> None:
    report = check(written)
    assert report.ok, report.problems
    assert report.entries == 40
    assert [c.size for c in report.checkpoints] == [10, 20, 30, 40]
    code, output = cli(written, "verify")
    assert code == 0, output
    latest = read_checkpoints(written.directory / CHECKPOINTS_FILE)[-1]
    assert "intact: 40 entries, 4 checkpoints" in output and latest.root.hex() in output
    assert latest.root == mth([event.to_json() for event in written.events])


def test_a_modified_byte_is_found_at_its_seq(written: WrittenLog) -> None:
    lines = written.lines()
    lines[13] = lines[13].replace(b'"user', b'"usex', 1)
    written.write_lines(lines)
    assert first(check(written)) == ("modification", 13)
    code, output = cli(written, "verify")
    assert code == 1 and "modification at seq 13" in output


def test_a_byte_of_the_chain_value_is_a_modification(written: WrittenLog) -> None:
    lines = written.lines()
    at = lines[7].index(b'"chain":"') + 12
    lines[7] = lines[7][:at] + (b"0" if lines[7][at : at + 1] != b"0" else b"1") + lines[7][at + 1 :]
    written.write_lines(lines)
    assert first(check(written)) == ("modification", 7)


def test_a_deleted_line(written: WrittenLog) -> None:
    lines = written.lines()
    del lines[17]
    written.write_lines(lines)
    assert first(check(written)) == ("deletion", 17)


def test_an_inserted_copy_of_a_line(written: WrittenLog) -> None:
    lines = written.lines()
    lines.insert(23, lines[22])
    written.write_lines(lines)
    assert first(check(written)) == ("insertion", 22)


def test_an_inserted_forged_line(written: WrittenLog) -> None:
    lines = written.lines()
    forged = parse_line(lines[5].rstrip(b"\n"))
    assert forged is not None
    lines.insert(5, format_line(999, forged.chain, forged.entry.replace(b"user", b"evil")))
    written.write_lines(lines)
    assert first(check(written)) == ("insertion", 5)


def test_two_swapped_lines(written: WrittenLog) -> None:
    lines = written.lines()
    lines[5], lines[6] = lines[6], lines[5]
    written.write_lines(lines)
    assert first(check(written)) == ("reordering", 5)


def test_a_truncated_tail(written: WrittenLog) -> None:
    written.write_lines(written.lines()[:35])
    assert first(check(written)) == ("truncation", 35)
    code, output = cli(written, "verify")
    assert code == 1 and "truncation at seq 35" in output


def test_a_tail_cut_inside_a_line(written: WrittenLog) -> None:
    data = b"".join(written.lines())
    written.segment().write_bytes(data[: len(data) - 20])
    assert first(check(written)) == ("truncation", 39)


def test_truncated_before_the_last_checkpoints(written: WrittenLog) -> None:
    written.write_lines(written.lines()[:15])
    report = check(written)
    assert first(report) == ("truncation", 15)
    assert "covers 40" in report.problems[0].message


def test_a_rewritten_history_with_a_recomputed_chain_fails_the_checkpoints(written: WrittenLog) -> None:
    lines = written.lines()
    lines[25] = lines[25].replace(b'"user', b'"usex', 1)
    written.write_lines(rechain(lines))
    report = check(written)
    # the lines are consistent among themselves: only the signed roots show it, between checkpoints
    assert first(report) == ("modification", 20)
    assert "between seq 20 and seq 29" in report.problems[0].message


def test_a_renumbered_deletion_fails_the_checkpoints(written: WrittenLog) -> None:
    lines = written.lines()
    del lines[3]
    written.write_lines(rechain(lines))
    kinds = {(p.kind, p.seq) for p in check(written).problems}
    assert ("modification", 0) in kinds and ("truncation", 39) in kinds


def test_checkpoints_re_signed_with_another_key(written: WrittenLog) -> None:
    lines = written.lines()
    lines[3] = lines[3].replace(b'"user', b'"usex', 1)
    lines = rechain(lines)
    written.write_lines(lines)
    entries = [p.entry for p in (parse_line(raw.rstrip(b"\n")) for raw in lines) if p is not None]
    chains = [p.chain for p in (parse_line(raw.rstrip(b"\n")) for raw in lines) if p is not None]
    forger = Ed25519PrivateKey.generate()
    forged = []
    for old in read_checkpoints(written.directory / CHECKPOINTS_FILE):
        root, chain, kid = mth(entries[: old.size]), chains[old.size - 1], key_id(forger.public_key())
        signature = forger.sign(signed_text(old.size, root, chain, old.time, kid))
        forged.append(Checkpoint(old.size, root, chain, old.time, kid, signature))
    text = "".join(json.dumps(c.to_dict()) + "\n" for c in forged)
    (written.directory / CHECKPOINTS_FILE).write_text(text)
    report = check(written)
    assert [(p.kind, p.seq) for p in report.problems] == [("checkpoint", None)]
    assert "4 checkpoint(s) not signed by this key" in report.problems[0].message
    assert cli(written, "verify")[0] == 1


def test_a_damaged_checkpoints_file(written: WrittenLog) -> None:
    path = written.directory / CHECKPOINTS_FILE
    path.write_bytes(path.read_bytes().replace(b'"size":20', b'"size":"20"'))
    assert first(check(written))[0] == "checkpoint"


def test_a_tail_removed_after_the_last_checkpoint_is_not_seen(tmp_path: Path) -> None:
    """The documented limit: entries no checkpoint covers yet can vanish unnoticed (ship checkpoints
    off the box, and keep the interval short)."""
    written = write_log(tmp_path, [10, 10], {0})
    written.write_lines(written.lines()[:10] + written.lines()[10:15])
    # the close checkpoint covers 20: remove it too, as an attacker with write access would
    path = written.directory / CHECKPOINTS_FILE
    path.write_bytes(path.read_bytes().splitlines(keepends=True)[0])
    report = check(written)
    assert report.ok and report.entries == 15


def test_verify_reads_the_config(written: WrittenLog, tmp_path: Path) -> None:
    config = tmp_path / "garrison.yaml"
    config.write_text(f"state_dir: {tmp_path}\n")
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["verify", "-c", str(config), "--json"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert body["ok"] and body["entries"] == 40 and body["latest"]["size"] == 40


def test_checkpoints_kept_elsewhere_show_a_log_cut_with_its_checkpoints(tmp_path: Path) -> None:
    written = write_log(tmp_path / "box", [10, 10], {0})
    path = written.directory / CHECKPOINTS_FILE
    copy = tmp_path / "offbox.jsonl"
    copy.write_bytes(path.read_bytes())  # what shipping the checkpoints off the machine keeps
    written.write_lines(written.lines()[:15])
    path.write_bytes(path.read_bytes().splitlines(keepends=True)[0])
    assert check(written).ok  # alone, the box cannot tell
    code, output = cli(written, "verify", "--checkpoints", str(copy))
    assert code == 1 and "truncation at seq 15" in output
    for segment in written.directory.glob("segment-*"):
        segment.unlink()
    path.unlink()  # everything removed: the copy still tells
    code, output = cli(written, "verify", "--checkpoints", str(copy))
    assert code == 1 and "truncation at seq 0" in output
    assert cli(written, "verify", "--checkpoints", str(tmp_path / "absent.jsonl"))[0] == 2


def test_a_long_log_shows_progress(written: WrittenLog, monkeypatch: pytest.MonkeyPatch) -> None:
    import garrison.audit.cli_verify as cli_verify

    monkeypatch.setattr(cli_verify, "PROGRESS_FROM", 0)
    advanced: list[int] = []
    report = verify_log(
        written.directory, load_public_key(written.paths.checkpoint_public_key), advanced.append
    )
    assert report.ok and sum(advanced) == written.segment().stat().st_size
    code, output = cli(written, "verify")
    assert code == 0 and "intact: 40 entries" in output
