"""PACS in: staff package a study straight from PACS on a real host, against Debian's Orthanc
(tests/pacs.py) on the outer loopback; the test host shares that network, so the PACS reaches
the exchange's retrieve port there for C-MOVE."""

from __future__ import annotations

import io
import json
import re
import shlex
import signal
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest

from exchange import paths
from tests import testhost
from tests.dicom_synth import ct_study
from tests.e2e.clients import issued_account, paramiko_sftp
from tests.e2e.conftest import make_exchange
from tests.pacs import OrthancPacs, PortReservation, no_listener
from tests.sites import outbox_site

pytestmark = pytest.mark.e2e

OWN_AE = "EXCHANGE-E2E"
RETRIEVE_DIR = "/srv/exchange/pacs-retrieve"
PASSWORD = re.compile(r"^ +password (\S+) +\(read it out once", re.MULTILINE)  # --show-password


@dataclass
class World:
    exchange: object
    pacs: OrthancPacs
    studies: dict[str, list[Path]]  # accession -> the files uploaded


@pytest.fixture(scope="module")
def world(shared_hosts, tmp_path_factory):
    directory = tmp_path_factory.mktemp("pacs")
    retrieve = PortReservation()  # the exchange's retrieve port, on the network it shares with us
    try:
        with (
            OrthancPacs(modalities={"exchange": (OWN_AE, "127.0.0.1", retrieve.port)}) as pacs,
            OrthancPacs(aet="STRANGERPACS") as stranger,  # knows no exchange
            no_listener() as down,
        ):
            studies = {}
            for accession, count, patient, series in (
                ("E2E-0001", 4, "PACS-P1", 2), ("E2E-BROKEN", 4, "PACS-P3", 1), ("E2E-BIG", 150, "PACS-P4", 1),
                ("E2E-TWIN", 2, "PACS-P2", 1), ("E2E-TWIN", 3, "PACS-P2", 1),
            ):  # fmt: skip
                study = pacs.add_study(
                    directory / f"{accession}-{len(studies)}", count, series, accession=accession,
                    patient_id=patient, StudyDescription=f"CT {accession}",
                )  # fmt: skip
                studies[accession] = studies.get(accession, []) + study.paths
                if accession == "E2E-BROKEN":
                    pacs.break_instance(study.instances[0])  # sent last: the other three arrive first
            node = {"ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port, "timeout": 10}
            site = outbox_site() | {
                "dicom": {
                    "ae_title": OWN_AE,
                    "retrieve_port": retrieve.port,
                    "default_pacs": "main",
                    "pacs": {
                        "main": node,
                        "by-get": node | {"retrieve": "get"},
                        "stranger": node | {"ae_title": stranger.aet, "port": stranger.dicom_port},
                        "down": node | {"port": down},
                    },
                }
            }
            host = testhost.boot("pacs", log=lambda message: print(message, flush=True), directory=shared_hosts)
            try:
                yield World(make_exchange(host, directory, site=site), pacs, studies)
            finally:
                testhost.shutdown(host)
    finally:
        retrieve.release()


def run(world: World, *args: str, check: bool = False):
    return world.exchange.host.ssh(shlex.join(["exchange", *args]), check=check)


def audit_events(world: World, event: str) -> list[dict]:
    text = world.exchange.host.ssh(f'grep -hF \'"event": "{event}"\' {paths.AUDIT_LOG} || true').stdout
    return [json.loads(line) for line in text.splitlines()]


def downloads(world: World, account: str) -> list[str]:
    folder = f"/srv/exchange/{'links' if account.startswith('link-') else 'partners'}/{account}/download"
    return world.exchange.host.ssh(f"ls -A {folder}").stdout.split()


def workspace_left(world: World) -> list[str]:
    return world.exchange.host.ssh(f"ls -A {RETRIEVE_DIR}").stdout.split()


def pixel_data_by_instance(files) -> dict[str, bytes]:
    read = (pydicom.dcmread(f) for f in files)
    return {str(ds.SOPInstanceUID): ds.PixelData for ds in read}


def test_a_study_from_pacs_by_accession_reaches_a_link_recipient_intact(world):
    issued = run(world, "link", "issue", "--email", "pacs@example.org", "--phone", "+31612340001", "--show-password")
    account, password = issued_account(issued.stdout), PASSWORD.search(issued.stdout)[1]
    result = run(world, "package", "--to", account, "--accession", "E2E-0001", "--label", "CT from PACS")
    assert result.returncode == 0, result.stderr
    assert "1 study matches accession E2E-0001" in result.stderr and "(2 series, 8 images)" in result.stderr
    assert "patient PACS-P1 SYNTHETIC^PATIENT" in result.stderr
    assert re.search(r"packed 8 files of 1 studies into \S+/download/\S+\.zip", result.stdout)
    (package,) = [name for name in downloads(world, account) if name.endswith(".zip")]
    sftp = paramiko_sftp(world.exchange.host, account, password=password)
    try:
        with sftp.open(f"/download/{package}") as remote:
            archive = zipfile.ZipFile(io.BytesIO(remote.read()))
    finally:
        sftp.close()
    members = [name for name in archive.namelist() if name.startswith("DICOM/")]
    assert "DICOMDIR" in archive.namelist() and len(members) == 8
    received = pixel_data_by_instance(io.BytesIO(archive.read(name)) for name in members)
    assert received == pixel_data_by_instance(world.studies["E2E-0001"])  # every instance, its pixels intact
    assert workspace_left(world) == []
    (line,) = [e for e in audit_events(world, "pacs-retrieve") if e["account"] == account]
    assert line["pacs"] == "main" and line["query"] == {"accession": "E2E-0001"} and line["outcome"] == "packaged"
    assert line["instances"] == 8 and line["patients"] == ["PACS-P1"] and line["by"] == "root"


def test_a_retrieve_by_c_get_needs_no_connection_back(world):
    result = run(world, "package", "--to", "bob-hospital", "--accession", "E2E-0001", "--pacs", "by-get")
    assert result.returncode == 0, result.stderr
    assert "packed 8 files" in result.stdout and workspace_left(world) == []


def test_several_matches_are_listed_and_refused_until_one_is_chosen_or_all(world):
    before = downloads(world, "alice-clinic")
    refused = run(world, "package", "--to", "alice-clinic", "--accession", "E2E-TWIN")
    assert refused.returncode == 2, refused.stderr
    assert "2 studies match accession E2E-TWIN" in refused.stderr
    assert "choose one with --study-uid, or take them all with --all; nothing was retrieved" in refused.stderr
    uids = re.findall(r"study (\S+)$", refused.stderr, re.MULTILINE)
    assert len(uids) == 2 and downloads(world, "alice-clinic") == before
    chosen = run(world, "package", "--to", "alice-clinic", "--study-uid", uids[1])
    assert chosen.returncode == 0, chosen.stderr
    everything = run(world, "package", "--to", "alice-clinic", "--accession", "E2E-TWIN", "--all")
    assert everything.returncode == 0, everything.stderr
    assert "packed 5 files of 2 studies" in everything.stdout


def test_an_incomplete_retrieve_is_refused_and_leaves_nothing(world):
    before = downloads(world, "alice-clinic")
    result = run(world, "package", "--to", "alice-clinic", "--accession", "E2E-BROKEN")
    assert result.returncode == 1, result.stderr
    assert "is incomplete: 3 instances of the 4 the PACS counted arrived" in result.stderr
    assert "Nothing was packaged." in result.stderr
    assert downloads(world, "alice-clinic") == before and workspace_left(world) == []
    (line,) = [e for e in audit_events(world, "pacs-retrieve") if e["query"] == {"accession": "E2E-BROKEN"}]
    assert line["outcome"] == "failed" and "incomplete" in line["detail"]


def test_a_pacs_that_is_down_or_does_not_know_us_is_named(world):
    down = run(world, "pacs", "echo", "down")
    assert down.returncode == 1 and "no DICOM association" in down.stderr and "Connection refused" in down.stderr
    stranger = run(world, "pacs", "echo", "stranger")
    assert stranger.returncode == 1, stranger.stderr
    assert "refused the association: Calling AE title not recognised" in stranger.stderr
    assert f"the PACS must know the exchange's AE title {OWN_AE} as a modality" in stranger.stderr
    assert run(world, "pacs", "echo", "main").returncode == 0
    refused = run(world, "package", "--to", "alice-clinic", "--accession", "E2E-0001", "--pacs", "stranger")
    assert refused.returncode == 1 and "Calling AE title not recognised" in refused.stderr
    unknown = run(world, "package", "--to", "alice-clinic", "--accession", "NO-SUCH")
    assert unknown.returncode == 2 and "no study matches accession NO-SUCH; nothing was packaged" in unknown.stderr


def test_a_retrieve_stopped_halfway_leaves_nothing_behind(world):
    before = downloads(world, "alice-clinic")
    host = world.exchange.host
    host.ssh(
        "nohup exchange package --to alice-clinic --accession E2E-BIG > /tmp/big.out 2>&1 & echo $! > /tmp/big.pid"
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not host.ssh(f"ls {RETRIEVE_DIR}/*/ 2>/dev/null | head -3").stdout.strip():
        time.sleep(0.05)  # until the first instances have arrived
    host.ssh(f"pkill -{signal.SIGTERM.value} -f 'exchange package --to alice-clinic --accession E2E-BIG'")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and host.ssh("pgrep -f 'accession E2E-BIG'", check=False).returncode == 0:
        time.sleep(0.2)
    assert downloads(world, "alice-clinic") == before and workspace_left(world) == []
    (line,) = [e for e in audit_events(world, "pacs-retrieve") if e["query"] == {"accession": "E2E-BIG"}]
    assert line["outcome"] == "interrupted"


def test_retrieves_right_after_one_another_both_arrive(world):
    # A PACS may keep its association to a move destination open for the next move (Orthanc
    # does for 5 s): the second retrieve, by a new process on the same port, must still arrive.
    twice = " && ".join(["exchange package --to bob-hospital --accession E2E-0001"] * 2)
    result = world.exchange.host.ssh(twice, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("packed 8 files") == 2


# -- PACS out: a partner's upload into the PACS ---------------------------------------------


def partner_uploads(world: World, tmp_path: Path, name: str, files: list[Path], bad_member: bool = False) -> None:
    """alice-clinic puts a zip of `files` into its upload folder over SFTP, with its own key."""
    medium = tmp_path / name
    with zipfile.ZipFile(medium, "w") as archive:
        for number, file in enumerate(files):
            archive.write(file, f"DISC/IM{number:04d}")
        if bad_member:
            archive.writestr("../../escape.txt", "an entry that would land outside where it is unpacked")
    login = world.exchange.logins["alice-clinic"]
    sftp = paramiko_sftp(world.exchange.host, login.name, key=login.key)
    try:
        sftp.put(str(medium), f"/upload/{name}")
    finally:
        sftp.close()


def test_a_partners_upload_goes_into_pacs_once_and_then_to_imported(world, tmp_path):
    files = ct_study(tmp_path / "sent", 3, patient_id="SENDER-E2E", attributes={"AccessionNumber": "E2E-IMP"})
    partner_uploads(world, tmp_path, "disc.zip", files)
    before = world.pacs.count()
    upload = "/srv/exchange/partners/alice-clinic/upload/disc.zip"
    result = run(world, "import", upload, "--to-pacs", "main")
    assert result.returncode == 0, result.stderr
    assert "3 instances of 1 studies, 3 stored now" in result.stdout and world.pacs.count() == before + 3
    host = world.exchange.host
    assert host.ssh(f"test -e {upload}", check=False).returncode == 1
    assert host.ssh("ls /srv/exchange/imported/alice-clinic").stdout.split() == ["disc.zip"]
    (line,) = [e for e in audit_events(world, "pacs-import") if e.get("path") == upload]
    assert line["outcome"] == "imported" and line["stored"] == 3 and line["patients"]["received"] == ["SENDER-E2E"]
    # The same images again (a partner sends the disc twice): nothing is sent twice.
    partner_uploads(world, tmp_path, "again.zip", files)
    again = run(world, "import", "/srv/exchange/partners/alice-clinic/upload/again.zip", "--to-pacs", "main")
    assert again.returncode == 0, again.stderr
    assert "0 stored now, 3 there before" in again.stdout and world.pacs.count() == before + 3


def test_reconciliation_refuses_a_mismatch_unless_forced(world, tmp_path):
    world.pacs.add_study(tmp_path / "local", 1, patient_id="LOCAL-E2E", PatientName="OTHER^PERSON")
    files = ct_study(tmp_path / "sent", 2, patient_id="SENDER-E2E-2")
    partner_uploads(world, tmp_path, "other.zip", files)
    upload = "/srv/exchange/partners/alice-clinic/upload/other.zip"
    before = world.pacs.count()
    refused = run(world, "import", upload, "--to-pacs", "main", "--patient-id", "LOCAL-E2E")
    assert refused.returncode == 2, refused.stderr
    assert "name: received SYNTHETIC^PATIENT, the PACS has OTHER^PERSON" in refused.stderr
    assert world.pacs.count() == before
    forced = run(world, "import", upload, "--to-pacs", "main", "--patient-id", "LOCAL-E2E", "--force-reconcile")
    assert forced.returncode == 0, forced.stderr
    assert world.pacs.count() == before + 2
    studies = [world.pacs.study_instances(study["ID"]) for study in world.pacs.find_studies(PatientID="LOCAL-E2E")]
    (stored,) = [instances for instances in studies if len(instances) == 2]  # the upload, beside the local study
    tags = world.pacs.http.get(f"/instances/{stored[0]['ID']}/tags", params={"simplify": ""}).json()
    assert tags["OtherPatientIDsSequence"][0]["PatientID"] == "SENDER-E2E-2"


def test_a_zip_that_fails_inspection_is_never_sent(world, tmp_path):
    files = ct_study(tmp_path / "sent", 2, patient_id="SENDER-E2E-3")
    partner_uploads(world, tmp_path, "bad.zip", files, bad_member=True)
    before = world.pacs.count()
    result = run(world, "import", "/srv/exchange/partners/alice-clinic/upload/bad.zip", "--to-pacs", "main")
    assert result.returncode == 1 and "'..' in the path" in result.stderr
    assert world.pacs.count() == before
    assert "bad.zip" in world.exchange.host.ssh("ls /srv/exchange/partners/alice-clinic/upload").stdout
