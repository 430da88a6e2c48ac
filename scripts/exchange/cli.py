"""`exchange`: the on-host tools, one command with subcommands."""

import os
from pathlib import Path
from typing import Annotated

import typer

from exchange import __version__
from exchange.policy import HOST_POLICY_PATH, POLICY_ENV, PolicyError, load_policy

app = typer.Typer(
    help="imaging-exchange: secure exchange of imaging studies over SFTP and the web.",
    no_args_is_help=True,
    add_completion=False,
)
policy_app = typer.Typer(help="Inspect the exchange policy.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")

PolicyOption = Annotated[
    Path | None,
    typer.Argument(help=f"Policy file (default: ${POLICY_ENV}, else {HOST_POLICY_PATH}).", show_default=False),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"exchange {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    pass


def _policy_or_exit(path: Path | None = None, status: int = 2):
    """The policy, or exit with `status` and one line per problem."""
    try:
        return load_policy(path)
    except PolicyError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(status) from None


@policy_app.command("check")
def policy_check(path: PolicyOption = None) -> None:
    """Validate a policy file; exit 1 with one line per problem."""
    loaded = _policy_or_exit(path, status=1)
    typer.echo(f"{loaded.path}: valid (sha256 {loaded.sha256})")


@policy_app.command("show")
def policy_show(path: PolicyOption = None) -> None:
    """Print the effective policy, defaults included, as JSON."""
    typer.echo(_policy_or_exit(path, status=1).policy.model_dump_json(indent=2))


@app.command()
def purge(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be deleted; change nothing.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="Print nothing but errors (for cron).")] = False,
) -> None:
    """Delete exchange files older than the retention, and accounts whose time is over.

    Every deletion is one JSON line in the audit log and syslog (and on stdout).
    """
    from exchange.purge import PurgeBusy, PurgeError
    from exchange.purge import purge as run_purge

    if os.geteuid() != 0:
        typer.echo("exchange purge must run as root: sudo exchange purge", err=True)
        raise typer.Exit(2)
    loaded = _policy_or_exit()
    try:
        report = run_purge(loaded.policy, dry_run=dry_run, out=(lambda line: None) if quiet else typer.echo)
    except PurgeBusy as busy:
        typer.echo(f"purge skipped: {busy}", err=True)
        return
    except PurgeError as error:
        typer.echo(f"purge failed: {error}", err=True)
        raise typer.Exit(1) from None
    if not quiet:
        verb = "would delete" if dry_run else "deleted"
        typer.echo(
            f"{verb} {report.files} files ({report.bytes} bytes), {report.directories} folders, "
            f"{report.accounts} accounts",
            err=True,
        )
    for note in report.skipped:
        typer.echo(f"skipped {note}", err=True)


@app.command("audit-read", hidden=True)
def audit_read(
    what: Annotated[str, typer.Argument(help="sshd | chage | stat | old-files | audit-log | sudoers")],
    argument: Annotated[str | None, typer.Argument(help="account name (sshd, chage) or path (stat)")] = None,
) -> None:
    """Run one read-only system command for the audit suite (auditors may sudo this only)."""
    from exchange.auditread import AuditReadError, run

    loaded = _policy_or_exit()
    try:
        result = run(loaded.policy, what, argument)
    except AuditReadError as error:
        typer.echo(f"audit-read refused: {error}", err=True)
        raise typer.Exit(2) from None
    typer.echo(result.stdout, nl=False)
    typer.echo(result.stderr, nl=False, err=True)
    raise typer.Exit(result.returncode)
