"""`exchange package` and `exchange inspect`: study packages out, received media checked."""

from __future__ import annotations

import contextlib
import functools
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from exchange import untrusted
from exchange.cli import base

app = base.ExchangeApp()  # its commands join the top level


@app.command("package")
def package(
    to: Annotated[str, typer.Option("--to", help="The partner or link account whose download folder gets the zip.")],
    paths: Annotated[
        list[Path] | None,
        typer.Argument(
            help="DICOM files, folders, or received media (a folder or zip); or a study in PACS: --accession."
        ),
    ] = None,
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
    accession: Annotated[
        str | None, typer.Option("--accession", help="Retrieve the study of this accession number from PACS.")
    ] = None,
    study_uid: Annotated[
        str | None, typer.Option("--study-uid", help="Retrieve the study of this Study Instance UID from PACS.")
    ] = None,
    patient_id: Annotated[
        str | None, typer.Option("--patient-id", help="Retrieve this patient's studies from PACS (with --date).")
    ] = None,
    date: Annotated[
        str | None, typer.Option("--date", help="With --patient-id: YYYY-MM-DD or YYYY-MM-DD..YYYY-MM-DD.")
    ] = None,
    pacs: Annotated[
        str | None, typer.Option("--pacs", help="The PACS node of the site data (default: the only or default one).")
    ] = None,
    take_all: Annotated[
        bool, typer.Option("--all", help="Retrieve every study that matches, into one package.")
    ] = False,
) -> None:
    """Pack DICOM studies into one zip (DICOMDIR, viewer, README) in an account's download folder:
    files and folders named here, or a study retrieved from PACS (--accession, --study-uid, or
    --patient-id with --date; several matches are listed and refused unless --study-uid or --all)."""
    from exchange.dicom.package import download_folder, link_end, make_package
    from exchange.invoker import invoker

    from_pacs = any(option is not None for option in (accession, study_uid, patient_id, date, pacs)) or take_all
    if from_pacs and paths:
        raise base.fail("name DICOM files or a study in PACS (--accession ...), not both; nothing was packaged", 2)
    if not from_pacs and not paths:
        raise base.fail("name the DICOM files or folders to pack, or a study in PACS (--accession A123, ...)", 2)
    tools = base.tools("package")
    who = invoker()  # what staff name is read with their rights, the site's viewer folder with root's
    # A stop by SIGTERM unwinds like Ctrl-C, so the half-written package (and a retrieve) is removed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    folder = download_folder(tools.policy, to)
    viewer_who = who if viewer is not None else None
    viewer = viewer or (Path(tools.site.viewer_dir) if tools.site.viewer_dir else None)
    link_ends = link_end(to)
    with _progress() as progress:

        def pack(sources: list[Path], sources_who):
            return make_package(
                tools.policy, tools.messages, to, folder, sources, label=label, viewer=viewer, strict=strict,
                allow_multiple_patients=allow_multiple_patients, progress=progress, link_ends=link_ends,
                who=sources_who, viewer_who=viewer_who,
            )  # fmt: skip

        if from_pacs:
            from exchange.pacs.query import StudyQuery

            query = StudyQuery(accession=accession, study_uid=study_uid, patient_id=patient_id, date=date)
            made = _from_pacs(tools, to, query, pacs, take_all, progress, pack)
        else:
            made = pack(paths, who)
    for label_ in made.scan.not_dicom:
        typer.echo(f"skipped (not DICOM): {label_}", err=True)
    for line in made.scan.duplicates:
        typer.echo(f"skipped (duplicate): {line}", err=True)
    for line in made.tree.filled:
        typer.echo(f"filled: {untrusted.printable(line)}", err=True)
    studies = sum(len(p.studies) for p in made.tree.patients.values())
    typer.echo(f"packed {made.files} files of {studies} studies into {made.path} ({made.bytes} bytes)")
    typer.echo(f"  sha256 {made.sha256}")


def _from_pacs(tools: base.Tools, to: str, query, pacs: str | None, take_all: bool, progress, pack):
    """Find, list, retrieve into root's workspace and pack; the one audit line says how it ended."""
    from exchange.layout import Layout
    from exchange.pacs import fetch

    dicom = tools.site.dicom
    say = functools.partial(typer.echo, err=True)
    name, matches = fetch.studies_to_retrieve(dicom, pacs, query, take_all, say)
    got = []
    try:
        with fetch.retrieved(Layout(tools.policy), dicom, name, matches, progress, say) as (path, got):
            made = pack([path], None)  # root's own folder: read with root's rights
    except BaseException as error:  # refused, failed, Ctrl-C or SIGTERM: the trail says so too
        outcome = "interrupted" if isinstance(error, KeyboardInterrupt | SystemExit) else "failed"
        fetch.audit_retrieve(dicom, name, query, to, matches, got, outcome, untrusted.printable(error))
        raise
    fetch.audit_retrieve(dicom, name, query, to, matches, got, "packaged", str(made.path))
    return made


@app.command("inspect")
def inspect(
    path: Annotated[Path, typer.Argument(help="Received media: a zip file or a folder.")],
    max_gb: Annotated[float, typer.Option("--max-gb", help="Refuse media that unpack to more than this.")] = 50,
    max_ratio: Annotated[int, typer.Option("--max-ratio", help="Refuse an entry that expands more than this.")] = 200,
    contact_sheet: Annotated[
        Path | None,
        typer.Option(
            "--contact-sheet",
            help="Also write a JPEG (a new .jpg file, made with your rights) with one picture per series.",
        ),
    ] = None,
) -> None:
    """Check received media before import: unsafe paths, zip bombs, DICOMDIR consistency. Exit 1 on problems.

    With --contact-sheet, also draw one picture of every series into a new JPEG file: also when
    the check finds problems (the sheet then says "do not import"), but never for media refused
    as a zip bomb, which are not read any further.
    """
    from exchange.dicom.dicomdir import DicomDirError, build_tree, summary
    from exchange.dicom.media import inspect_media
    from exchange.invoker import NewNamedFile, invoker

    depth = base.policy_or_exit().policy.accounts.max_folder_depth
    who = invoker()
    shown = untrusted.printable
    made = False
    with contextlib.ExitStack() as keep:
        sheet_file = None
        if contact_sheet is not None:
            if contact_sheet.suffix.lower() not in (".jpg", ".jpeg"):
                raise base.fail(f"--contact-sheet {shown(contact_sheet)}: the sheet is a JPEG: name a .jpg file", 2)
            try:  # before anything is read: a name that cannot be written is said at once
                sheet_file = keep.enter_context(NewNamedFile(contact_sheet, who))
            except OSError as error:
                raise base.fail(
                    f"--contact-sheet {shown(error.filename)}: {error.strerror}; nothing was read", 2
                ) from None
        report = inspect_media(
            path, depth, who, max_total=int(max_gb * 1024**3), max_ratio=max_ratio, keep=keep if sheet_file else None
        )
        typer.echo(f"{shown(path)}: {len(report.instances)} DICOM files, {report.total_bytes} bytes unpacked")
        tree = None
        try:
            tree = build_tree(report.instances) if report.instances else None
        except DicomDirError as error:
            report.problems.append(shown(error))
        for patient in summary(tree) if tree else []:  # DICOM text is the sender's: shown escaped like the names
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
        if sheet_file is not None:
            made = _contact_sheet(sheet_file, report, tree, path, who)
        typer.echo("refused: do not import" if report.problems else "ok", err=bool(report.problems))
    if report.problems or (sheet_file is not None and not made):
        raise typer.Exit(1)


def _contact_sheet(sheet_file, report, tree, path: Path, who) -> bool:
    """Draw and write the contact sheet, or say why not; True if it was written."""
    from exchange.dicom import contactsheet

    shown = untrusted.printable
    if report.bomb:
        why = "the media were refused by the caps (a zip bomb?) and are not read any further"
    elif tree is None:
        why = "no DICOM images to show" if not report.problems else "no DICOM images could be read"
    else:
        try:
            sheet = contactsheet.make(tree, str(path), report.descriptors, who, problems=len(report.problems))
            sheet_file.write(sheet.jpeg)
        except contactsheet.SheetError as error:
            why = str(error)
        except OSError as error:
            why = f"not written: {shown(error.strerror)}"
        else:
            detail = f"{len(sheet.tiles)} of {sheet.series} series" if sheet.more else f"{sheet.series} series"
            failed = f", {sheet.unrendered} without a picture" if sheet.unrendered else ""
            typer.echo(f"  contact sheet: {shown(sheet_file.path)} ({detail}{failed})")
            return True
    typer.echo(f"  contact sheet not made ({shown(sheet_file.path)}): {why}; nothing was left", err=True)
    return False


@contextlib.contextmanager
def _progress():
    """A progress bar on a terminal, plain lines otherwise; yields progress(stage, done, total)."""
    if sys.stderr.isatty():
        from rich.filesize import decimal
        from rich.progress import BarColumn, Progress, TextColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[amount]}")) as bar:
            task = bar.add_task("reading headers", total=None, amount="")

            def update(stage: str, done: int, total: int) -> None:
                # Packing counts bytes; previews and a retrieve from PACS count images.
                amount = f"{decimal(done)} of {decimal(total)}" if stage == "packing" else f"{done} of {total}"
                bar.update(task, description=stage, completed=done, total=total or None, amount=amount if total else "")

            yield update
        return
    last = {"stage": "", "percent": -10}

    def plain(stage: str, done: int, total: int) -> None:
        percent = int(100 * done / total) if total else 0
        if stage != last["stage"] or percent >= last["percent"] + 10:
            typer.echo(f"{stage}: {percent}%" if total else f"{stage} ...", err=True)
            last.update(stage=stage, percent=percent)

    yield plain
