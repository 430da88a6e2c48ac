"""`exchange partner ...`: fixed partner accounts."""

from __future__ import annotations

from typing import Annotated

import typer

from exchange import paths
from exchange.cli import base

partner_app = base.ExchangeApp(help="Fixed partner accounts.", no_args_is_help=True)


@partner_app.command("credentials")
def partner_credentials(
    name: Annotated[str, typer.Argument(help="The partner's account name (partner data).")],
    show_password: base.ShowPassword = False,
) -> None:
    """A fresh password by SMS, a notice by e-mail; the partner must change it at first login."""
    from exchange.messaging.messages import mask_email, mask_phone
    from exchange.partner_access import LockoutNotCleared, new_credentials
    from exchange.partners import load_partners

    tools = base.tools("partner credentials")
    partners = {p.name: p for p in load_partners(paths.PARTNERS)}
    if name not in partners:
        raise base.fail(f"{name}: not in the partner data ({paths.PARTNERS}); known: {', '.join(sorted(partners))}", 2)
    not_cleared = None
    try:
        issued = new_credentials(tools.policy, tools.site, tools.messages, partners[name])
    except LockoutNotCleared as error:
        issued, not_cleared = error.issued, error  # sent: say so, then fail
    partner = issued.partner
    typer.echo(
        f"new password for {name}: notice to {mask_email(partner.email)}, password to {mask_phone(partner.phone)}"
    )
    typer.echo("  the partner must choose a new password at the first login")
    if show_password:
        base.show_password(issued.password)
    if not_cleared:
        raise base.fail(not_cleared)
