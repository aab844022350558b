"""`garrison audit verify`, `garrison audit prove` and `garrison audit verify-proof`: checking the log's
integrity offline, from its files and the checkpoint public key (no collector needs to run).

Where the files are: ``-c garrison.yaml`` (``state_dir/audit/log`` and ``state_dir/audit/checkpoint.pub``),
or ``--log-dir DIR`` and ``--public-key FILE`` (for a copy of the log checked on another machine).
Exit codes: 0 intact / proof valid, 1 tampering found / proof invalid, 2 unusable input.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from garrison.audit.verify import VerifyReport

__all__ = ["register"]

ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="Path of garrison.yaml.")]
LogDirOption = Annotated[
    Path | None, typer.Option("--log-dir", help="The log's directory (instead of the config's).")
]
KeyOption = Annotated[
    Path | None,
    typer.Option("--public-key", help="The checkpoint public key (default: checkpoint.pub beside the log)."),
]
PROGRESS_FROM = 16 * 1024 * 1024  # bytes of log from which verify shows a progress bar


def register(app: typer.Typer) -> None:
    """Add the verification commands to the `garrison audit` group."""
    app.command("verify")(verify)
    app.command("prove")(prove)
    app.command("verify-proof")(verify_proof)


def _locate(config: Path | None, log_dir: Path | None, public_key: Path | None) -> tuple[Path, Path]:
    if log_dir is None:
        from garrison.audit.paths import AuditPaths
        from garrison.core.commandline import load_or_exit

        loaded = load_or_exit(config or Path("garrison.yaml"))
        paths = AuditPaths.for_state_dir(loaded.config.state_dir)
        return paths.log, public_key or paths.checkpoint_public_key
    return log_dir, public_key or log_dir.parent / "checkpoint.pub"


def _public_key(path: Path) -> Any:
    from garrison.audit.checkpoints import CheckpointError, load_public_key
    from garrison.core.commandline import err

    try:
        return load_public_key(path)
    except CheckpointError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


def verify(
    config: ConfigOption = None,
    log_dir: LogDirOption = None,
    public_key: KeyOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    checkpoints: Annotated[
        list[Path] | None,
        typer.Option("--checkpoints", help="A copy of checkpoints.jsonl kept off this machine (repeatable)."),
    ] = None,
) -> None:
    """Check every line, the seq order, the hash chain and the signed checkpoints of the audit log."""
    from garrison.audit.checkpoints import CheckpointError, read_checkpoints
    from garrison.audit.verify import log_bytes, verify_log
    from garrison.core.commandline import err

    directory, key_path = _locate(config, log_dir, public_key)
    if not directory.is_dir():
        err.print(f"[red]no audit log at {directory}[/red]")
        raise typer.Exit(2)
    key = _public_key(key_path)
    try:
        missing = [path for path in checkpoints or () if not path.is_file()]
        if missing:
            raise CheckpointError(f"no checkpoints file {missing[0]}")
        elsewhere = [c for path in checkpoints or () for c in read_checkpoints(path)]
    except (CheckpointError, OSError) as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    total = log_bytes(directory)
    if total >= PROGRESS_FROM:
        from rich.progress import Progress

        with Progress(console=err, transient=True) as bar:
            task = bar.add_task("verifying", total=total)
            report = verify_log(directory, key, lambda n: bar.advance(task, n), elsewhere)
    else:
        report = verify_log(directory, key, None, elsewhere)
    _print(report, as_json)
    raise typer.Exit(0 if report.ok else 1)


def _print(report: VerifyReport, as_json: bool) -> None:
    from rich.console import Console

    out = Console(highlight=False, soft_wrap=True)
    latest = report.latest
    if as_json:
        body = {
            "ok": report.ok,
            "entries": report.entries,
            "checkpoints": len(report.checkpoints),
            "latest": latest.to_dict() if latest else None,
            "problems": [{"kind": p.kind, "seq": p.seq, "message": p.message} for p in report.problems],
        }
        out.print_json(json.dumps(body))
        return
    for problem in report.problems:
        where = f" at seq {problem.seq}" if problem.seq is not None else ""
        out.print(f"[red]{problem.kind}{where}[/red]: {problem.message}")
    if not report.ok:
        out.print(f"[red]the audit log was tampered with[/red] ({report.entries} entries read)")
        return
    summary = f"intact: {report.entries} entries, {len(report.checkpoints)} checkpoints"
    if latest is not None:
        summary += f"; latest root {latest.root.hex()} at size {latest.size} ({latest.time})"
        uncovered = report.entries - latest.size
        if uncovered:
            summary += f"; {uncovered} newer entries await the next checkpoint"
    out.print(f"[green]{summary}[/green]")


def prove(
    event: Annotated[str | None, typer.Option("--event", help="The id of the event to prove.")] = None,
    from_size: Annotated[int | None, typer.Option("--from-size", help="The older checkpoint's size.")] = None,
    to_size: Annotated[int | None, typer.Option("--to-size", help="The newer checkpoint's size.")] = None,
    config: ConfigOption = None,
    log_dir: LogDirOption = None,
) -> None:
    """Print a JSON proof: an event's inclusion under the latest checkpoint (--event), or the
    consistency of two checkpoints (--from-size, --to-size)."""
    from garrison.audit.checkpoints import CheckpointError
    from garrison.audit.merkle import ProofError
    from garrison.audit.proofs import consistency_document, inclusion_document
    from garrison.core.commandline import err

    directory, _ = _locate(config, log_dir, None)
    try:
        if event is not None and from_size is None and to_size is None:
            document = inclusion_document(directory, event)
        elif event is None and from_size is not None and to_size is not None:
            document = consistency_document(directory, from_size, to_size)
        else:
            err.print("[red]give --event ID, or --from-size N and --to-size M[/red]")
            raise typer.Exit(2)
    except (ProofError, CheckpointError, OSError) as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    typer.echo(json.dumps(document, indent=2))


def verify_proof(
    file: Annotated[Path, typer.Argument(help="A proof printed by `garrison audit prove`.")],
    config: ConfigOption = None,
    log_dir: LogDirOption = None,
    public_key: KeyOption = None,
) -> None:
    """Check a proof against the signed checkpoints: its checkpoints must carry a valid signature
    (and, when the log is at hand, be among the log's checkpoints)."""
    from garrison.audit.checkpoints import CheckpointError, read_checkpoints
    from garrison.audit.merkle import ProofError
    from garrison.audit.paths import CHECKPOINTS_FILE
    from garrison.audit.proofs import verify_document
    from garrison.core.commandline import err

    if log_dir is None and config is None and public_key is not None:
        directory, key_path = None, public_key  # a third party: the proof and the public key only
    else:
        directory, key_path = _locate(config, log_dir, public_key)
    key = _public_key(key_path)
    try:
        document = json.loads(file.read_bytes())
        known = read_checkpoints(directory / CHECKPOINTS_FILE) if directory is not None else None
        summary = verify_document(document, key, known)
    except OSError as exc:
        err.print(f"[red]cannot read {file}: {exc.strerror}[/red]")
        raise typer.Exit(2) from None
    except (ValueError, ProofError, CheckpointError) as exc:
        typer.echo(f"invalid proof: {exc}")
        raise typer.Exit(1) from None
    typer.echo(f"valid proof: {summary}")
