"""`exchange package --accession ...`: which studies the PACS has for what staff named, the
choice among several, the retrieve into root's workspace, and the one audit line of it."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

from exchange import auditlog, untrusted
from exchange.errors import REFUSED
from exchange.layout import Layout
from exchange.pacs import workspace
from exchange.pacs.network import PacsError, describe
from exchange.pacs.query import StudyMatch, StudyQuery, find_studies
from exchange.pacs.retrieve import Retrieved, retrieve_studies
from exchange.site import Dicom


def match_line(match: StudyMatch) -> str:
    """One study as staff see it: the PACS's text, escaped for the terminal."""
    shown = untrusted.printable
    date = match.study_date
    date = f"{date[:4]}-{date[4:6]}-{date[6:]}" if len(date) == 8 and date.isdigit() else shown(date or "no date")
    images = f"{match.instances} images" if match.instances is not None else "image count unknown"
    series = f"{match.series} series, " if match.series is not None else ""
    return (
        f"{date}  {shown(match.modalities or '-')}  {shown(match.description or '(no description)')}  "
        f"({series}{images})  patient {shown(match.patient_id)} {shown(match.patient_name)}  "
        f"accession {shown(match.accession or '-')}  study {shown(match.study_uid)}"
    )


def studies_to_retrieve(
    dicom: Dicom, pacs: str | None, query: StudyQuery, take_all: bool, say: Callable[[str], None]
) -> tuple[str, list[StudyMatch]]:
    """The node's name and the studies to retrieve: what matched, listed; several only with --all."""
    name, node = dicom.node(pacs)
    matches = find_studies(name, node, dicom, query)
    if not matches:
        raise PacsError(
            f"{describe(name, node)}: no study matches {query.shown()}; nothing was packaged", status=REFUSED
        )
    say(f"{describe(name, node)}: {len(matches)} {'study matches' if len(matches) == 1 else 'studies match'} "
        f"{query.shown()}:")  # fmt: skip
    for match in matches:
        say(f"  {match_line(match)}")
    if len(matches) > 1 and not take_all:
        raise PacsError(
            f"{len(matches)} studies match {query.shown()}: choose one with --study-uid, or take them all with --all; "
            "nothing was retrieved",
            status=REFUSED,
        )
    return name, matches


@contextlib.contextmanager
def retrieved(
    layout: Layout,
    dicom: Dicom,
    name: str,
    matches: list[StudyMatch],
    progress: Callable[[str, int, int], None],
    say: Callable[[str], None],
) -> Iterator[tuple[Path, list[Retrieved]]]:
    """The studies retrieved into root's workspace, which is gone again when this ends."""

    def study_progress(number: int, done: int, total: int) -> None:
        progress("retrieving from PACS" + (f" ({number} of {len(matches)})" if len(matches) > 1 else ""), done, total)

    with workspace.retrieve_folder(layout, say) as (path, folder):
        yield path, retrieve_studies(name, dicom.pacs[name], dicom, matches, folder, study_progress)


def audit_retrieve(
    dicom: Dicom, name: str, query: StudyQuery, account: str, matches: list[StudyMatch], got: list[Retrieved],
    outcome: str, detail: str = "",
) -> None:  # fmt: skip
    node = dicom.pacs[name]
    auditlog.record(
        "pacs-retrieve",
        pacs=name,
        pacs_ae=node.ae_title,
        method=node.retrieve,
        query=query.fields(),
        account=account,
        by=auditlog.actor(),
        studies=[match.study_uid for match in matches],
        patients=sorted({match.patient_id for match in matches}),
        instances=sum(one.instances for one in got),
        bytes=sum(one.bytes for one in got),
        outcome=outcome,
        **({"detail": detail} if detail else {}),
    )
