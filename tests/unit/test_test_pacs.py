"""The test PACS (tests/pacs.py) against real clients: pynetdicom 3 and dcmtk's echoscu, findscu and
movescu. One Orthanc for the module; every test makes its own studies (its own accession numbers),
and a test that changes the PACS's modalities or store rules puts them back."""

from __future__ import annotations

import socket
import subprocess
import tempfile
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.pdu import A_ASSOCIATE_RJ
from pynetdicom.sop_class import (
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

import tests.pacs
from tests.dicom_synth import ct_study
from tests.pacs import (
    DIRECTORY_PREFIX,
    HOST,
    PORT_LOCKS,
    OrthancError,
    OrthancPacs,
    PortReservation,
    no_listener,
    reap_stale_directories,
)

FIND = StudyRootQueryRetrieveInformationModelFind
MOVE = StudyRootQueryRetrieveInformationModelMove
GET = StudyRootQueryRetrieveInformationModelGet
OUR_AET = "EXCHANGE"
DCMTK_AET = "MOVESCU"

SUCCESS, PENDING, FAILED_UNABLE_TO_PROCESS, REFUSED_OUT_OF_RESOURCES = 0x0000, 0xFF00, 0xC000, 0xA700


class Destination:
    """Our own storage SCP (as the exchange's C-MOVE destination will be), on a reserved port."""

    def __init__(self) -> None:
        self.received: list[Dataset] = []
        self._reservation = PortReservation()
        self.port = self._reservation.port
        ae = AE(ae_title=OUR_AET)
        ae.add_supported_context(CTImageStorage)
        handlers = [(evt.EVT_C_STORE, self._store)]
        self._server = ae.start_server((HOST, self.port), block=False, evt_handlers=handlers)

    def _store(self, event) -> int:
        self.received.append(event.dataset)
        return SUCCESS

    def take(self) -> list[Dataset]:
        received, self.received = self.received, []
        return received

    def stop(self) -> None:
        self._server.shutdown()
        self._reservation.release()


@pytest.fixture(scope="module")
def destination():
    scp = Destination()
    yield scp
    scp.stop()


@pytest.fixture(scope="module")
def dcmtk_port():
    reservation = PortReservation()  # movescu listens here while it runs
    yield reservation.port
    reservation.release()


@pytest.fixture(scope="module")
def pacs(destination, dcmtk_port):
    modalities = {"exchange": (OUR_AET, HOST, destination.port), "dcmtk": (DCMTK_AET, HOST, dcmtk_port)}
    with OrthancPacs(modalities=modalities) as running:
        yield running


@pytest.fixture
def rules(pacs):
    """The store rules cleared after the test, whatever it left."""
    yield pacs
    pacs.refuse_store()
    pacs.drop_store()


# -- clients


def associate(pacs: OrthancPacs, *contexts, calling: str = OUR_AET, called: str | None = None, port=None, **kwargs):
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    for context in contexts or (Verification, FIND, MOVE):
        ae.add_requested_context(context)
    return ae.associate(HOST, port or pacs.dicom_port, ae_title=called or pacs.aet, **kwargs)


def study_query(**keys) -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    for keyword in ("StudyInstanceUID", "AccessionNumber", "PatientID", "StudyDate", "NumberOfStudyRelatedInstances"):
        setattr(query, keyword, keys.get(keyword, ""))
    return query


def status(response: Dataset) -> int | None:
    return response.Status if "Status" in response else None


def find(pacs: OrthancPacs, **keys) -> tuple[list[int | None], list[Dataset]]:
    association = associate(pacs, FIND)
    assert association.is_established
    answers = list(association.send_c_find(study_query(**keys), FIND))
    association.release()
    return [status(s) for s, _ in answers], [ds for _, ds in answers if ds is not None]


def move(pacs: OrthancPacs, destination_aet: str = OUR_AET, **keys) -> list[Dataset]:
    association = associate(pacs, MOVE)
    assert association.is_established
    responses = [s for s, _ in association.send_c_move(study_query(**keys), destination_aet, MOVE)]
    association.release()
    return responses


def get(pacs: OrthancPacs, **keys) -> tuple[list[Dataset], list[Dataset]]:
    received: list[Dataset] = []

    def store(event):
        received.append(event.dataset)
        return SUCCESS

    association = associate(
        pacs, GET, CTImageStorage,
        ext_neg=[build_role(CTImageStorage, scp_role=True)], evt_handlers=[(evt.EVT_C_STORE, store)],
    )  # fmt: skip
    assert association.is_established
    responses = [s for s, _ in association.send_c_get(study_query(**keys), GET)]
    association.release()
    return responses, received


def counts(response: Dataset) -> tuple[int, int, int]:
    return (
        response.NumberOfCompletedSuboperations,
        response.NumberOfFailedSuboperations,
        response.NumberOfWarningSuboperations,
    )


def dcmtk(tool: str, pacs: OrthancPacs, *args: str, calling: str = OUR_AET) -> subprocess.CompletedProcess:
    command = [tool, "-aet", calling, "-aec", pacs.aet, *args, HOST, str(pacs.dicom_port)]
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


def pixels(path: Path) -> bytes:
    return dcmread(path).PixelData


# -- the process


def test_runs_on_its_own_ports_and_directory_with_the_rest_api_locked(pacs):
    system = pacs.http.get("/system").json()
    assert (system["Name"], system["DicomAet"], system["Version"]) == (pacs.name, "TESTPACS", "1.10.1")
    assert (system["DicomPort"], system["HttpPort"]) == (pacs.dicom_port, pacs.http_port)
    assert pacs.dicom_port != pacs.http_port
    assert (pacs.directory / "storage" / "index").exists() and "Orthanc has started" in pacs.log()
    assert httpx.get(f"{pacs.url}/system").status_code == 401, "REST needs the generated user"
    for port in (pacs.dicom_port, pacs.http_port):  # held for the running PACS: no other test takes them
        held = subprocess.run(["flock", "--nonblock", str(PORT_LOCKS / str(port)), "true"])
        assert held.returncode == 1


def test_a_taken_port_means_new_ports(monkeypatch):
    """The first DICOM port handed out is taken (a listener of ours, as if someone bound it between
    the choice and Orthanc's bind): Orthanc exits "already in use", the next attempt has new ports."""
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        real, handed = PortReservation, []

        class FirstPortTaken:
            def __init__(self) -> None:
                self._real = real()
                self.port = taken.getsockname()[1] if not handed else self._real.port
                handed.append(self.port)

            def release(self) -> None:
                self._real.release()

        monkeypatch.setattr(tests.pacs, "PortReservation", FirstPortTaken)
        with OrthancPacs(stop_timeout=1) as second:
            assert handed[0] == taken.getsockname()[1] and len(handed) == 4
            assert second.dicom_port == handed[2] and second.http.get("/system").json()["Name"] == second.name


def test_a_failed_start_says_why_with_orthancs_log_and_leaves_nothing():
    broken = OrthancPacs(config={"DicomPort": "not a port"})
    with pytest.raises(OrthancError, match="Orthanc exited with") as failure:
        broken.start()
    assert "DicomPort" in str(failure.value) and "Orthanc version: 1.10.1" in str(failure.value)
    assert not broken.directory.exists()


def test_only_directories_whose_owner_died_are_reaped(pacs):
    dead, alien = (Path(tempfile.mkdtemp(prefix=DIRECTORY_PREFIX)) for _ in range(2))
    (dead / "owner.lock").touch()  # its flock went with its process
    (dead / "storage").mkdir()
    try:
        assert dead in reap_stale_directories() and not dead.exists()
        assert pacs.directory.exists() and alien.exists(), "a running PACS's, and one without owner.lock, stay"
    finally:
        alien.rmdir()


# -- real clients


def test_echo(pacs):
    association = associate(pacs, Verification)
    assert association.is_established and association.send_c_echo().Status == SUCCESS
    association.release()
    assert dcmtk("echoscu", pacs).returncode == 0


def test_find_by_accession_number_and_by_patient_gives_each_study_with_its_instance_count(pacs, tmp_path):
    first = pacs.add_study(tmp_path / "first", 3, accession="FIND-ACC", patient_id="FIND-PAT", study_date="20260102")
    second = pacs.add_study(tmp_path / "second", 2, series=2, accession="FIND-ACC", patient_id="FIND-PAT")
    pacs.add_study(tmp_path / "other", 1, accession="FIND-OTHER", patient_id="FIND-PAT")
    statuses, answers = find(pacs, AccessionNumber="FIND-ACC")
    assert statuses == [PENDING, PENDING, SUCCESS]
    found = {
        ds.StudyInstanceUID: (ds.AccessionNumber, ds.PatientID, int(ds.NumberOfStudyRelatedInstances)) for ds in answers
    }
    assert found == {first.uid: ("FIND-ACC", "FIND-PAT", 3), second.uid: ("FIND-ACC", "FIND-PAT", 4)}
    assert {ds.StudyDate for ds in answers} == {"20260102", "20260101"}
    assert len(find(pacs, PatientID="FIND-PAT")[1]) == 3
    assert find(pacs, AccessionNumber="NO-SUCH-ACC") == ([SUCCESS], [])
    assert {s["ID"] for s in pacs.find_studies(AccessionNumber="FIND-ACC")} == {first.orthanc_id, second.orthanc_id}
    by_dcmtk = dcmtk("findscu", pacs, "-S", "-k", "QueryRetrieveLevel=STUDY", "-k", "AccessionNumber=FIND-ACC",
                     "-k", "StudyInstanceUID", "-k", "NumberOfStudyRelatedInstances")  # fmt: skip
    assert by_dcmtk.returncode == 0 and by_dcmtk.stderr.count("Find Response:") == 2
    assert first.uid in by_dcmtk.stderr and "NumberOfStudyRelatedInstances" in by_dcmtk.stderr


def test_move_delivers_every_instance_with_its_pixel_data_unchanged(pacs, destination, tmp_path):
    study = pacs.add_study(tmp_path / "move", 4, accession="MOVE-ACC")
    destination.take()
    responses = move(pacs, AccessionNumber="MOVE-ACC")
    assert [status(r) for r in responses] == [PENDING] * 3 + [SUCCESS] and counts(responses[-1]) == (4, 0, 0)
    received = destination.take()
    assert [ds.SOPInstanceUID for ds in received] == pacs.sending_order(study) == study.sop_instance_uids[::-1]
    by_uid = {ds.SOPInstanceUID: ds.PixelData for ds in received}
    assert all(by_uid[uid] == pixels(path) for uid, path in zip(study.sop_instance_uids, study.paths, strict=True))


def test_movescu_to_its_own_registered_port_receives_the_study(pacs, dcmtk_port, tmp_path):
    study = pacs.add_study(tmp_path / "dcmtk", 2, accession="MOVESCU-ACC")
    out = tmp_path / "received"
    out.mkdir()
    moved = dcmtk("movescu", pacs, "-S", "-aem", DCMTK_AET, "--port", str(dcmtk_port), "-od", str(out),
                  "-k", "QueryRetrieveLevel=STUDY", "-k", "AccessionNumber=MOVESCU-ACC", calling=DCMTK_AET)  # fmt: skip
    assert moved.returncode == 0, moved.stderr
    files = {dcmread(path).SOPInstanceUID: pixels(path) for path in out.iterdir()}
    assert files == {uid: pixels(path) for uid, path in zip(study.sop_instance_uids, study.paths, strict=True)}


def test_get_delivers_every_instance_on_our_association(pacs, tmp_path):
    study = pacs.add_study(tmp_path / "get", 3, accession="GET-ACC")
    responses, received = get(pacs, AccessionNumber="GET-ACC")
    assert [status(r) for r in responses] == [PENDING] * 3 + [SUCCESS] and counts(responses[-1]) == (3, 0, 0)
    assert [ds.SOPInstanceUID for ds in received] == pacs.sending_order(study)
    assert {ds.SOPInstanceUID: ds.PixelData for ds in received} == {
        uid: pixels(path) for uid, path in zip(study.sop_instance_uids, study.paths, strict=True)
    }


def test_store_from_our_ae_is_kept(pacs, tmp_path):
    before = pacs.count()
    paths = ct_study(tmp_path / "store", 2, attributes={"AccessionNumber": "STORE-ACC"})
    association = associate(pacs, CTImageStorage)
    assert [association.send_c_store(dcmread(path)).Status for path in paths] == [SUCCESS, SUCCESS]
    association.release()
    assert pacs.count() == before + 2
    (stored,) = pacs.find_studies(AccessionNumber="STORE-ACC")
    assert len(pacs.study_instances(stored["ID"])) == 2


# -- fault 1: an instance that cannot be sent


def test_a_broken_instance_is_still_found_but_aborts_the_move_when_reached(pacs, destination, tmp_path):
    study = pacs.add_study(tmp_path / "broken", 3, accession="BROKEN-ACC")
    assert not pacs.break_instance(study.instances[0]).exists()  # uploaded first: Orthanc sends it last
    assert find(pacs, AccessionNumber="BROKEN-ACC")[1][0].NumberOfStudyRelatedInstances == 3
    destination.take()
    responses = move(pacs, AccessionNumber="BROKEN-ACC")
    assert [status(r) for r in responses] == [PENDING, PENDING, FAILED_UNABLE_TO_PROCESS]
    assert counts(responses[-1]) == (0, 0, 0) and "NumberOfRemainingSuboperations" not in responses[-1]
    assert [ds.SOPInstanceUID for ds in destination.take()] == pacs.sending_order(study)[:-1]
    assert "IMoveRequestHandler Failed: The specified path does not point to a regular file" in pacs.log()


def test_a_broken_instance_aborts_the_get_when_reached(pacs, tmp_path):
    study = pacs.add_study(tmp_path / "broken-get", 3, accession="BROKEN-GET-ACC")
    pacs.break_instance(study.instances[1])  # sent second: one arrives, then the get fails
    assert pacs.sending_order(study)[1] == study.sop_instance_uids[1]
    responses, received = get(pacs, AccessionNumber="BROKEN-GET-ACC")
    assert [status(r) for r in responses] == [PENDING, FAILED_UNABLE_TO_PROCESS]
    assert counts(responses[-1]) == (1, 0, 0)
    assert [ds.SOPInstanceUID for ds in received] == pacs.sending_order(study)[:1]
    assert "IGetRequestHandler Failed" in pacs.log()


# -- fault 2: C-STORE refused (or dropped) for some instances


def test_store_refused_for_matching_instances_only(rules, tmp_path):
    pacs = rules
    paths = ct_study(tmp_path / "refuse", 3, attributes={"AccessionNumber": "REFUSE-ACC"})
    refused_uid = dcmread(paths[1]).SOPInstanceUID
    marked = ct_study(tmp_path / "marked", 1, attributes={"AccessionNumber": "REFUSE-ACC", "SeriesDescription": "NO"})
    pacs.refuse_store(SOPInstanceUID=refused_uid, SeriesDescription=["NO"])
    before = pacs.count()
    association = associate(pacs, CTImageStorage)
    statuses = [association.send_c_store(dcmread(path)).Status for path in [*paths, *marked]]
    assert statuses == [SUCCESS, REFUSED_OUT_OF_RESOURCES, SUCCESS, REFUSED_OUT_OF_RESOURCES]
    assert association.is_established, "a refusal does not end the association"
    assert pacs.count() == before + 2
    pacs.refuse_store()
    assert association.send_c_store(dcmread(paths[1])).Status == SUCCESS and pacs.count() == before + 3
    association.release()
    pacs.refuse_store(SeriesDescription="NO")
    assert len(pacs.upload(marked)) == 1 and pacs.count() == before + 4, "REST uploads are never filtered"
    assert "test PACS refuses " + refused_uid in pacs.log()


def test_store_dropped_is_answered_success_but_not_kept(rules, tmp_path):
    pacs = rules
    paths = ct_study(tmp_path / "drop", 2, attributes={"AccessionNumber": "DROP-ACC", "SeriesDescription": "DROP"})
    pacs.drop_store(SeriesDescription="DROP")
    before = pacs.count()
    association = associate(pacs, CTImageStorage)
    assert [association.send_c_store(dcmread(path)).Status for path in paths] == [SUCCESS, SUCCESS]
    association.release()
    assert pacs.count() == before and pacs.find_studies(AccessionNumber="DROP-ACC") == []


# -- fault 3: our AE unknown, a request not allowed, an unknown move destination


def rejection(pacs: OrthancPacs, *contexts, **kwargs) -> tuple[int, int, int]:
    """(result, source, reason) of the A-ASSOCIATE-RJ the PACS answers, read from the PDU itself:
    pynetdicom 3.0.4 marks about one in a hundred of Orthanc's immediate rejections `is_aborted`
    instead of `is_rejected` (it checks that its socket is still connected after sending the
    request, and its own DUL thread may have handled the A-ASSOCIATE-RJ and closed it already)."""
    pdus = []
    association = associate(
        pacs, *contexts, evt_handlers=[(evt.EVT_PDU_RECV, lambda event: pdus.append(event.pdu))], **kwargs
    )
    assert not association.is_established and (association.is_rejected or association.is_aborted)
    (answer,) = pdus
    assert isinstance(answer, A_ASSOCIATE_RJ)
    return answer.result, answer.source, answer.reason_diagnostic


CALLING_AE_NOT_RECOGNISED, CALLED_AE_NOT_RECOGNISED = (1, 1, 3), (1, 1, 7)


def test_an_unknown_calling_ae_or_host_or_called_ae_is_rejected(pacs):
    assert rejection(pacs, FIND, calling="STRANGER") == CALLING_AE_NOT_RECOGNISED
    assert rejection(pacs, Verification, calling="STRANGER") == CALLING_AE_NOT_RECOGNISED
    assert rejection(pacs, FIND, called="NOT-TESTPACS") == CALLED_AE_NOT_RECOGNISED
    pacs.set_modality("elsewhere", "ELSEWHERE", "127.0.0.2", 104)  # known AE title, not from our host
    try:
        assert rejection(pacs, FIND, calling="ELSEWHERE") == CALLING_AE_NOT_RECOGNISED
    finally:
        pacs.remove_modality("elsewhere")
    found = dcmtk("findscu", pacs, "-S", "-k", "QueryRetrieveLevel=STUDY", calling="STRANGER")
    assert found.returncode != 0 and "Reason: Calling AE Title Not Recognized" in found.stderr
    assert "Rejected association for remote AET STRANGER" in pacs.log()


def test_our_ae_removed_at_runtime_is_rejected_until_it_is_back(pacs, destination):
    pacs.remove_modality("exchange")
    try:
        assert rejection(pacs, FIND) == CALLING_AE_NOT_RECOGNISED
    finally:
        pacs.set_modality("exchange", OUR_AET, HOST, destination.port)
    association = associate(pacs, FIND)
    assert association.is_established
    association.release()


def test_a_request_the_modality_may_not_make_is_aborted(pacs, destination):
    pacs.set_modality("nofind", "NOFIND", HOST, destination.port, AllowFind=False, AllowMove=False)
    try:
        for request in ("find", "move"):
            association = associate(pacs, FIND, MOVE, calling="NOFIND")
            assert association.is_established, "the association itself is accepted"
            if request == "find":
                answers = list(association.send_c_find(study_query(), FIND))
            else:
                answers = list(association.send_c_move(study_query(), OUR_AET, MOVE))
            assert [(status(s), ds) for s, ds in answers] == [(None, None)], "no status: an A-ABORT"
            association.release()
            assert association.is_aborted
    finally:
        pacs.remove_modality("nofind")
    assert 'Rejected Find request from remote DICOM modality with AET "NOFIND"' in pacs.log()


def test_a_move_to_an_unknown_destination_fails_with_0xC000_not_0xA801(pacs, tmp_path):
    pacs.add_study(tmp_path / "nowhere", 1, accession="NOWHERE-ACC")
    (response,) = move(pacs, "NOBODY", AccessionNumber="NOWHERE-ACC")
    assert status(response) == FAILED_UNABLE_TO_PROCESS and counts(response) == (0, 0, 0)
    assert "Unknown modality for AET: NOBODY" in pacs.log()
    moved = dcmtk(
        "movescu", pacs, "-S", "-aem", "NOBODY", "-k", "QueryRetrieveLevel=STUDY", "-k", "AccessionNumber=NOWHERE-ACC"
    )
    assert "Move response with error status (Failed: UnableToProcess)" in moved.stderr


def test_a_move_to_a_registered_destination_that_is_down_fails_with_0xC000(pacs, tmp_path):
    pacs.add_study(tmp_path / "down", 2, accession="DEST-DOWN-ACC")
    with no_listener() as port:
        pacs.set_modality("down", "DOWN", HOST, port)
        try:
            (response,) = move(pacs, "DOWN", AccessionNumber="DEST-DOWN-ACC")
        finally:
            pacs.remove_modality("down")
    assert status(response) == FAILED_UNABLE_TO_PROCESS and counts(response) == (0, 0, 0)
    assert 'connecting to AET "DOWN": TCP Initialization Error: Connection refused' in pacs.log()


# -- fault 4: PACS down


def test_pacs_down_is_refused_at_once(pacs):
    with no_listener() as port:
        association = associate(pacs, Verification, port=port)
        assert not association.is_established and association.is_aborted and not association.is_rejected
        echo = subprocess.run(["echoscu", HOST, str(port)], capture_output=True, text=True, timeout=30)
        assert echo.returncode == 1 and "Connection refused" in echo.stderr


def test_pacs_paused_accepts_the_connection_but_never_answers(pacs):
    ae = AE(ae_title=OUR_AET)
    ae.add_requested_context(Verification)
    ae.acse_timeout = 0.5
    with pacs.paused():
        association = ae.associate(HOST, pacs.dicom_port, ae_title=pacs.aet)
        assert not association.is_established and association.is_aborted
    association = ae.associate(HOST, pacs.dicom_port, ae_title=pacs.aet)
    assert association.is_established and association.send_c_echo().Status == SUCCESS
    association.release()
