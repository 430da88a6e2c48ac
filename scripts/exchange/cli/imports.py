"""`exchange import`: a received upload into PACS (exchange.pacs.importing)."""

from __future__ import annotations

import functools
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from exchange.cli import base

app = base.ExchangeApp()  # its commands join the top level


@app.command("import")
def import_upload(
    path: Annotated[Path, typer.Argument(help="The received upload: a zip file or a folder.")],
    to_pacs: Annotated[str, typer.Option("--to-pacs", help="The PACS node of the site data to store it into.")],
    patient_id: Annotated[
        str | None,
        typer.Option(
            "--patient-id",
            help="File it under this local patient ID (reconciliation: names and birth date checked against the PACS).",
        ),
    ] = None,
    force_reconcile: Annotated[
        bool,
        typer.Option("--force-reconcile", help="With --patient-id: file it even if name or birth date differ."),
    ] = False,
) -> None:
    """Store a received upload (zip or folder) into PACS: inspected first (refused on any problem,
    nothing sent), optionally filed under a local patient ID, every instance sent by C-STORE with
    its status (those the PACS holds already are not sent again); when all are in the PACS, the
    upload moves to the tree's imported/ folder. Exit 1 if any instance is not stored."""
    from exchange.cli.packages import _progress
    from exchange.invoker import invoker
    from exchange.layout import Layout
    from exchange.pacs.importing import import_upload as run_import
    from exchange.pacs.network import describe
    from exchange.site import SiteError

    if force_reconcile and patient_id is None:
        raise base.fail("--force-reconcile goes with --patient-id; nothing was sent", 2)
    tools = base.tools("import")
    dicom = tools.site.dicom
    try:  # an unknown node is said before anything is read
        name, node = dicom.node(to_pacs)
    except SiteError as error:
        raise base.fail(str(error).replace("--pacs", "--to-pacs", 1), error.status) from None
    # A stop by SIGTERM unwinds like Ctrl-C: the audit line says so, nothing is moved.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    say = functools.partial(typer.echo, err=True)
    with _progress() as progress:
        done = run_import(
            Layout(tools.policy), dicom, path, name, invoker(), patient_id, force_reconcile, say, progress
        )
    warned = sum(done.warnings.values())
    typer.echo(
        f"imported {done.path} into {describe(name, node)}: {done.instances} instances of {len(done.studies)} "
        f"studies, {done.stored} stored now{f' ({warned} with a warning)' if warned else ''}, "
        f"{done.duplicates} there before"
    )
