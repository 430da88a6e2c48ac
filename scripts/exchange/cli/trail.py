"""`exchange trail ...`: the access trail (NEN 7513): its reports, verify and ingest.

Auditors may sudo `trail patient|account|staff *` and `trail verify` (roles/auditor.py): so no
command here writes a file anyone names, and the reports print to stdout only.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Annotated

import typer

from exchange.cli import base
from exchange.cli.trail_ingest import ingest_command
from exchange.cli.trail_verify import verify_command

trail_app = base.ExchangeApp(
    help="The access trail: who saw which patient's images, when, from where.", no_args_is_help=True
)
trail_app.command("verify")(verify_command)
trail_app.command("ingest")(ingest_command)

Since = Annotated[
    str | None,
    typer.Option(
        "--since", help="From this day or minute on, in the site's time zone: YYYY-MM-DD or YYYY-MM-DDTHH:MM."
    ),
]
Until = Annotated[
    str | None,
    typer.Option("--until", help="Up to and including this day or minute: YYYY-MM-DD or YYYY-MM-DDTHH:MM."),
]
Format = Annotated[
    str, typer.Option("--format", help="table, json, csv, or html (a patient's overview in plain language).")
]
Lang = Annotated[str, typer.Option("--lang", help="With --format html: nl or en.")]


def _site():
    """The site data for its time zone and name; without site data (a server not yet given
    any) times are UTC. Broken site data is said, as every command says it."""
    from exchange import paths
    from exchange.invoker import invoker
    from exchange.site import SITE_ENV, load_site

    path = Path(os.environ.get(SITE_ENV) or paths.SITE)
    if not path.exists():
        return None
    return load_site(path, show_values=invoker() is None)


def _report(report: str, subject: str, since: str | None, until: str | None, form: str, lang: str) -> None:
    """Check the input, bring the trail up to date, ask it, record the read (also one that found
    nothing or failed), print."""
    from exchange.trail import reports

    base.require_root(f"trail {report}")
    if form not in reports.FORMATS:
        raise base.fail(f"--format {form}: one of {', '.join(reports.FORMATS)}", 2)
    if lang not in reports.LANGUAGES:
        raise base.fail(f"--lang {lang}: one of {', '.join(reports.LANGUAGES)}", 2)
    if form == "html" and report != "patient":
        raise base.fail("--format html is a patient's overview: exchange trail patient ID --format html", 2)
    policy = base.policy_or_exit().policy
    site = _site()
    zone = site.zone if site else datetime.UTC
    query = reports.Query(
        report,
        subject,
        reports.parse_moment("--since", since, zone) if since else None,
        reports.parse_moment("--until", until, zone, until=True) if until else None,
    )
    # A read is on record whatever it found (NEN 7513: nothing found is an answer too, to
    # someone probing whether a patient's images were ever exchanged), and if it fails to render.
    records: list = []
    try:
        records = reports.read(query, policy)
        text = reports.render(records, query, form, zone, lang, site)
    finally:
        reports.record_read(query, form, len(records))
    typer.echo(text, nl=False)
    if form == "table":
        typer.echo(f"{len(records)} records (times {zone})", err=True)


@trail_app.command("patient")
def trail_patient(
    patient_id: Annotated[str, typer.Argument(help="The patient ID, as in the images (DICOM PatientID).")],
    since: Since = None,
    until: Until = None,
    form: Format = "table",
    lang: Lang = "nl",
) -> None:
    """Every access to one patient's images: packed, sent, downloaded, viewed, removed; by whom, from where."""
    _report("patient", patient_id, since, until, form, lang)


@trail_app.command("account")
def trail_account(
    account: Annotated[str, typer.Argument(help="The partner or link account, e.g. link-k7m2p9qa.")],
    since: Since = None,
    until: Until = None,
    form: Format = "table",
) -> None:
    """Everything on record of one partner or link account: logins, downloads, uploads, its links."""
    _report("account", account, since, until, form, "nl")


@trail_app.command("staff")
def trail_staff(
    name: Annotated[str, typer.Argument(help="The staff member's login, as sudo names them.")],
    since: Since = None,
    until: Until = None,
    form: Format = "table",
) -> None:
    """Everything one staff member did that touched patient data: packages, links, imports, reads."""
    _report("staff", name, since, until, form, "nl")
