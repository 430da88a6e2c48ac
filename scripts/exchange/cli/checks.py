"""`exchange policy|site|portal check`: validate a file, with the rights of whoever names it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from exchange import paths, untrusted
from exchange.cli import base
from exchange.policy import POLICY_ENV
from exchange.site import SITE_ENV

policy_app = base.ExchangeApp(help="Inspect the exchange policy.", no_args_is_help=True)
site_app = base.ExchangeApp(
    help="Inspect the site data (institution, contacts, message transports).", no_args_is_help=True
)
portal_app = base.ExchangeApp(help="The secure web page.", no_args_is_help=True)

PolicyOption = Annotated[
    Path | None,
    typer.Argument(help=f"Policy file (default: ${POLICY_ENV}, else {paths.POLICY}).", show_default=False),
]


@policy_app.command("check")
def policy_check(path: PolicyOption = None) -> None:
    """Validate a policy file; exit 1 with one line per problem."""
    loaded = base.policy_or_exit(path, status=1)
    typer.echo(f"{loaded.path}: valid (sha256 {loaded.sha256})")


@policy_app.command("show")
def policy_show(path: PolicyOption = None) -> None:
    """Print the effective policy, defaults included, as JSON."""
    typer.echo(base.policy_or_exit(path, status=1).policy.model_dump_json(indent=2))


@site_app.command("check")
def site_check(
    path: Annotated[Path | None, typer.Argument(help=f"Site file (default: ${SITE_ENV}, else {paths.SITE}).")] = None,
) -> None:
    """Validate a site file; exit 1 with one line per problem."""
    from exchange.invoker import invoker
    from exchange.site import SiteError, load_site

    who = invoker()
    try:
        # A named file with the rights of whoever runs sudo; the installed one (root only) as root,
        # but then its values stay out of the messages.
        load_site(path, who if path is not None else None, show_values=path is not None or who is None)
    except SiteError as error:
        raise base.fail(error) from None
    typer.echo(f"{path or os.environ.get(SITE_ENV) or paths.SITE}: valid")


@portal_app.command("check")
def portal_check(
    path: Annotated[Path | None, typer.Argument(help=f"The portal's file (default: {paths.PORTAL_CONFIG}).")] = None,
) -> None:
    """Validate the portal's file with the policy and its page templates; exit 1 naming the problem."""
    import jinja2

    from exchange.invoker import invoker, rights
    from exchange.policy import PolicyError
    from exchange.portal.app import Portal
    from exchange.portal.config import PortalConfigError, load_portal_config

    policy = base.policy_or_exit(status=1).policy
    # A file staff name, and every file it names (templates, host keys), is read with their rights.
    who = invoker() if path is not None else None
    try:
        with rights(who):
            Portal(load_portal_config(path), policy).check()
    except RecursionError:  # a templates folder nested thousands deep (jinja2 walks it recursively)
        raise base.fail(f"{path}: its templates folder is nested too deep to check") from None
    except (PortalConfigError, PolicyError, OSError, ValueError, jinja2.TemplateError) as error:
        raise base.fail(untrusted.printable_lines(error)) from None
    typer.echo(f"{path or 'portal configuration'}: valid")
