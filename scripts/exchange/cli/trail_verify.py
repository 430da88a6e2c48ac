"""`exchange trail verify`: check the access trail's hash chain and say where it breaks.
Registered in exchange.cli.trail; auditors may sudo it (the control TRAIL-02 runs it)."""

from __future__ import annotations

import typer

from exchange import auditlog, paths, untrusted
from exchange.cli import base


def verify_command() -> None:
    """Read every month of the access trail and check each record's hash chain: exit 1 naming each break."""
    from exchange.trail.store import Trail

    base.require_root("trail verify")
    verified = Trail(paths.TRAIL_DIR, paths.TOOL_RUN_DIR).verify()
    auditlog.record("trail-verified", by=auditlog.actor(), records=verified.records, breaks=len(verified.breaks))
    months = len(verified.months)
    span = f" (first {verified.months[0]}, last {verified.months[-1]})" if verified.months else ""
    summary = f"{verified.records} records in {months} {'month' if months == 1 else 'months'}{span}"
    if verified.intact:
        typer.echo(f"intact: {summary}")
        return
    breaks = len(verified.breaks)
    typer.echo(f"broken: {summary}, {breaks} {'break' if breaks == 1 else 'breaks'}")
    for found in verified.breaks:
        where = f"{found.file} line {found.line}" if found.line else found.file  # line 0: the file as a whole
        typer.echo(untrusted.printable(f"{where}: {found.problem}"))
    raise typer.Exit(1)
