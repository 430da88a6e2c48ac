"""The exchange's DICOM side against a real PACS (Debian's Orthanc, tests/pacs.py): echo,
study-level find, retrieve by C-MOVE and C-GET into a folder, and every refusal named."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from exchange.layout import Layout
from exchange.pacs import network, query, retrieve, workspace
from exchange.policy import load_policy
from exchange.site import Dicom, PacsNode
from roles import REPO
from tests.dicom_synth import clone
from tests.messaging import make_ca
from tests.pacs import OrthancPacs, PortReservation, no_listener

OWN_AE = "EXCHANGE-UNIT"
J2K = Path(get_testdata_file("JPEG2000.dcm", download=False))


@pytest.fixture(scope="module")
def pacs():
    port = PortReservation()
    try:
        with OrthancPacs(modalities={"exchange": (OWN_AE, "127.0.0.1", port.port)}) as orthanc:
            orthanc.retrieve_port = port.port
            yield orthanc
    finally:
        port.release()


def dicom_for(pacs: OrthancPacs, **node) -> Dicom:
    base = {"ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port, "timeout": 10}
    return Dicom(ae_title=OWN_AE, retrieve_port=pacs.retrieve_port, pacs={"main": PacsNode(**(base | node))})


@pytest.fixture
def folder(tmp_path):
    where = tmp_path / "retrieved"
    where.mkdir()
    descriptor = os.open(where, os.O_RDONLY | os.O_DIRECTORY)
    yield where, descriptor
    os.close(descriptor)


def find(dicom: Dicom, **asked) -> list[query.StudyMatch]:
    name, node = dicom.node(None)
    return query.find_studies(name, node, dicom, query.StudyQuery(**asked))


def retrieve_all(dicom: Dicom, matches, folder: int) -> list[retrieve.Retrieved]:
    name, node = dicom.node(None)
    return retrieve.retrieve_studies(name, node, dicom, matches, folder)


def test_echo_answers_and_a_stranger_or_a_dead_port_is_named(pacs):
    dicom = dicom_for(pacs)
    network.echo("main", dicom.pacs["main"], dicom)
    stranger = Dicom(ae_title="NOBODY", pacs=dicom.pacs)
    with pytest.raises(network.PacsError, match="refused the association: Calling AE title not recognised"):
        network.echo("main", dicom.pacs["main"], stranger)
    with pytest.raises(
        network.PacsError,
        match="refused the association: Called AE title not recognised; is WRONGCALLED the PACS.s AE title",
    ):
        network.echo("main", dicom.pacs["main"].model_copy(update={"ae_title": "WRONGCALLED"}), dicom)
    with no_listener() as port, pytest.raises(network.PacsError, match="no DICOM association: .*Connection refused"):
        network.echo("main", dicom.pacs["main"].model_copy(update={"port": port}), dicom)


def test_find_describes_each_match_with_the_pacs_counts(pacs, tmp_path):
    pacs.add_study(tmp_path / "a", 3, 2, accession="UNIT-FIND", patient_id="P-FIND", StudyDescription="CT <b>")
    pacs.add_study(tmp_path / "b", 1, accession="UNIT-FIND", patient_id="P-FIND")
    matches = sorted(find(dicom_for(pacs), accession="UNIT-FIND"), key=lambda m: m.instances)
    assert [(m.series, m.instances) for m in matches] == [(1, 1), (2, 6)]
    assert matches[1].description == "CT <b>" and matches[1].patient_id == "P-FIND" and matches[1].modalities == "CT"
    assert find(dicom_for(pacs), patient_id="P-FIND", date="2026-01-01") and not find(
        dicom_for(pacs), patient_id="P-FIND", date="2025-01-01..2025-12-31"
    )


def test_too_many_matches_are_refused_not_listed(pacs, tmp_path, monkeypatch):
    for n in range(3):
        pacs.add_study(tmp_path / str(n), 1, accession="UNIT-MANY")
    monkeypatch.setattr(query, "MAX_MATCHES", 2)
    with pytest.raises(network.PacsError, match="more than 2 studies match accession UNIT-MANY; narrow the query"):
        find(dicom_for(pacs), accession="UNIT-MANY")


@pytest.mark.parametrize("method", ["move", "get"])
def test_a_study_is_retrieved_whole_and_byte_for_byte(pacs, tmp_path, folder, method):
    """Uncompressed CT and lossy JPEG 2000 (which Orthanc cannot transcode): each arrives in the
    transfer syntax the PACS stores it in, its pixel data unchanged, in files only root reads."""
    synthetic = pacs.add_study(tmp_path / "ct", 3, 2, accession=f"UNIT-{method}")
    (j2k,) = clone(J2K, tmp_path / "j2k", 1)
    dataset = dcmread(j2k)
    dataset.AccessionNumber = f"UNIT-{method}"
    dataset.save_as(j2k)
    pacs.upload([j2k])
    dicom = dicom_for(pacs, retrieve=method)
    matches = find(dicom, accession=f"UNIT-{method}")
    got = retrieve_all(dicom, matches, folder[1])
    assert sorted(one.instances for one in got) == [1, 6] and {one.final for one in got} == {"0x0000 (Success)"}
    received = {str(ds.SOPInstanceUID): ds for ds in map(dcmread, sorted(folder[0].iterdir()))}
    sent = {str(ds.SOPInstanceUID): ds for ds in map(dcmread, [*synthetic.paths, j2k])}
    assert received.keys() == sent.keys()
    for uid, ds in sent.items():
        assert received[uid].PixelData == ds.PixelData
        assert received[uid].file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
    assert {os.stat(p).st_mode & 0o777 for p in folder[0].iterdir()} == {0o600}


def test_an_instance_the_pacs_cannot_send_refuses_the_retrieve(pacs, tmp_path, folder):
    study = pacs.add_study(tmp_path / "s", 4, accession="UNIT-BROKEN")
    pacs.break_instance(study.instances[0])
    dicom = dicom_for(pacs)
    (match,) = find(dicom, accession="UNIT-BROKEN")
    with pytest.raises(network.PacsError) as refused:
        retrieve_all(dicom, [match], folder[1])
    message = str(refused.value)
    assert "is incomplete: 3 instances of the 4 the PACS counted arrived" in message
    assert "C-MOVE ended with 0xC000 (Failure: Unable to Process). Nothing was packaged." in message


def test_the_destination_takes_only_the_pacs_asked_and_the_study_asked(pacs, tmp_path, folder):
    """Another AE on the network cannot slip images into a retrieve, nor can the PACS send
    another study's."""
    dicom = dicom_for(pacs)
    study = pacs.add_study(tmp_path / "s", 1, accession="UNIT-ONLY")
    (match,) = find(dicom, accession="UNIT-ONLY")
    other = dcmread(pacs.add_study(tmp_path / "o", 1, accession="UNIT-OTHER").paths[0])
    receiver = retrieve._Receiver(folder[1], "001-", match, pacs.aet, lambda done, total: None)
    with retrieve._destination("main", dicom.pacs["main"], dicom) as destination:
        destination.receiver = receiver
        for calling, dataset, outcome in (
            ("INTRUDER", dcmread(study.paths[0]), "rejected"),
            (pacs.aet, other, 0xC000),
            (pacs.aet, dcmread(study.paths[0]), 0x0000),
        ):
            ae = AE(ae_title=calling)
            ae.add_requested_context(CTImageStorage, dataset.file_meta.TransferSyntaxUID)
            assoc = ae.associate("127.0.0.1", dicom.retrieve_port, ae_title=OWN_AE)
            if outcome == "rejected":
                assert assoc.is_rejected
                continue
            assert int(assoc.send_c_store(dataset).Status) == outcome
            assoc.release()
    assert [p.name for p in folder[0].iterdir()] == ["001-000001.dcm"]
    assert receiver.got.turned_away == {f"an instance of another study ({other.StudyInstanceUID!r})": 1}


def test_the_retrieve_port_taken_is_said(pacs, folder):
    dicom = dicom_for(pacs)
    with retrieve._destination("main", dicom.pacs["main"], dicom):
        with pytest.raises(network.PacsError, match=f"cannot listen on the retrieve port {dicom.retrieve_port}"):
            retrieve._Destination("main", dicom.pacs["main"], dicom)


def layout_in(tmp_path: Path) -> Layout:
    policy = load_policy(REPO / "policies.yaml").policy
    return Layout(policy.model_copy(update={"accounts": policy.accounts.model_copy(update={"root": str(tmp_path)})}))


def test_the_workspace_is_root_only_removed_after_and_clears_what_a_killed_retrieve_left(tmp_path):
    layout = layout_in(tmp_path)
    parent = Path(layout.pacs_retrieve_dir())
    parent.mkdir(mode=0o700)
    (parent / "4242").mkdir()
    (parent / "4242" / "001-000001.dcm").write_bytes(b"left by kill -9")
    (parent / "link").symlink_to("/etc")
    with workspace.retrieve_folder(layout, say=lambda line: None) as (path, descriptor):
        assert sorted(p.name for p in parent.iterdir()) == [path.name]  # leftovers gone, links not followed
        assert os.fstat(descriptor).st_mode & 0o777 == 0o700 and Path("/etc/passwd").exists()
        (path / "001-000001.dcm").write_bytes(b"x")
    assert list(parent.iterdir()) == []
    with pytest.raises(KeyboardInterrupt), workspace.retrieve_folder(layout, say=lambda line: None) as (path, _):
        (path / "x.dcm").write_bytes(b"x")
        raise KeyboardInterrupt
    assert list(parent.iterdir()) == []


def test_a_workspace_others_could_reach_is_refused(tmp_path):
    layout = layout_in(tmp_path)
    Path(layout.pacs_retrieve_dir()).mkdir(mode=0o755)
    os.chmod(layout.pacs_retrieve_dir(), 0o755)
    with pytest.raises(workspace.WorkspaceError, match="must be root's own .root, 0700., is uid 0 mode 0755"):
        with workspace.retrieve_folder(layout, say=lambda line: None):
            pass


def test_dicom_over_tls_both_ways_with_certificates_verified(tmp_path):
    """With `tls: true` the exchange verifies the PACS's certificate (and name), shows its own,
    and its C-MOVE destination takes only a PACS whose certificate its CA signed."""
    ca, cert, key = make_ca(tmp_path)
    (tmp_path / "other").mkdir()
    other_ca, _, _ = make_ca(tmp_path / "other")
    port = PortReservation()
    tls = {
        "DicomTlsEnabled": True, "DicomTlsCertificate": str(cert), "DicomTlsPrivateKey": str(key),
        "DicomTlsTrustedCertificates": str(ca), "DicomTlsRemoteCertificateRequired": True,
    }  # fmt: skip
    modality = {"AET": OWN_AE, "Host": "127.0.0.1", "Port": port.port, "UseDicomTls": True}
    try:
        with OrthancPacs(modalities={"exchange": modality}, config=tls) as pacs:
            pacs.add_study(tmp_path / "s", 2, accession="UNIT-TLS")
            node = PacsNode(ae_title=pacs.aet, host="127.0.0.1", port=pacs.dicom_port, tls=True, ca_file=str(ca))
            dicom = Dicom(
                ae_title=OWN_AE, retrieve_port=port.port, pacs={"main": node}, certificate=str(cert),
                certificate_key=str(key),
            )  # fmt: skip
            network.echo("main", node, dicom)
            for method in ("move", "get"):
                by = dicom.model_copy(update={"pacs": {"main": node.model_copy(update={"retrieve": method})}})
                with tempfile.TemporaryDirectory() as into:
                    descriptor = os.open(into, os.O_RDONLY | os.O_DIRECTORY)
                    try:
                        (got,) = retrieve_all(by, find(by, accession="UNIT-TLS"), descriptor)
                    finally:
                        os.close(descriptor)
                assert got.instances == 2
            with pytest.raises(network.PacsError, match="no DICOM association"):
                network.echo("main", node.model_copy(update={"tls": False, "ca_file": None}), dicom)
            with pytest.raises(network.PacsError, match="certificate verify failed"):
                network.echo("main", node.model_copy(update={"ca_file": str(other_ca)}), dicom)
            with pytest.raises(network.PacsError, match="cannot use the exchange's certificate /nonexistent"):
                network.echo("main", node, dicom.model_copy(update={"certificate": "/nonexistent"}))
    finally:
        port.release()
