"""PACS nodes in the site data and what staff name to find a study: refused before any
association, with the key or option named."""

import pytest

from exchange.pacs.query import QueryError, StudyQuery
from exchange.site import SiteError, parse_site
from roles.settings import HostSettingsError, host_settings
from tests.sites import outbox_site

NODE = {"ae_title": "MAINPACS", "host": "pacs.hospital.example", "port": 104}


def with_dicom(**dicom) -> dict:
    return outbox_site() | {"dicom": dicom}


def test_pacs_nodes_round_trip_with_their_defaults():
    site = parse_site(with_dicom(ae_title="EXCHANGE01", pacs={"main": NODE}), "test")
    assert site.dicom.ae_title == "EXCHANGE01" and site.dicom.retrieve_port == 11112
    name, node = site.dicom.node(None)  # the only node is the default
    assert name == "main" and node.retrieve == "move" and not node.tls


@pytest.mark.parametrize(
    ("dicom", "message"),
    [
        ({"ae_title": "A" * 17}, "site.dicom.ae_title: must be a DICOM AE title"),
        ({"ae_title": "BACK\\SLASH"}, "site.dicom.ae_title: must be a DICOM AE title"),
        ({"ae_title": " LEADING"}, "site.dicom.ae_title: must be a DICOM AE title"),
        ({"retrieve_port": 70000}, "site.dicom.retrieve_port: Input should be less than or equal to 65535"),
        ({"pacs": {"Main PACS": NODE}}, "site.dicom.pacs.Main PACS.[key]: must be a short name for the command line"),
        ({"pacs": {"main": {**NODE, "retrieve": "push"}}}, "site.dicom.pacs.main.retrieve: Input should be 'move' or"),
        ({"pacs": {"main": {**NODE, "ca_file": "/etc/ca.pem"}}}, "site.dicom.pacs.main.ca_file: is only used with tls"),
        ({"pacs": {"main": {**NODE, "tls": True, "ca_file": "ca.pem"}}}, "must be an absolute path on the server"),
        ({"pacs": {"main": NODE}, "default_pacs": "other"}, "site.dicom.default_pacs: names no PACS node; known: main"),
        ({"pacs": {"main": {"host": "pacs"}}}, "site.dicom.pacs.main.ae_title: required key is missing"),
    ],
)
def test_bad_pacs_nodes_are_refused_naming_the_key(dicom, message):
    with pytest.raises(HostSettingsError) as refused:
        host_settings("exchange01", {"site": with_dicom(**dicom)})
    assert message in str(refused.value)


def test_a_pacs_not_named_is_refused_naming_those_known():
    site = parse_site(with_dicom(pacs={"main": NODE, "archive": NODE}), "test")
    with pytest.raises(SiteError, match="which PACS. name one with --pacs; known: archive, main"):
        site.dicom.node(None)
    with pytest.raises(
        SiteError, match="--pacs nope: no PACS node of that name in the site data; known: archive, main"
    ):
        site.dicom.node("nope")
    assert site.dicom.node("archive")[0] == "archive"
    with pytest.raises(SiteError, match=r"known: none \(set site.dicom.pacs"):
        parse_site(outbox_site(), "test").dicom.node(None)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "name the study: --accession, --study-uid, or --patient-id"),
        ({"accession": "A*"}, "--accession 'A\\*': must be 1-16 characters, no wildcards"),
        ({"accession": "A" * 17}, "--accession"),
        ({"accession": "A\\B"}, "no wildcards"),
        ({"patient_id": "12?4"}, "--patient-id '12\\?4'"),
        ({"study_uid": "1.2.03"}, "--study-uid '1.2.03': must be a DICOM UID"),
        ({"study_uid": "1." + "2" * 63}, "--study-uid"),
        ({"accession": "A1", "date": "2026-01-01"}, "--date goes with --patient-id"),
        ({"patient_id": "P1", "date": "01-01-2026"}, "--date '01-01-2026': must be YYYY-MM-DD"),
        ({"patient_id": "P1", "date": "2026-02-01..2026-01-01"}, "the range ends before it starts"),
    ],
)
def test_bad_study_queries_are_refused_before_the_pacs_is_asked(fields, message):
    with pytest.raises(QueryError, match=message.replace("(", r"\(")) as refused:
        StudyQuery(**fields)
    assert refused.value.status == 2


def test_a_study_query_asks_for_exact_values_and_the_counts():
    keys = StudyQuery(patient_id="P1", date="2026-01-01..2026-01-31").identifier()
    assert keys.QueryRetrieveLevel == "STUDY" and keys.PatientID == "P1" and keys.StudyDate == "20260101-20260131"
    assert keys.AccessionNumber == "" and "NumberOfStudyRelatedInstances" in keys
    assert StudyQuery(accession="A1").shown() == "accession A1"
