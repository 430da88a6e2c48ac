"""`exchange`: the on-host tools, one command with subcommands. Each module here holds the
commands of one concern; `base` what they share."""

from __future__ import annotations

from typing import Annotated

import typer

from exchange import __version__
from exchange.cli import audit, base, checks, imports, jobs, links, packages, pacs, partners, trail

app = base.ExchangeApp(
    help="imaging-exchange: secure exchange of imaging studies over SFTP and the web.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(checks.policy_app, name="policy")
app.add_typer(checks.site_app, name="site")
app.add_typer(links.link_app, name="link")
app.add_typer(partners.partner_app, name="partner")
app.add_typer(checks.portal_app, name="portal")
app.add_typer(pacs.pacs_app, name="pacs")
app.add_typer(trail.trail_app, name="trail")
for commands in (packages.app, jobs.app, audit.app, imports.app):
    app.registered_commands += commands.registered_commands


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
