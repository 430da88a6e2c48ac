"""`exchange`: the on-host tools, one command with subcommands."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from exchange import __version__, paths, untrusted
from exchange.errors import ExchangeError
from exchange.policy import POLICY_ENV, Policy, PolicyError, load_policy
from exchange.site import SITE_ENV, Site

if TYPE_CHECKING:
    from exchange.messages import Messages


class ExchangeApp(typer.Typer):
    """Typer whose commands share one handler: an ExchangeError anywhere in a command ends it
    with its message, escaped, and its exit status; never a traceback."""

    def command(self, *args, **kwargs):
        register = super().command(*args, **kwargs)

        def decorator(function: Callable) -> Callable:
            @functools.wraps(function)
            def run(*call_args, **call_kwargs):
                try:
                    return function(*call_args, **call_kwargs)
                except ExchangeError as error:
                    raise _fail(error, error.status) from None

            register(run)
            return function

        return decorator


app = ExchangeApp(
    help="imaging-exchange: secure exchange of imaging studies over SFTP and the web.",
    no_args_is_help=True,
    add_completion=False,
)
policy_app = ExchangeApp(help="Inspect the exchange policy.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")
site_app = ExchangeApp(help="Inspect the site data (institution, contacts, message transports).", no_args_is_help=True)
app.add_typer(site_app, name="site")
link_app = ExchangeApp(help="One-time link accounts: link by e-mail, password by SMS.", no_args_is_help=True)
app.add_typer(link_app, name="link")
partner_app = ExchangeApp(help="Fixed partner accounts.", no_args_is_help=True)
app.add_typer(partner_app, name="partner")
portal_app = ExchangeApp(help="The secure web page.", no_args_is_help=True)
app.add_typer(portal_app, name="portal")

PolicyOption = Annotated[
    Path | None,
    typer.Argument(help=f"Policy file (default: ${POLICY_ENV}, else {paths.POLICY}).", show_default=False),
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
    """The policy, or exit with `status` and one line per problem. A file named on the command
    line is read with the rights of whoever runs `sudo exchange`."""
    from exchange.invoker import invoker

    try:
        return load_policy(path, invoker() if path is not None else None)
    except PolicyError as error:
        typer.echo(untrusted.printable_lines(error), err=True)
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


def _fail(message: object, status: int = 1) -> typer.Exit:
    # Messages quote what others named, escaped where it went in; no control character passes here either.
    typer.echo(untrusted.printable_lines(message), err=True)
    return typer.Exit(status)


def _require_root(command: str) -> None:
    if os.geteuid() != 0:
        raise _fail(f"exchange {command} must run as root: sudo exchange {command}", 2)


@dataclass(frozen=True)
class Tools:
    policy: Policy
    site: Site
    messages: Messages


def _tools(command: str) -> Tools:
    """Root, the policy, the site data and the message templates, or a clear exit."""
    from exchange.invoker import invoker
    from exchange.messages import Messages
    from exchange.site import load_site

    _require_root(command)
    policy = _policy_or_exit().policy
    site = load_site(show_values=invoker() is None)  # root-only: its values are not staff's to read
    return Tools(policy, site, Messages(site))


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

    policy = _policy_or_exit(status=1).policy
    # A file staff name, and every file it names (templates, host keys), is read with their rights.
    who = invoker() if path is not None else None
    try:
        with rights(who):
            Portal(load_portal_config(path), policy).check()
    except RecursionError:  # a templates folder nested thousands deep (jinja2 walks it recursively)
        raise _fail(f"{path}: its templates folder is nested too deep to check") from None
    except (PortalConfigError, PolicyError, OSError, ValueError, jinja2.TemplateError) as error:
        raise _fail(untrusted.printable_lines(error)) from None
    typer.echo(f"{path or 'portal configuration'}: valid")


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
        raise _fail(error) from None
    typer.echo(f"{path or os.environ.get(SITE_ENV) or paths.SITE}: valid")


ShowPassword = Annotated[
    bool,
    typer.Option("--show-password", help="Also print the password, once, to read it out on the phone. Never stored."),
]


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
    show_password: ShowPassword = False,
) -> None:
    """Create a link account, e-mail the link and text the password. Nothing is left if sending fails."""
    from exchange.links import Links, LinkStore, validate_request
    from exchange.messages import mask_email, mask_phone, when

    _require_root("link issue")
    policy = _policy_or_exit().policy
    request = validate_request(policy, email=email, phone=phone, lang=lang, note=note, days=days)
    tools = _tools("link issue")
    issued = Links(tools.policy, tools.site, tools.messages, LinkStore()).issue(request)
    record = issued.record
    typer.echo(f"issued {record.account}")
    typer.echo(f"  expires  {when(record.expires, 'en', tools.site.zone)}")
    typer.echo(f"  e-mail   link sent to {mask_email(record.email)}")
    typer.echo(f"  SMS      password sent to {mask_phone(record.phone)}")
    if show_password:
        typer.echo(f"  password {issued.password}   (read it out once; it is not stored anywhere)")


@link_app.command("list")
def link_list(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line, for scripts.")] = False,
) -> None:
    """Link accounts: recipient (masked), created, expires, files waiting, last login."""
    from exchange.links import LinkStore
    from exchange.linkstatus import link_rows

    tools = _tools("link list")
    store = LinkStore()
    rows = link_rows(tools.policy, store)
    for problem in store.unreadable():
        typer.echo(f"left out: {untrusted.printable_lines(problem)}", err=True)
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row, sort_keys=True))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table("account", "e-mail", "created", "expires", "download", "upload", "last login", "note", box=None)
    for row in rows:
        table.add_row(
            row["account"],
            row["email"],
            row["created"][:16].replace("T", " "),
            row["expires"][:16].replace("T", " "),
            str(row["download_files"]),
            str(row["upload_files"]),
            (row["last_login"] or "never")[:16].replace("T", " "),
            escape(untrusted.printable(row["note"])),
        )
    Console(width=200 if not sys.stdout.isatty() else None).print(table)
    typer.echo(f"{len(rows)} link accounts (times UTC)", err=True)


@link_app.command("resend")
def link_resend(
    account: Annotated[str, typer.Argument(help="The link account, e.g. link-k7m2p9qa.")],
    show_password: ShowPassword = False,
) -> None:
    """A new password by SMS (the old one stops working; the link stays)."""
    from exchange.links import Links, LinkStore
    from exchange.messages import MessageError, mask_phone
    from exchange.transports import DeliveryError

    tools = _tools("link resend")
    try:  # a CredentialError says itself whether the new password went out
        issued = Links(tools.policy, tools.site, tools.messages, LinkStore()).resend(account)
    except (DeliveryError, MessageError) as error:
        raise _fail(f"{error}\nthe previous password still works") from None
    typer.echo(f"new password for {account} sent to {mask_phone(issued.record.phone)}")
    if show_password:
        typer.echo(f"  password {issued.password}   (read it out once; it is not stored anywhere)")


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

    tools = _tools("link revoke")
    try:
        revoked = Links(tools.policy, tools.site, tools.messages, LinkStore()).revoke(account, discard_uploads)
    except (StepFailed, OSError) as error:
        raise _fail(
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


@partner_app.command("credentials")
def partner_credentials(
    name: Annotated[str, typer.Argument(help="The partner's account name (partner data).")],
    show_password: ShowPassword = False,
) -> None:
    """A fresh password by SMS, a notice by e-mail; the partner must change it at first login."""
    from exchange.messages import mask_email, mask_phone
    from exchange.partner_access import LockoutNotCleared, new_credentials
    from exchange.partners import load_partners

    tools = _tools("partner credentials")
    partners = {p.name: p for p in load_partners(paths.PARTNERS)}
    if name not in partners:
        raise _fail(f"{name}: not in the partner data ({paths.PARTNERS}); known: {', '.join(sorted(partners))}", 2)
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
        typer.echo(f"  password {issued.password}   (read it out once; it is not stored anywhere)")
    if not_cleared:
        raise _fail(not_cleared)


@app.command("package")
def package(
    to: Annotated[str, typer.Option("--to", help="The partner or link account whose download folder gets the zip.")],
    paths: Annotated[list[Path], typer.Argument(help="DICOM files, folders, or received media (a folder or zip).")],
    label: Annotated[str, typer.Option("--label", help="A title for the package and its file name.")] = "",
    viewer: Annotated[
        Path | None, typer.Option("--viewer", help="Viewer folder to include (default: the site's viewer_dir).")
    ] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="Refuse non-DICOM files and duplicates instead of skipping.")
    ] = False,
    allow_multiple_patients: Annotated[
        bool, typer.Option("--allow-multiple-patients", help="Allow images of more than one patient in one package.")
    ] = False,
) -> None:
    """Pack DICOM studies into one zip (DICOMDIR, viewer, README) in an account's download folder."""
    from exchange.dicom.package import download_folder, link_end, make_package
    from exchange.invoker import invoker

    tools = _tools("package")
    who = invoker()  # what staff name is read with their rights, the site's viewer folder with root's
    # A stop by SIGTERM unwinds like Ctrl-C, so the half-written package is removed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    folder = download_folder(tools.policy, to)
    viewer_who = who if viewer is not None else None
    viewer = viewer or (Path(tools.site.viewer_dir) if tools.site.viewer_dir else None)
    link_ends = link_end(to)
    with _progress() as progress:
        made = make_package(
            tools.policy, tools.messages, to, folder, paths, label=label, viewer=viewer, strict=strict,
            allow_multiple_patients=allow_multiple_patients, progress=progress, link_ends=link_ends,
            who=who, viewer_who=viewer_who,
        )  # fmt: skip
    for label_ in made.scan.not_dicom:
        typer.echo(f"skipped (not DICOM): {label_}", err=True)
    for line in made.scan.duplicates:
        typer.echo(f"skipped (duplicate): {line}", err=True)
    for line in made.tree.filled:
        typer.echo(f"filled: {untrusted.printable(line)}", err=True)
    studies = sum(len(p.studies) for p in made.tree.patients.values())
    typer.echo(f"packed {made.files} files of {studies} studies into {made.path} ({made.bytes} bytes)")
    typer.echo(f"  sha256 {made.sha256}")


@app.command("inspect")
def inspect(
    path: Annotated[Path, typer.Argument(help="Received media: a zip file or a folder.")],
    max_gb: Annotated[float, typer.Option("--max-gb", help="Refuse media that unpack to more than this.")] = 50,
    max_ratio: Annotated[int, typer.Option("--max-ratio", help="Refuse an entry that expands more than this.")] = 200,
) -> None:
    """Check received media before import: unsafe paths, zip bombs, DICOMDIR consistency. Exit 1 on problems."""
    from exchange.dicom.dicomdir import DicomDirError, build_tree, summary
    from exchange.dicom.media import inspect_media
    from exchange.invoker import invoker

    depth = _policy_or_exit().policy.accounts.max_folder_depth
    report = inspect_media(path, depth, invoker(), max_total=int(max_gb * 1024**3), max_ratio=max_ratio)
    shown = untrusted.printable
    typer.echo(f"{shown(path)}: {len(report.instances)} DICOM files, {report.total_bytes} bytes unpacked")
    try:
        patients = summary(build_tree(report.instances)) if report.instances else []
    except DicomDirError as error:
        report.problems.append(shown(error))
        patients = []
    for patient in patients:  # DICOM text is the sender's: shown escaped like the names
        typer.echo(f"  patient {shown(patient['id'])} {shown(patient['name'])}")
        for study in patient["studies"]:
            typer.echo(
                f"    {shown(study['date'])} {shown(study['modalities'])} {shown(study['description'])} "
                f"({study['series']} series, {study['images']} images)"
            )
    typer.echo(f"  DICOMDIR: {report.dicomdir or 'none'}")
    for name in report.not_dicom:
        typer.echo(f"  not DICOM: {name}")
    for problem in report.problems:
        typer.echo(f"  PROBLEM: {problem}", err=True)
    typer.echo("refused: do not import" if report.problems else "ok", err=bool(report.problems))
    if report.problems:
        raise typer.Exit(1)


@contextlib.contextmanager
def _progress():
    """A progress bar on a terminal, plain lines otherwise; yields progress(stage, done, total)."""
    if sys.stderr.isatty():
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn()) as bar:
            task = bar.add_task("reading headers", total=None)

            def update(stage: str, done: int, total: int) -> None:
                bar.update(task, description=stage, completed=done, total=total or None)

            yield update
        return
    last = {"stage": "", "percent": -10}

    def plain(stage: str, done: int, total: int) -> None:
        percent = int(100 * done / total) if total else 0
        if stage != last["stage"] or percent >= last["percent"] + 10:
            typer.echo(f"{stage}: {percent}%" if total else f"{stage} ...", err=True)
            last.update(stage=stage, percent=percent)

    yield plain


Quiet = Annotated[bool, typer.Option("--quiet", help="Print nothing but errors (for cron).")]


def _send_notices(command: str, send: Callable, what: str, quiet: bool) -> None:
    """Run a notice job (sent, failures); a failed notice is retried by the next run."""
    tools = _tools(command)
    sent, failures = send(tools.policy, tools.site, tools.messages, out=(lambda line: None) if quiet else typer.echo)
    for failure in failures:
        typer.echo(untrusted.printable_lines(failure), err=True)
    if not quiet:
        typer.echo(f"{sent} {what} sent", err=True)
    if failures:
        raise typer.Exit(1)


@app.command("notify-uploads")
def notify_uploads(quiet: Quiet = False) -> None:
    """E-mail the staff mailbox about new uploads: one notice per account, each file once."""
    from exchange.notices import notify_uploads as send

    _send_notices("notify-uploads", send, "upload notices", quiet)


@app.command("notify-expiring")
def notify_expiring(quiet: Quiet = False) -> None:
    """E-mail partners whose password expires within the policy's warning days: once a password."""
    from exchange.expiry_notices import notify_password_expiry as send

    _send_notices("notify-expiring", send, "password expiry notices", quiet)


@app.command()
def purge(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the steps the purge would take, as JSON lines; change nothing.")
    ] = False,
    quiet: Quiet = False,
) -> None:
    """Delete exchange files older than the retention, and accounts whose time is over.

    Every deletion is one JSON line in the audit log and syslog (and on stdout).
    """
    from exchange.purge import PurgeBusy, PurgeError
    from exchange.purge import purge as run_purge

    _require_root("purge")
    loaded = _policy_or_exit()
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


@app.command("audit-read", hidden=True)
def audit_read(
    what: Annotated[
        str,
        typer.Argument(
            help="sshd | chage | password-status | stat | old-files | audit-log | sudo-rights | nginx | token-files"
            " | fail2ban"
        ),
    ],
    argument: Annotated[
        str | None,
        typer.Argument(
            help="account name (sshd, chage, password-status, sudo-rights), path (stat), days (old-files), "
            "JAIL or JAIL:SETTING (fail2ban)"
        ),
    ] = None,
) -> None:
    """Run one read-only system command for the audit suite (auditors may sudo this only)."""
    from exchange.auditread import AuditReadError, refused_for, run
    from exchange.invoker import invoker

    loaded = _policy_or_exit()
    who = invoker()
    try:
        if who and (refusal := refused_for(loaded.policy, who.name)):
            raise AuditReadError(refusal)
        result = run(loaded.policy, what, argument)
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
