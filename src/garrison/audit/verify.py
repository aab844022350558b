"""`garrison audit verify`: check a log's files against its hash chain and its signed checkpoints.

Reads the segments once, in order, streaming (memory: 8 bytes per entry for the seq column, used to
tell what kind of damage a break in the sequence is). What it checks, and how each tampering shows:

- every line is a line the log writes (``segments.parse_line``); a damaged one is a *modification*;
- seq continuity: a missing seq is a *deletion*, a seq seen again an *insertion*, a seq out of place a
  *reordering*; the problem's ``seq`` is where the log stops being intact;
- the chain: ``chain_n = SHA-256(chain_{n-1} || leaf_n)`` over the stored values, so a changed line
  breaks the chain at that line (*modification*) even when the line still parses;
- every checkpoint's signature (the given public key, and its key id), and its root and chain head
  against the log's first ``size`` entries: a log rewritten with a recomputed chain fails here, and the
  problem names the range between the last checkpoint that matches and the first that does not;
  consecutive checkpoints that both match the log are consistent (append-only) by construction;
- *truncation*: a log shorter than its latest checkpoint, or a torn last line.

It cannot see entries removed after the latest checkpoint by someone who also removes nothing else,
nor a history rewritten by someone who holds the checkpoint key (docs/audit.md, "Tamper evidence").
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from garrison.audit.checkpoints import Checkpoint, CheckpointError, read_checkpoints
from garrison.audit.merkle import EMPTY_ROOT, CompactRange, leaf_hash
from garrison.audit.paths import CHECKPOINTS_FILE
from garrison.audit.segments import CHAIN_GENESIS, chain_next, list_segments, parse_line, read_lines

__all__ = ["Problem", "VerifyReport", "verify_log"]

Progress = Callable[[int], None]  # called with bytes read since the last call


@dataclass(frozen=True, slots=True)
class Problem:
    kind: str  # modification | deletion | insertion | reordering | truncation | checkpoint
    seq: int | None  # where the log stops being intact (None: not tied to an entry)
    message: str


@dataclass(slots=True)
class VerifyReport:
    entries: int = 0
    checkpoints: list[Checkpoint] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    total_bytes: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def latest(self) -> Checkpoint | None:
        return self.checkpoints[-1] if self.checkpoints else None


@dataclass(slots=True)
class _Scan:
    """What one pass over the lines gathers."""

    seqs: array[int] = field(default_factory=lambda: array("q"))
    chain_break: int | None = None  # first position whose stored chain does not follow
    unparsed: int | None = None  # first position of a line the log did not write
    torn: int | None = None  # position of an incomplete last line
    heads: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)  # size -> (root, chain)


def log_bytes(directory: Path) -> int:
    return sum(path.stat().st_size for _, path in list_segments(directory))


def verify_log(
    directory: Path,
    public_key: Ed25519PublicKey,
    progress: Progress | None = None,
    kept_elsewhere: Sequence[Checkpoint] = (),
) -> VerifyReport:
    """Check the log in ``directory`` (segments and checkpoints.jsonl) under ``public_key``.
    ``kept_elsewhere``: checkpoints copied off this machine, checked as the log's own are (the copy
    is what shows a log removed or cut together with its checkpoints file)."""
    report = VerifyReport(total_bytes=log_bytes(directory))
    try:
        report.checkpoints = read_checkpoints(directory / CHECKPOINTS_FILE)
    except CheckpointError as exc:
        report.problems.append(Problem("checkpoint", None, str(exc)))
    if kept_elsewhere:
        merged = set(report.checkpoints) | set(kept_elsewhere)
        report.checkpoints = sorted(merged, key=lambda c: (c.size, c.time))
    sizes = {checkpoint.size for checkpoint in report.checkpoints}
    scan = _scan(directory, sizes, progress)
    report.entries = len(scan.seqs)
    structural = _structural_problem(scan)
    if structural is not None:
        report.problems.append(structural)
    damaged_from = structural.seq if structural is not None and structural.seq is not None else None
    report.problems += _checkpoint_problems(
        report.checkpoints, scan, public_key, report.entries, damaged_from
    )
    report.problems.sort(key=lambda p: (p.seq is None, p.seq or 0))
    return report


def _scan(directory: Path, sizes: set[int], progress: Progress | None) -> _Scan:
    scan = _Scan()
    tree = CompactRange()
    previous = CHAIN_GENESIS
    for _, path in list_segments(directory):
        done = 0
        with path.open("rb") as file:
            for offset, raw, complete in read_lines(file):
                position = len(scan.seqs)
                if not complete:
                    scan.torn = position
                    break
                parsed = parse_line(raw)
                if parsed is None:
                    scan.unparsed = position if scan.unparsed is None else scan.unparsed
                    scan.seqs.append(position)  # assume it sits in its place: one problem, not two
                    leaf = leaf_hash(raw)
                    stored = previous
                else:
                    scan.seqs.append(parsed.seq)
                    leaf = leaf_hash(parsed.entry)
                    stored = parsed.chain
                    if scan.chain_break is None and chain_next(previous, leaf) != stored:
                        scan.chain_break = position
                previous = stored
                tree.append(leaf)
                if tree.size in sizes:
                    scan.heads[tree.size] = (tree.root(), stored)
                if progress is not None and offset - done >= 1 << 20:
                    progress(offset - done)
                    done = offset
        if progress is not None:
            progress(path.stat().st_size - done)
    scan.heads[0] = (EMPTY_ROOT, CHAIN_GENESIS)
    return scan


def _structural_problem(scan: _Scan) -> Problem | None:
    """The first place the lines stop being a well-formed, continuous, chained log."""
    seqs = scan.seqs
    first_gap = next((p for p, s in enumerate(seqs) if s != p), None)
    candidates = [p for p in (first_gap, scan.chain_break, scan.unparsed) if p is not None]
    if not candidates:
        return None
    start = min(candidates)
    if start == scan.unparsed:
        return Problem("modification", start, f"the line at seq {start} is not a line the log writes")
    if first_gap is not None and first_gap <= start:
        return _classify_gap(seqs, first_gap)
    return Problem("modification", start, f"the hash chain breaks at seq {start}: the entry was changed")


def _classify_gap(seqs: array[int], p: int) -> Problem:
    """Which tampering a break in the seq column at position ``p`` is."""
    s = seqs[p]
    if s < p:
        return Problem("insertion", s, f"seq {s} appears again after seq {p - 1}: a line was inserted")
    rest = seqs[p + 1 :]
    duplicated = seqs.count(s) > 1
    if p not in rest:
        if duplicated or (rest and rest[0] == p + 1) or s - p > len(rest) + 1:
            return Problem("modification", p, f"the line at seq {p} carries seq {s}: it was changed")
        missing = s - p
        return Problem("deletion", p, f"{missing} entr{'y' if missing == 1 else 'ies'} from seq {p} missing")
    if duplicated or s >= len(seqs):
        return Problem("insertion", p, f"a line with seq {s} was inserted before seq {p}")
    return Problem("reordering", p, f"seq {s} comes before seq {p}: lines were moved")


def _checkpoint_problems(
    checkpoints: list[Checkpoint],
    scan: _Scan,
    public_key: Ed25519PublicKey,
    entries: int,
    damaged_from: int | None,
) -> list[Problem]:
    """Signatures, order, roots at their sizes (a mismatch the damage at ``damaged_from`` already
    explains is not repeated), and truncation."""
    problems: list[Problem] = []
    bad_signatures = [c for c in checkpoints if not _signed(c, public_key)]
    if bad_signatures:
        first = bad_signatures[0]
        problems.append(
            Problem(
                "checkpoint",
                None,
                f"{len(bad_signatures)} checkpoint(s) not signed by this key, the first at size "
                f"{first.size} ({first.time}): they were forged or re-signed",
            )
        )
    for earlier, later in pairwise(checkpoints):
        if later.size < earlier.size:
            problems.append(
                Problem("checkpoint", None, f"checkpoint at size {later.size} follows one at {earlier.size}")
            )
            break
    matched = 0
    for checkpoint in checkpoints:
        head = scan.heads.get(checkpoint.size)
        if head is None:
            continue
        if head != (checkpoint.root, checkpoint.chain):
            if damaged_from is not None and damaged_from < checkpoint.size:
                break
            problems.append(
                Problem(
                    "modification",
                    matched,
                    f"the log's first {checkpoint.size} entries do not match the checkpoint signed at "
                    f"{checkpoint.time}: entries between seq {matched} and seq {checkpoint.size - 1} "
                    "were changed, removed or inserted",
                )
            )
            break
        matched = checkpoint.size
    covered = max((c.size for c in checkpoints), default=0)
    if covered > entries:
        problems.append(
            Problem(
                "truncation",
                entries,
                f"the log holds {entries} entries but a signed checkpoint covers {covered}: "
                f"entries from seq {entries} on were removed",
            )
        )
    elif scan.torn is not None:
        problems.append(
            Problem(
                "truncation",
                scan.torn,
                f"the last line (seq {scan.torn}) is incomplete: a write cut by a crash (the collector "
                "drops it at its next start) or a truncated file",
            )
        )
    return problems


def _signed(checkpoint: Checkpoint, public_key: Ed25519PublicKey) -> bool:
    try:
        checkpoint.verify(public_key)
    except CheckpointError:
        return False
    return True
