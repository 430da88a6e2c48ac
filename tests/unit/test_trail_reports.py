"""`exchange trail patient|account|staff`: each format over a real trail in a tmp folder, what
others named escaped where it lands, the period filters and the refusals."""

from __future__ import annotations

import csv
import datetime
import io
import json
import re
import zoneinfo

import pytest

from exchange.trail import reports
from exchange.trail.record import AccessRecord
from exchange.trail.reports import Query, ReportError

AMSTERDAM = zoneinfo.ZoneInfo("Europe/Amsterdam")
UTC = datetime.UTC
# What a partner may name a file, and a browser call itself: markup, a formula, a terminal escape.
HOSTILE_FILE = '<script>alert(1)</script>=HYPERLINK("http://evil.example/x")\x1b[2J.zip'
HOSTILE_AGENT = "Mozilla/5.0 \x1b]0;owned\x07[bold]x[/bold]"


def download(time: str = "2026-12-03T13:02:00+00:00", complete: bool = True, **changes) -> AccessRecord:
    fields = {
        "time": time,
        "event": "download",
        "account": "link-k7m2p9qa",
        "actor": "p***@example.org",
        "access_point": {"via": "web", "address": "192.0.2.7", "agent": HOSTILE_AGENT},
        "patient_ids": ("P123",),
        "study_uids": ("1.2.840.1",),
        "details": {"file": HOSTILE_FILE, "bytes": 2048, "offset": 0, "complete": complete},
        **changes,
    }
    return AccessRecord(**fields)


def packaged(time: str = "2026-12-03T12:58:00+00:00") -> AccessRecord:
    return AccessRecord(
        time=time,
        event="package-made",
        account="link-k7m2p9qa",
        actor="staff-demo",
        access_point={"via": "server"},
        patient_ids=("P123",),
        study_uids=("1.2.840.1",),
        details={"package": "CT thorax.zip", "accession_numbers": ["A2026-77"], "bytes": 2048},
    )


# --since and --until


def test_a_date_is_its_whole_day_in_the_sites_zone_until_inclusive():
    assert reports.parse_moment("--since", "2026-12-03", AMSTERDAM) == datetime.datetime(2026, 12, 2, 23, tzinfo=UTC)
    until = reports.parse_moment("--until", "2026-12-03", AMSTERDAM, until=True)
    assert until == datetime.datetime(2026, 12, 3, 23, tzinfo=UTC)  # the next local midnight: the day is in


def test_a_minute_is_in_until_its_end():
    since = reports.parse_moment("--since", "2026-12-03T14:02", AMSTERDAM)
    until = reports.parse_moment("--until", "2026-12-03T14:02", AMSTERDAM, until=True)
    assert (since, until) == (
        datetime.datetime(2026, 12, 3, 13, 2, tzinfo=UTC),
        datetime.datetime(2026, 12, 3, 13, 3, tzinfo=UTC),
    )


def test_the_day_summer_time_ends_has_25_hours():
    since = reports.parse_moment("--since", "2026-10-25", AMSTERDAM)
    until = reports.parse_moment("--until", "2026-10-25", AMSTERDAM, until=True)
    assert until - since == datetime.timedelta(hours=25)


def test_a_date_without_a_zone_of_the_site_is_utc():
    assert reports.parse_moment("--since", "2026-12-03", UTC) == datetime.datetime(2026, 12, 3, tzinfo=UTC)


@pytest.mark.parametrize(
    "value",
    [
        "2026-13-01",
        "2026-12-1",
        "03-12-2026",
        "yesterday",
        "2026-12-03 14:02",
        "2026-12-03T14:02:00",
        "",
        "２０２６-12-03",
    ],
)
def test_a_bad_date_names_the_option_and_the_form(value):
    with pytest.raises(ReportError) as refused:
        reports.parse_moment("--until", value, AMSTERDAM, until=True)
    assert str(refused.value).startswith(f"--until {value}: not a date; use YYYY-MM-DD or YYYY-MM-DDTHH:MM")
    assert refused.value.status == 2


def test_since_after_until_is_refused():
    since = reports.parse_moment("--since", "2026-12-04", AMSTERDAM)
    until = reports.parse_moment("--until", "2026-12-03", AMSTERDAM, until=True)
    with pytest.raises(ReportError, match="--since must be before --until"):
        Query("patient", "P123", since, until)
    same_day = reports.parse_moment("--since", "2026-12-03", AMSTERDAM)
    assert Query("patient", "P123", same_day, until).filters() == {
        "patient_id": "P123",
        "since": same_day,
        "until": until,
    }


# What cannot be a patient ID or a name


@pytest.mark.parametrize("patient_id", ["P1\x1b[2J", "P1\nP2", "x" * 65, "P1\\P2", " P1", "", "P1\u202e"])
def test_what_cannot_be_a_patient_id_is_refused(patient_id):
    with pytest.raises(ReportError, match="not a patient ID") as refused:
        Query("patient", patient_id)
    assert "\x1b" not in str(refused.value) and "\n" not in str(refused.value)


def test_a_patient_id_of_64_characters_with_spaces_inside_is_one():
    assert Query("patient", "X" * 60 + " 1^2").filters()["patient_id"] == "X" * 60 + " 1^2"


@pytest.mark.parametrize("report", ["account", "staff"])
@pytest.mark.parametrize("name", ["Alice", "alice clinic", "a" * 33, "alice\x1b", "../root"])
def test_what_cannot_be_an_account_or_login_is_refused(report, name):
    with pytest.raises(ReportError, match="name"):
        Query(report, name)


def test_each_report_asks_the_trail_its_own_question():
    assert Query("account", "alice-clinic").filters()["account"] == "alice-clinic"
    assert Query("staff", "staff-demo").filters()["actor"] == "staff-demo"


# The formats: what others named escaped where it lands


def test_the_table_shows_local_times_and_escapes_what_others_named():
    table = reports.as_table([packaged(), download()], AMSTERDAM)
    assert "\x1b" not in table and "\x07" not in table
    assert "\\x1b]0;owned\\x07[bold]x[/bold]" in table  # escaped, and no rich markup either
    assert "2026-12-03 13:58:00" in table and "2026-12-03 14:02:00" in table
    lines = table.splitlines()
    assert lines[0].split() == list(reports.COLUMNS)
    assert "package-made" in lines[1] and "download" in lines[2]


@pytest.mark.parametrize("start", ["=", "+", "-", "@", "\t", "\r"])
def test_csv_guards_every_formula_start(start):
    assert reports.spreadsheet_safe(f"{start}1+1") == f"'{start}1+1"
    assert reports.spreadsheet_safe(f"a{start}1") == f"a{start}1"


def test_csv_cells_are_escaped_and_no_cell_starts_a_formula():
    record = download(patient_ids=("=1+2",), actor="@SUM(A1)", account="-x")
    text = reports.as_csv([record], AMSTERDAM)
    assert "\x1b" not in text
    header, row = list(csv.reader(io.StringIO(text)))
    assert header == list(reports.COLUMNS)
    cells = dict(zip(header, row, strict=True))
    assert cells["patients"] == "'=1+2" and cells["actor"] == "'@SUM(A1)" and cells["account"] == "'-x"
    assert cells["time"] == "2026-12-03T14:02:00+01:00"
    assert cells["details"].startswith("file=<script>") and "\\x1b[2J" in cells["details"]
    assert not any(cell.startswith(("=", "+", "-", "@", "\t", "\r")) for cell in row)


def test_json_is_ascii_with_local_times_and_the_question():
    query = Query("patient", "P123", reports.parse_moment("--since", "2026-12-01", AMSTERDAM))
    text = reports.as_json([download()], AMSTERDAM, query)
    assert text.isascii() and "\x1b" not in text
    document = json.loads(text)
    assert document["report"] == "patient" and document["subject"] == "P123" and document["zone"] == "Europe/Amsterdam"
    assert document["since"] == "2026-11-30T23:00:00+00:00" and document["until"] is None
    (shown,) = document["records"]
    assert shown["local_time"] == "2026-12-03T14:02:00+01:00"
    assert shown["details"]["file"] == HOSTILE_FILE  # the data itself, intact
    assert "source" not in shown


def _html(records, lang="en", **query):
    return reports.render(records, Query("patient", "P123", **query), "html", AMSTERDAM, lang)


def test_html_tells_a_patient_in_plain_language_in_their_zone():
    english = _html([packaged(), download(), download("2026-12-03T15:00:00+00:00", complete=False)])
    text = re.sub(r"<[^>]+>", "", english)
    assert (
        "On Thursday 3 December 2026 at 14:02 (CET), your images of study 1.2.840.1 (file " in text
        and ") were downloaded completely by p***@example.org (account link-k7m2p9qa) from internet address "
        "192.0.2.7, on the secure web page."
        in text
    )
    assert (
        "at 13:58 (CET), your images of study A2026-77 (file CT thorax.zip) were packed to be sent by staff-demo"
        in (text)
    )
    assert "at 16:00 (CET), your images of study 1.2.840.1" in text and "were downloaded in part" in text
    dutch = re.sub(r"<[^>]+>", "", _html([download()], "nl"))
    assert "Op donderdag 3 december 2026 om 14:02 (CET) zijn uw beelden van onderzoek 1.2.840.1" in dutch
    assert "volledig gedownload door p***@example.org (account link-k7m2p9qa) vanaf internetadres 192.0.2.7" in dutch
    assert '<html lang="nl">' in _html([download()], "nl")


def test_html_escapes_and_fetches_nothing():
    page = _html([download()])
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "\x1b" not in page and "\\x1b[2J" in page
    assert not re.search(r"\b(src|href|action)\s*=", page, re.I)  # no request leaves the page
    assert "default-src 'none'" in page


def test_html_names_the_period():
    since = reports.parse_moment("--since", "2026-12-01", AMSTERDAM)
    until = reports.parse_moment("--until", "2026-12-03", AMSTERDAM, until=True)
    page = _html([download()], since=since, until=until)
    assert "from Tuesday 1 December 2026 at 00:00 (CET) until Friday 4 December 2026 at 00:00 (CET)" in page


def test_html_is_a_patients_page_and_speaks_nl_or_en():
    with pytest.raises(ReportError, match="patient's overview"):
        reports.render([download()], Query("account", "link-k7m2p9qa"), "html", AMSTERDAM)
    with pytest.raises(ReportError, match="--lang de"):
        _html([download()], "de")


# The commands, over a real trail in a tmp folder, brought up to date from a real audit log


class Host:
    """The trail's folder, its lock folder and the logs the ingest reads, all in tmp."""

    def __init__(self, tmp_path, monkeypatch, audit_socket) -> None:
        import functools

        import yaml

        from exchange import paths
        from exchange.trail import ingest
        from exchange.trail.store import Trail
        from roles import REPO
        from tests.sites import outbox_site

        self.audit_socket = audit_socket
        (tmp_path / "run").mkdir()
        monkeypatch.setattr(paths, "TRAIL_DIR", str(tmp_path / "trail"))
        monkeypatch.setattr(paths, "TOOL_RUN_DIR", str(tmp_path / "run"))
        self.site = tmp_path / "site.yaml"
        self.site.write_text(yaml.safe_dump(outbox_site()))  # Europe/Amsterdam, the default zone
        monkeypatch.setenv("EXCHANGE_SITE", str(self.site))
        monkeypatch.setenv("EXCHANGE_POLICY", str(REPO / "policies.yaml"))
        monkeypatch.setenv("SUDO_USER", "auditor-ann")
        self.audit_log = tmp_path / "audit.log"
        self.audit_log.write_text("")
        logs = functools.partial(
            ingest.LogPaths,
            audit=str(self.audit_log),
            sftp=str(tmp_path / "sftp.log"),
            logins=str(tmp_path / "logins.log"),
            partners=str(tmp_path / "partners.yaml"),
            site=str(self.site),
        )
        monkeypatch.setattr(ingest, "LogPaths", logs)
        self.trail = Trail(str(tmp_path / "trail"), str(tmp_path / "run"))

    def append(self, *records: AccessRecord) -> None:
        with self.trail.writing() as writer:
            writer.append(records)

    def logged(self, **entry) -> None:
        """One line of the audit log as rsyslog writes it, the writer's uid root's."""
        with self.audit_log.open("a") as log:
            log.write(json.dumps({**entry, "writer_uid": 0}) + "\n")

    def run(self, *arguments: str):
        from typer.testing import CliRunner

        from exchange import cli

        return CliRunner().invoke(cli.app, ["trail", *arguments])

    def reads(self) -> list[dict]:
        return [record for record in self.audit_socket.records() if record["event"] == "trail-read"]


@pytest.fixture
def host(tmp_path, monkeypatch, audit_socket):
    return Host(tmp_path, monkeypatch, audit_socket)


def test_a_patients_report_brings_the_trail_up_to_date_then_records_the_read(host):
    host.append(packaged())
    # Logged after the last ingest: the report reads it in before it asks.
    host.logged(
        event="study-packaged", time="2026-12-03T13:01:00+00:00", account="alice-clinic", by="staff-bob",
        package="MR knee.zip", patient_ids=["P123"], study_uids=["1.2.840.9"], bytes=10, sha256="ab" * 32,
    )  # fmt: skip
    host.logged(
        event="study-packaged", time="2026-12-03T13:05:00+00:00", account="alice-clinic", by="staff-bob",
        package="other.zip", patient_ids=["P999"], study_uids=["1.2.840.10"], bytes=10, sha256="cd" * 32,
    )  # fmt: skip
    answer = host.run("patient", "P123")
    assert answer.exit_code == 0, answer.output
    lines = answer.stdout.splitlines()
    assert lines[0].split() == list(reports.COLUMNS) and len(lines) == 3
    assert "2026-12-03 13:58:00" in lines[1] and "staff-demo" in lines[1]  # local time, oldest first
    assert "2026-12-03 14:01:00" in lines[2] and "staff-bob" in lines[2] and "MR knee.zip" in lines[2]
    assert "P999" not in answer.stdout
    assert answer.stderr == "2 records (times Europe/Amsterdam)\n"
    (read,) = host.reads()
    assert read["by"] == "auditor-ann" and read["report"] == "patient" and read["subject"] == "P123"
    assert read["results"] == 2 and read["patient_ids"] == ["P123"]
    assert read["query"] == {"report": "patient", "subject": "P123", "since": None, "until": None, "format": "table"}


def test_since_and_until_are_days_in_the_sites_zone(host):
    # 23:30 UTC on 2 December is 00:30 on 3 December in Amsterdam.
    host.append(
        download("2026-12-02T22:30:00+00:00"), download("2026-12-02T23:30:00+00:00"),
        download("2026-12-03T22:59:59+00:00"), download("2026-12-03T23:00:00+00:00"),
    )  # fmt: skip
    answer = host.run("patient", "P123", "--since", "2026-12-03", "--until", "2026-12-03", "--format", "json")
    assert answer.exit_code == 0, answer.output
    document = json.loads(answer.stdout)
    assert [record["local_time"] for record in document["records"]] == [
        "2026-12-03T00:30:00+01:00",
        "2026-12-03T23:59:59+01:00",
    ]
    assert host.reads()[0]["query"]["since"] == "2026-12-02T23:00:00+00:00"
    answer = host.run("patient", "P123", "--since", "2026-12-03T23:59")
    assert answer.exit_code == 0 and answer.stdout.count("download") == 2  # 23:59:59 and 00:00 local


def test_an_account_and_a_staff_members_report_and_csv(host):
    host.append(packaged(), download(), download(account="alice-clinic", actor="Huisartsen Oost"))
    answer = host.run("account", "link-k7m2p9qa", "--format", "csv")
    assert answer.exit_code == 0, answer.output
    rows = list(csv.reader(io.StringIO(answer.stdout)))
    assert [row[1] for row in rows[1:]] == ["package-made", "download"]
    assert "\x1b" not in answer.stdout
    answer = host.run("staff", "staff-demo")
    assert answer.exit_code == 0 and "package-made" in answer.stdout and "download" not in answer.stdout
    assert [read["report"] for read in host.reads()] == ["account", "staff"]


def test_the_patients_page_in_dutch(host):
    host.append(download())
    answer = host.run("patient", "P123", "--format", "html", "--lang", "nl")
    assert answer.exit_code == 0, answer.output
    assert answer.stdout.startswith("<!DOCTYPE html>") and "volledig gedownload" in answer.stdout
    assert "Afdeling Radiologie, het Testziekenhuis." in answer.stdout  # the site names itself
    assert "&lt;script&gt;" in answer.stdout and "<script>" not in answer.stdout
    assert host.reads()[0]["query"]["format"] == "html"


def test_without_site_data_the_report_is_in_utc(host):
    host.site.unlink()
    host.append(download())
    answer = host.run("patient", "P123")
    assert answer.exit_code == 0, answer.output
    assert "2026-12-03 13:02:00" in answer.stdout and answer.stderr.endswith("(times UTC)\n")


def test_an_unknown_patient_says_so_and_the_read_is_recorded_with_no_results(host):
    """NEN 7513: a read that finds nothing is a read too (someone probing whether a patient's
    images were ever exchanged)."""
    host.append(download())
    answer = host.run("patient", "P404")
    assert answer.exit_code == 1
    assert answer.stdout == "" and answer.stderr == "no records for patient P404 in the trail\n"
    answer = host.run("account", "link-zzzzzzzz", "--since", "2026-12-04")
    assert answer.exit_code == 1 and "no records for account link-zzzzzzzz in that period" in answer.stderr
    answer = host.run("patient", "P123", "--until", "2026-12-02")
    assert answer.exit_code == 1 and "in that period" in answer.stderr
    assert [(read["report"], read["subject"], read["results"]) for read in host.reads()] == [
        ("patient", "P404", 0),
        ("account", "link-zzzzzzzz", 0),
        ("patient", "P123", 0),
    ]
    assert host.reads()[0]["patient_ids"] == ["P404"]


def test_a_report_that_fails_to_render_is_still_recorded_as_a_read(host, monkeypatch):
    host.append(download())

    def broken(*arguments, **keywords):
        raise RuntimeError("the template is broken")

    monkeypatch.setattr(reports, "render", broken)
    answer = host.run("patient", "P123")
    assert answer.exit_code != 0 and answer.stdout == ""
    assert [(read["subject"], read["results"]) for read in host.reads()] == [("P123", 1)]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            ["patient", "P123", "--since", "3-12-2026"],
            "--since 3-12-2026: not a date; use YYYY-MM-DD or YYYY-MM-DDTHH:MM",
        ),
        (["patient", "P123", "--until", "2026-12-03 14:00"], "--until 2026-12-03 14:00: not a date; use YYYY-MM-DD"),
        (["patient", "P123", "--since", "2026-12-04", "--until", "2026-12-03"], "--since must be before --until"),
        (["patient", "P1\x1b[2J"], "P1\\x1b[2J: not a patient ID"),
        (["patient", "P" * 65], "not a patient ID (1-64 characters"),
        (["account", "Alice Clinic"], "Alice Clinic: not an account name"),
        (["staff", "bob\n"], "bob\\n: not a staff member's login name"),
        (["patient", "P123", "--format", "xml"], "--format xml: one of table, json, csv, html"),
        (["patient", "P123", "--format", "html", "--lang", "de"], "--lang de: one of nl, en"),
        (["account", "link-k7m2p9qa", "--format", "html"], "--format html is a patient's overview"),
    ],
)
def test_bad_input_is_refused_before_anything_is_read(host, arguments, message):
    host.append(download())
    host.logged(event="link-revoked", time="2026-12-03T14:00:00+00:00", account="link-k7m2p9qa", by="staff-demo")
    answer = host.run(*arguments)
    assert answer.exit_code == 2, answer.output
    assert message in answer.stderr and answer.stdout == ""
    assert "\x1b" not in answer.stderr
    assert host.reads() == []
    with host.trail.writing() as writer:  # not ingested either: refused before the trail was touched
        assert writer.position("audit") is None


def test_the_read_becomes_a_record_of_the_trail_under_its_reader(host):
    """The trail-read audit record as the ingest maps it: the reader acts, the query is kept."""
    host.append(download())
    assert host.run("patient", "P123", "--format", "csv").exit_code == 0
    (read,) = host.reads()
    host.logged(**read)  # as rsyslog writes it to the audit log
    answer = host.run("staff", "auditor-ann", "--format", "json")
    assert answer.exit_code == 0, answer.output
    (record,) = json.loads(answer.stdout)["records"]
    assert record["event"] == "trail-read" and record["actor"] == "auditor-ann"
    assert record["details"]["query"]["subject"] == "P123" and record["details"]["results"] == 1


def test_html_names_a_downloaded_package_by_the_accession_numbers_it_was_made_with():
    over_sftp = download(
        access_point={"via": "sftp", "address": "192.0.2.9", "auth": "password"},
        details={"file": "/download/CT thorax.zip", "bytes": 2048, "complete": True},
    )
    elsewhere = download(account="alice-clinic", details={"file": "/download/CT thorax.zip", "complete": True})
    text = re.sub(r"<[^>]+>", "", _html([packaged(), over_sftp, elsewhere]))
    assert "your images of study A2026-77 (file /download/CT thorax.zip) were downloaded completely" in text
    assert "over SFTP (a secure file transfer)" in text
    # Another account's file of the same name is another package: its study stays the UID.
    assert "your images of study 1.2.840.1 (file /download/CT thorax.zip)" in text
