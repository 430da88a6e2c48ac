"""Benchmark: a study from PACS into a package, against the two ways a site has without the
exchange, same study, same PACS, same run.

The PACS is Debian's Orthanc (tests/pacs.py) on loopback, loaded by dcmtk's `storescu` with a
synthetic uncompressed CT study of `--gb` (tests/dicom_synth.py). Each round runs, in turn:

  ours      the exchange's own path of `exchange package --accession`: C-FIND, C-MOVE to its
            storage SCP into a folder, then the package as from a folder (DICOMDIR, previews,
            INDEX.HTM, the zip with its SHA-256), in a child process;
  media     Orthanc's own media export, `GET /studies/{id}/media` (a zip with a DICOMDIR),
            written to a file by curl;
  movescu   dcmtk `movescu` (its own storage SCP) into a folder, then `zip -r -1`.

Every tool's time runs until its output is on disk (`sync`), the PACS's files are in the page
cache for all of them; medians of `--rounds` rounds, ratios round by round. CPU seconds of each
tool (its children's; Orthanc's own are the rest of the machine's) are printed.

Then the way back, `exchange import` of the same study (a folder, as a partner's upload) into the
PACS, emptied before each run, against dcmtk's `storescu +sd +r` of the same folder: ours
inspects first (every header, the DICOMDIR rules), asks the PACS which instances it holds, sends
each with C-STORE and asks again what it kept.

Targets (issue 17): the retrieve-and-package at least 1.0x the throughput of the faster of media
and movescu; the import at least 0.9x storescu.

    .venv/bin/python -m bench.pacs_transfer [--gb 1] [--rounds 3] [--workdir /var/tmp]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import median

from bench.package_throughput import CPU, CT_BYTES, OTHERS, timed
from tests.dicom_synth import ct_study
from tests.pacs import OrthancPacs, PortReservation

TARGET, IMPORT_TARGET = 1.0, 0.9
OUR_AE, DCMTK_AE, ACCESSION = "BENCHEXCHANGE", "BENCHMOVESCU", "BENCH-PACS-1"

# The exchange's path from an accession number to a package, as `exchange package --accession`
# runs it, minus the command line (argv: PACS port, retrieve port, retrieve folder, output, own AE, accession).
OURS = r"""
import os, socket, sys, tempfile
from pathlib import Path
from exchange import paths, templates
from exchange.dicom.package import make_package
from exchange.messaging.messages import Messages
from exchange.pacs.query import StudyQuery, find_studies
from exchange.pacs.retrieve import retrieve_studies
from exchange.policy import load_policy
from exchange.site import parse_site
from tests.sites import outbox_site
port, retrieve_port, folder, out, own_ae, accession = sys.argv[1:]
port, retrieve_port, folder, out = int(port), int(retrieve_port), Path(folder), Path(out)
site = parse_site(outbox_site() | {"dicom": {"ae_title": own_ae, "retrieve_port": retrieve_port,
    "pacs": {"bench": {"ae_title": "TESTPACS", "host": "127.0.0.1", "port": port, "timeout": 60}}}}, "bench")
audit = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # the audit record's socket, as on a server
paths.AUDIT_SOCKET = tempfile.mktemp(prefix="bench-audit-")
audit.bind(paths.AUDIT_SOCKET)
name, node = site.dicom.node("bench")
matches = find_studies(name, node, site.dicom, StudyQuery(accession=accession))
descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
retrieve_studies(name, node, site.dicom, matches, descriptor)
policy = load_policy("policies.yaml").policy
make_package(policy, Messages(parse_site(outbox_site(), "bench"), templates.MESSAGES), "bench", out, [folder], label="bench")
"""


# The exchange's import of a folder, as `exchange import PATH --to-pacs` runs it (argv: PACS port,
# folder, the exchange root for its layout, own AE).
IMPORT = r"""
import socket, sys, tempfile
from pathlib import Path
from exchange import paths
from exchange.layout import Layout
from exchange.pacs.importing import import_upload
from exchange.policy import load_policy
from exchange.site import parse_site
from tests.sites import outbox_site
port, folder, root, own_ae = sys.argv[1:]
audit = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
paths.AUDIT_SOCKET = tempfile.mktemp(prefix="bench-audit-")
audit.bind(paths.AUDIT_SOCKET)
policy = load_policy("policies.yaml").policy
layout = Layout(policy.model_copy(update={"accounts": policy.accounts.model_copy(update={"root": root})}))
site = parse_site(outbox_site() | {"dicom": {"ae_title": own_ae,
    "pacs": {"bench": {"ae_title": "TESTPACS", "host": "127.0.0.1", "port": int(port), "timeout": 60}}}}, "bench")
done = import_upload(layout, site.dicom, Path(folder), "bench", None, say=lambda line: None)
assert done.stored == done.instances, (done.stored, done.instances)
"""


def empty(pacs: OrthancPacs) -> None:
    for study in pacs.studies():
        pacs.http.delete(f"/studies/{study['ID']}").raise_for_status()
    assert pacs.count() == 0


def load(pacs: OrthancPacs, study: Path) -> None:
    subprocess.run(
        ["storescu", "-aet", OUR_AE, "-aec", pacs.aet, "+sd", "+r", "127.0.0.1", str(pacs.dicom_port), str(study)],
        check=True,
    )


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gb", type=float, default=1.0, help="size of the CT study")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp"))
    args = parser.parse_args()
    ours_port, dcmtk_port = PortReservation(), PortReservation()
    modalities = {"exchange": (OUR_AE, "127.0.0.1", ours_port.port), "dcmtk": (DCMTK_AE, "127.0.0.1", dcmtk_port.port)}
    with (
        tempfile.TemporaryDirectory(dir=args.workdir, prefix="bench-pacs-") as tmp,
        OrthancPacs(modalities=modalities, config={"DicomScpTimeout": 60}) as pacs,
    ):
        work = Path(tmp)
        study = work / "study"
        count = int(args.gb * 1e9 / CT_BYTES)
        ct_study(study, count, attributes={"AccessionNumber": ACCESSION})
        size = sum(p.stat().st_size for p in study.iterdir())
        load(pacs, study)
        (orthanc_study,) = pacs.find_studies(AccessionNumber=ACCESSION)
        authorization = f"Authorization: {pacs.http.auth._auth_header}"  # the fixture's REST user, for curl
        runs: dict[str, list[float]] = {"ours": [], "media": [], "movescu": [], "import": [], "storescu": []}
        subprocess.run(f"cat {pacs.storage}/*/*/* > /dev/null", shell=True, check=True)  # warm, for all alike
        for _round in range(args.rounds):
            folder, out = fresh(work / "retrieved"), fresh(work / "ours")
            runs["ours"].append(
                timed(
                    [
                        sys.executable,
                        "-c",
                        OURS,
                        str(pacs.dicom_port),
                        str(ours_port.port),
                        str(folder),
                        str(out),
                        OUR_AE,
                        ACCESSION,
                    ],  # fmt: skip
                    cpu_key="ours",
                )
            )
            media = work / "media.zip"
            runs["media"].append(
                timed(
                    [
                        "curl",
                        "-sf",
                        "-H",
                        authorization,
                        "-o",
                        str(media),
                        f"{pacs.url}/studies/{orthanc_study['ID']}/media",
                    ],
                    cpu_key="media",
                )  # fmt: skip
            )
            moved = fresh(work / "moved")
            script = (
                f"movescu -S -aet {DCMTK_AE} -aem {DCMTK_AE} -aec {pacs.aet} --port {dcmtk_port.port} -od {moved} "
                f"-k QueryRetrieveLevel=STUDY -k AccessionNumber={ACCESSION} 127.0.0.1 {pacs.dicom_port} "
                f"&& cd {moved} && zip -q -r -1 {work / 'moved.zip'} ."
            )
            runs["movescu"].append(timed(["sh", "-c", script], cpu_key="movescu"))
            received = len(list(folder.iterdir())), len(list(moved.iterdir()))
            assert received == (count, count), f"retrieved {received}, expected {count} each"
            for leftover in (folder, out, moved, media, work / "moved.zip"):
                shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
        subprocess.run(f"cat {study}/* > /dev/null", shell=True, check=True)
        for _round in range(args.rounds):
            empty(pacs)
            runs["import"].append(
                timed(
                    [sys.executable, "-c", IMPORT, str(pacs.dicom_port), str(study), str(work / "root"), OUR_AE],
                    cpu_key="import",
                )  # fmt: skip
            )
            assert pacs.count() == count
            empty(pacs)
            runs["storescu"].append(
                timed(
                    [
                        "storescu",
                        "-aet",
                        OUR_AE,
                        "-aec",
                        pacs.aet,
                        "+sd",
                        "+r",
                        "127.0.0.1",
                        str(pacs.dicom_port),
                        str(study),
                    ],
                    cpu_key="storescu",
                )  # fmt: skip
            )
            assert pacs.count() == count
    ours_port.release()
    dcmtk_port.release()
    print(f"study: {count} uncompressed CT instances, {size / 1e9:.2f} GB, median of {args.rounds} rounds")
    for tool, label in (("ours", "exchange (C-FIND, C-MOVE, package)"), ("media", "Orthanc /media"),
                        ("movescu", "movescu + zip -r -1"), ("import", "exchange import (C-STORE)"),
                        ("storescu", "storescu +sd +r")):  # fmt: skip
        seconds = median(runs[tool])
        print(
            f"  {label:<36} {seconds:7.2f} s {size / seconds / 1e6:7.1f} MB/s   CPU {median(CPU[tool]):6.2f} s "
            f"(rest of the machine {median(OTHERS[tool]):6.2f} s)   runs {' '.join(f'{t:.2f}' for t in runs[tool])}"
        )
    ratios = {
        other: median(b / a for a, b in zip(runs["ours"], runs[other], strict=True)) for other in ("media", "movescu")
    }
    best = min(("media", "movescu"), key=lambda tool: median(runs[tool]))
    print(
        f"ours / media = {ratios['media']:.2f}x, ours / movescu+zip = {ratios['movescu']:.2f}x; "
        f"against the faster ({best}): {ratios[best]:.2f}x (target >= {TARGET}x)"
    )
    imported = median(b / a for a, b in zip(runs["import"], runs["storescu"], strict=True))
    print(f"import: ours / storescu = {imported:.2f}x (target >= {IMPORT_TARGET}x)")
    return 0 if ratios[best] >= TARGET and imported >= IMPORT_TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
