"""The hourly jobs (cron runs them as root): purge, password aging and the notices."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import typer

from exchange import untrusted
from exchange.cli import base

app = base.ExchangeApp()  # its commands join the top level


def _send_notices(command: str, send: Callable, what: str, quiet: bool) -> None:
    """Run a notice job (sent, failures); a failed notice is retried by the next run."""
    tools = base.tools(command)
    sent, failures = send(tools.policy, tools.site, tools.messages, out=(lambda line: None) if quiet else typer.echo)
    for failure in failures:
        typer.echo(untrusted.printable_lines(failure), err=True)
    if not quiet:
        typer.echo(f"{sent} {what} sent", err=True)
    if failures:
        raise typer.Exit(1)


@app.command("notify-uploads")
def notify_uploads(quiet: base.Quiet = False) -> None:
    """E-mail the staff mailbox about new uploads: one notice per account, each file once."""
    from exchange.messaging.notices import notify_uploads as send

    _send_notices("notify-uploads", send, "upload notices", quiet)


@app.command("notify-expiring")
def notify_expiring(quiet: base.Quiet = False) -> None:
    """E-mail partners whose password expires within the policy's warning days: once a password."""
    from exchange.messaging.expiry_notices import notify_password_expiry as send

    _send_notices("notify-expiring", send, "password expiry notices", quiet)


@app.command("notify-delivery")
def notify_delivery(quiet: base.Quiet = False) -> None:
    """After bringing the access trail up to date: e-mail staff once when a link's packages were all
    downloaded (if asked) or it ended with some never downloaded, and its recipient one reminder
    before it ends."""
    from exchange.messaging.delivery_notices import notify_delivery as notify
    from exchange.trail.delivery import bring_up_to_date
    from exchange.trail.store import Trail

    def send(policy, site, messages, out):
        trail = Trail()
        try:
            bring_up_to_date(policy, trail)
        except OSError as error:  # a follow-up on a trail behind the logs could be wrong: none
            raise base.fail(
                f"no delivery follow-ups: the trail is not up to date: {untrusted.printable(error)}"
            ) from None
        return notify(policy, site, messages, out=out, trail=trail)

    _send_notices("notify-delivery", send, "delivery reminders and notices", quiet)


@app.command("password-aging")
def password_aging(quiet: base.Quiet = False) -> None:
    """Give every partner's password the policy's aging, and a partner without one none, as the
    deploy does: for a password set by hand since (chpasswd). Each change is an audit record."""
    from exchange.accounts import converge_password_aging

    base.require_root("password-aging")
    changed, failed = converge_password_aging(base.policy_or_exit().policy)
    if not quiet:
        for name in changed:
            typer.echo(f"{name}: password aging set")
    for failure in failed:
        typer.echo(untrusted.printable_lines(failure), err=True)
    if failed:
        raise typer.Exit(1)


@app.command()
def purge(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the steps the purge would take, as JSON lines; change nothing.")
    ] = False,
    quiet: base.Quiet = False,
) -> None:
    """Delete exchange files older than the retention, and accounts whose time is over.

    Every deletion is one JSON line in the audit log and syslog (and on stdout).
    """
    from exchange.purge import PurgeBusy, PurgeError
    from exchange.purge import purge as run_purge

    base.require_root("purge")
    loaded = base.policy_or_exit()
    try:
        report = run_purge(loaded.policy, dry_run=dry_run, out=(lambda line: None) if quiet else typer.echo)
    except PurgeBusy as busy:
        typer.echo(f"purge skipped: {busy}", err=True)
        return
    except PurgeError as error:
        typer.echo(f"purge failed: {untrusted.printable_lines(error)}", err=True)
        raise typer.Exit(1) from None
    if not quiet:
        verb = "would delete" if dry_run else "deleted"
        typer.echo(
            f"{verb} {report.files} files ({report.bytes} bytes), {report.directories} folders, "
            f"{report.accounts} accounts",
            err=True,
        )
        years = loaded.policy.audit.retention_years
        if report.trail_removed:
            typer.echo(
                f"{verb} access trail months {', '.join(report.trail_removed)} (older than {years} years)", err=True
            )
        if report.trail_compressed:
            typer.echo(
                f"{'would compress' if dry_run else 'compressed'} access trail months "
                f"{', '.join(report.trail_compressed)}",
                err=True,
            )
    for note in report.skipped:
        typer.echo(f"skipped {untrusted.printable_lines(note)}", err=True)
    if not quiet:
        for name in report.kept:
            typer.echo(
                f"kept {name}: locked, but not by the partner data (a lock by hand, or no partner data on this "
                "server); not removed",
                err=True,
            )
        for note in report.changed:
            typer.echo(f"left for the next run, changed meanwhile: {untrusted.printable_lines(note)}", err=True)
    for note in report.failed:
        typer.echo(untrusted.printable_lines(note), err=True)
    if report.failed:
        raise typer.Exit(1)
