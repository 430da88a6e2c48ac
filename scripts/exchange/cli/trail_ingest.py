"""`exchange trail ingest`: bring the access trail up to date from the logs (cron runs it hourly
after the purge; the reports run it first). Registered in exchange.cli.trail."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from exchange import untrusted
from exchange.cli import base

if TYPE_CHECKING:
    from exchange.trail.ingest import Ingested


def ingest_command(quiet: base.Quiet = False) -> None:
    """Read the audit log, the SFTP log and sshd's logins from where the last run stopped into the trail."""
    from exchange.trail.ingest import ingest

    base.require_root("trail ingest")
    show(ingest(base.policy_or_exit().policy), quiet)


def show(result: Ingested, quiet: bool) -> None:
    """A line the trail does not believe is someone writing in another's name, an unreadable one
    may be a download whose line was cut (recorded for each of the account's packages): both said
    even with --quiet, so cron mails them. (The lines' own text came escaped from the ingest.)"""
    for line in result.distrusted:
        typer.echo(f"distrusted: {untrusted.printable(line, backslashes=False)}", err=True)
    for line in result.unreadable:
        typer.echo(f"unreadable: {untrusted.printable(line, backslashes=False)}", err=True)
    for gap in result.gaps:
        typer.echo(f"warning: {untrusted.printable(gap, backslashes=False)}", err=True)
    if result.problems > len(result.distrusted) + len(result.unreadable):
        typer.echo(f"... {result.problems} distrusted or unreadable lines in all", err=True)
    if not quiet:
        read = ", ".join(f"{log}.log {count} lines" for log, count in result.lines.items())
        web = f"; {result.web_sessions} SFTP sessions of the web page itself left out" if result.web_sessions else ""
        typer.echo(f"trail: {result.records} records from {read}{web}")
