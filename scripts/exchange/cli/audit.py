"""`exchange audit-read`: the auditors' one sudo command."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from exchange import untrusted
from exchange.cli import base

app = base.ExchangeApp()  # its commands join the top level


@app.command("audit-read", hidden=True)
def audit_read(
    what: Annotated[
        str,
        typer.Argument(
            help="sshd | chage | password-status | stat | old-files | audit-log | sudo-rights | nginx | token-files"
            " | fail2ban | trail-files | trail-attributes | trail-verify"
        ),
    ],
    arguments: Annotated[
        list[str] | None,
        typer.Argument(
            help="account name (sshd, chage, password-status, sudo-rights), paths (stat: one or more), days "
            "(old-files), JAIL or JAIL:SETTING (fail2ban)"
        ),
    ] = None,
) -> None:
    """Run one read-only system command for the audit suite (auditors may sudo this only)."""
    from exchange.auditread import AuditReadError, refused_for, run
    from exchange.invoker import invoker

    loaded = base.policy_or_exit()
    who = invoker()
    try:
        if who and (refusal := refused_for(loaded.policy, who.name)):
            raise AuditReadError(refusal)
        result = run(loaded.policy, what, *(arguments or [None]))
    except AuditReadError as error:
        typer.echo(f"audit-read refused: {untrusted.printable_lines(error)}", err=True)
        raise typer.Exit(2) from None
    # The tools' own output as they wrote it, for the audit suite; on a terminal, with the names
    # recipients chose (file names) escaped, as `ls` does.
    for data, stream in ((result.stdout, sys.stdout), (result.stderr, sys.stderr)):
        if stream.isatty():
            stream.write(untrusted.printable_lines(data.decode("utf-8", "surrogateescape")))
        else:
            stream.flush()
            stream.buffer.write(data)
        stream.flush()
    raise typer.Exit(result.returncode)
