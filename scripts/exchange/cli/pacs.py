"""`exchange pacs ...`: the PACS nodes of the site data, checked and queried."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from exchange.cli import base

pacs_app = base.ExchangeApp(help="The PACS nodes of the site data: list, echo, find.", no_args_is_help=True)


@pacs_app.command("list")
def pacs_list() -> None:
    """The PACS nodes the site data names, and the exchange's own AE title and retrieve port."""
    from exchange.pacs.network import describe

    dicom = base.tools("pacs list").site.dicom
    typer.echo(f"this exchange: AE title {dicom.ae_title}, retrieve port {dicom.retrieve_port}")
    if not dicom.pacs:
        typer.echo("no PACS nodes in the site data (site.dicom.pacs in the inventory)")
    for name, node in sorted(dicom.pacs.items()):
        default = "  (default)" if name == dicom.default_pacs or len(dicom.pacs) == 1 else ""
        typer.echo(f"  {describe(name, node)}, retrieve by C-{node.retrieve.upper()}{default}")


@pacs_app.command("echo")
def pacs_echo(name: Annotated[str, typer.Argument(help="The PACS node's name in the site data.")]) -> None:
    """C-ECHO: does the PACS answer, and does it know this exchange's AE title?"""
    from exchange.pacs.network import describe, echo

    dicom = base.tools("pacs echo").site.dicom
    name, node = dicom.node(name)
    started = time.monotonic()
    echo(name, node, dicom)
    typer.echo(f"{describe(name, node)}: C-ECHO ok ({(time.monotonic() - started) * 1000:.0f} ms)")


@pacs_app.command("find")
def pacs_find(
    accession: Annotated[str | None, typer.Option("--accession", help="The study's accession number.")] = None,
    study_uid: Annotated[str | None, typer.Option("--study-uid", help="The Study Instance UID.")] = None,
    patient_id: Annotated[str | None, typer.Option("--patient-id", help="The patient's ID in PACS.")] = None,
    date: Annotated[
        str | None, typer.Option("--date", help="With --patient-id: YYYY-MM-DD or YYYY-MM-DD..YYYY-MM-DD.")
    ] = None,
    pacs: Annotated[
        str | None, typer.Option("--pacs", help="The PACS node (default: the only or default one).")
    ] = None,
) -> None:
    """List the studies PACS has for an accession number, a study UID, or a patient (C-FIND);
    what `exchange package --accession ...` would retrieve."""
    from exchange import auditlog
    from exchange.pacs.fetch import match_line
    from exchange.pacs.network import describe
    from exchange.pacs.query import StudyQuery, find_studies

    dicom = base.tools("pacs find").site.dicom
    query = StudyQuery(accession=accession, study_uid=study_uid, patient_id=patient_id, date=date)
    name, node = dicom.node(pacs)
    matches = find_studies(name, node, dicom, query)
    # Who looked up which patients' studies: an access to patient data like any other.
    auditlog.record(
        "pacs-query", pacs=name, query=query.fields(), by=auditlog.actor(),
        studies=[m.study_uid for m in matches], patients=sorted({m.patient_id for m in matches}),
    )  # fmt: skip
    typer.echo(f"{describe(name, node)}: {len(matches)} studies match {query.shown()}")
    for match in matches:
        typer.echo(f"  {match_line(match)}")
