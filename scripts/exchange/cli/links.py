"""`exchange link ...`: one-time link accounts."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from exchange import untrusted
from exchange.cli import base

link_app = base.ExchangeApp(help="One-time link accounts: link by e-mail, password by SMS.", no_args_is_help=True)


@link_app.command("issue")
def link_issue(
    email: Annotated[str, typer.Option("--email", help="The recipient's e-mail address: gets the link.")],
    phone: Annotated[
        str, typer.Option("--phone", help="The recipient's mobile number, E.164 (+31612345678): gets the password.")
    ],
    lang: Annotated[str, typer.Option("--lang", help="Language of the messages: nl or en.")] = "nl",
    note: Annotated[str, typer.Option("--note", help="A note for staff (list, upload notices); never sent.")] = "",
    days: Annotated[
        int | None, typer.Option("--days", help="Validity in days (default and maximum: the policy's).")
    ] = None,
    notify_downloaded: Annotated[
        bool,
        typer.Option(
            "--notify-downloaded", help="E-mail the staff mailbox once all the link's packages were downloaded."
        ),
    ] = False,
    show_password: base.ShowPassword = False,
) -> None:
    """Create a link account, e-mail the link and text the password. Nothing is left if sending fails."""
    from exchange.links import Links, LinkStore, validate_request
    from exchange.messaging.messages import mask_email, mask_phone, when

    base.require_root("link issue")
    policy = base.policy_or_exit().policy
    request = validate_request(
        policy, email=email, phone=phone, lang=lang, note=note, days=days, notify_downloaded=notify_downloaded
    )
    tools = base.tools("link issue")
    issued = Links(tools.policy, tools.site, tools.messages, LinkStore()).issue(request)
    record = issued.record
    typer.echo(f"issued {record.account}")
    typer.echo(f"  expires  {when(record.expires, 'en', tools.site.zone)}")
    typer.echo(f"  e-mail   link sent to {mask_email(record.email)}")
    typer.echo(f"  SMS      password sent to {mask_phone(record.phone)}")
    if record.notify_downloaded:
        typer.echo(f"  notice   to {tools.site.staff_mailbox} once all its packages were downloaded")
    if show_password:
        base.show_password(issued.password)


@link_app.command("list")
def link_list(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line, for scripts.")] = False,
) -> None:
    """Link accounts: recipient (masked), created, expires, files waiting, last login, and each
    package: downloaded completely or not, when, from where (the access trail, brought up to date)."""
    from exchange.errors import ExchangeError
    from exchange.links import LinkStore
    from exchange.linkstatus import link_rows
    from exchange.trail.delivery import bring_up_to_date
    from exchange.trail.store import Trail

    tools = base.tools("link list")
    store, trail = LinkStore(), Trail()
    try:
        bring_up_to_date(tools.policy, trail)
    except (ExchangeError, OSError) as error:  # the list still answers, and says what it may lack
        typer.echo(f"the trail is not up to date, downloads may be missing: {untrusted.printable(error)}", err=True)
    rows = link_rows(tools.policy, store, trail)
    for problem in store.unreadable():
        typer.echo(f"left out: {untrusted.printable_lines(problem)}", err=True)
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row, sort_keys=True))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(
        "account", "e-mail", "created", "expires", "download", "upload", "last login", "packages", "note", box=None
    )
    for row in rows:
        table.add_row(
            row["account"],
            row["email"],
            row["created"][:16].replace("T", " "),
            row["expires"][:16].replace("T", " "),
            str(row["download_files"]),
            str(row["upload_files"]),
            (row["last_login"] or "never")[:16].replace("T", " "),
            "\n".join(escape(_package_line(package)) for package in row["packages"]) or "none",
            escape(untrusted.printable(row["note"])),
        )
    Console(width=200 if not sys.stdout.isatty() else None).print(table)
    typer.echo(f"{len(rows)} link accounts (times UTC)", err=True)


def _package_line(package: dict) -> str:
    """One package of `link list`: "CT-thorax.zip: downloaded 2026-12-04 10:12 from 192.0.2.7 (web)"."""
    name = untrusted.printable(package["package"])
    if not package["tries"]:
        return f"{name}: not downloaded"
    state = "downloaded" if package["downloaded"] else f"partly ({package['percent']}%)"
    when = package["when"][:16].replace("T", " ")
    return f"{name}: {state} {when} from {untrusted.printable(package['from'])}"


@link_app.command("resend")
def link_resend(
    account: Annotated[str, typer.Argument(help="The link account, e.g. link-k7m2p9qa.")],
    show_password: base.ShowPassword = False,
) -> None:
    """A new password by SMS (the old one stops working; the link stays)."""
    from exchange.links import Links, LinkStore
    from exchange.messaging.messages import MessageError, mask_phone
    from exchange.messaging.transports import DeliveryError

    tools = base.tools("link resend")
    try:  # a CredentialError says itself whether the new password went out
        issued = Links(tools.policy, tools.site, tools.messages, LinkStore()).resend(account)
    except (DeliveryError, MessageError) as error:
        raise base.fail(f"{error}\nthe previous password still works") from None
    typer.echo(f"new password for {account} sent to {mask_phone(issued.record.phone)}")
    if show_password:
        base.show_password(issued.password)


@link_app.command("revoke")
def link_revoke(
    account: Annotated[str, typer.Argument(help="The link account, e.g. link-k7m2p9qa.")],
    discard_uploads: Annotated[
        bool, typer.Option("--discard-uploads", help="Delete its uploads too, instead of keeping them for staff.")
    ] = False,
) -> None:
    """End the account's sessions and remove it with its link; its uploads are kept for staff."""
    from exchange.accounts import StepFailed
    from exchange.links import Links, LinkStore

    tools = base.tools("link revoke")
    try:
        revoked = Links(tools.policy, tools.site, tools.messages, LinkStore()).revoke(account, discard_uploads)
    except (StepFailed, OSError) as error:
        raise base.fail(
            f"{account}: not revoked: {error}\nthe account is locked and still there with its files; try again, or "
            "remove its uploads with it: exchange link revoke --discard-uploads"
        ) from None
    record, kept = revoked.record, revoked.kept
    who = f" ({record.recipient})" if record else " (its record was unreadable)"
    typer.echo(f"revoked {account}{who}: sessions ended, account and link removed")
    if kept.files:
        typer.echo(f"  {kept.files} uploads kept for staff in {kept.folder} (the next upload notice lists them)")
    for problem in kept.problems:
        typer.echo(f"  {problem}", err=True)
