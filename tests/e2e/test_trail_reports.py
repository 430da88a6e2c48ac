"""The access trail's reports on a real host: a package made by staff and downloaded over SFTP
shows in `sudo exchange trail patient ID` with its patient, for staff and for the auditor through
their sudo rule (which grants the reports and verify, nothing else); bad input gets a clear error."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess

import pytest

from exchange import paths
from tests.dicom_synth import ct_study
from tests.e2e.clients import openssh, openssh_sftp
from tests.e2e.conftest import audit_events, deployed_host, module_host_name
from tests.sites import outbox_site

pytestmark = pytest.mark.e2e
PATIENT = "E2E-TRAIL-0001"
PARTNER = "alice-clinic"


@pytest.fixture(scope="module")
def downloaded(shared_hosts, tmp_path_factory, request):
    """A deployed host where staff packed a study of PATIENT for the partner, who downloaded it."""
    directory = tmp_path_factory.mktemp("trail-reports")
    with deployed_host(module_host_name(request), shared_hosts, directory, site=outbox_site()) as exchange:
        host = exchange.host
        ct_study(directory / "ct", 3, patient_id=PATIENT)
        tar = subprocess.run(["tar", "-C", str(directory / "ct"), "-c", "."], check=True, capture_output=True).stdout
        study = f"/home/{host.staff_user}/study"
        subprocess.run(
            [*host.ssh_args(), f"mkdir {study} && tar -C {study} -x && chown -R {host.staff_user}: {study}"],
            input=tar,
            check=True,
            timeout=60,
        )
        made = staff(exchange, f"sudo -n exchange package --to {PARTNER} {study}")
        assert made.returncode == 0, made.stdout + made.stderr
        package = re.search(r"/download/(\S+\.zip)", made.stdout + made.stderr)[1]
        got = openssh_sftp(host, PARTNER, exchange.logins[PARTNER].key, f"get download/{package} {directory}/got.zip\n")
        assert got.returncode == 0, got.stderr
        # rsyslog writes the session's end a moment after the client has gone.
        closed = f"session closed for local user {PARTNER}"
        host.ssh(f"timeout 30 sh -c 'until grep -qF \"{closed}\" {paths.SFTP_LOG}; do sleep 0.2; done'")
        yield exchange, package


def staff(exchange, command: str) -> subprocess.CompletedProcess:
    host = exchange.host
    return openssh(host, host.staff_user, host.staff_key, command, timeout=120)


def auditor(exchange, command: str) -> subprocess.CompletedProcess:
    return openssh(exchange.host, "auditor", exchange.host.auditor_key, command, timeout=120)


def test_staff_see_the_package_and_its_download_under_the_patient(downloaded):
    exchange, package = downloaded
    report = staff(exchange, f"sudo -n exchange trail patient {PATIENT} --format json")
    assert report.returncode == 0, report.stderr
    records = json.loads(report.stdout)["records"]
    made = [record for record in records if record["event"] == "package-made"]
    got = [record for record in records if record["event"] == "download"]
    assert len(made) == 1 and made[0]["actor"] == exchange.host.staff_user
    assert made[0]["account"] == PARTNER and made[0]["details"]["package"] == package
    assert got, records
    assert got[-1]["account"] == PARTNER and got[-1]["patient_ids"] == [PATIENT]
    assert got[-1]["details"]["complete"] is True and got[-1]["access_point"]["via"] == "sftp"
    assert got[-1]["local_time"].endswith(("+01:00", "+02:00"))  # the site's zone, Europe/Amsterdam
    reads = [read for read in audit_events(exchange.host, "trail-read") if read.get("subject") == PATIENT]
    assert reads[-1]["by"] == exchange.host.staff_user and reads[-1]["results"] == len(records)
    page = staff(exchange, f"sudo -n exchange trail patient {PATIENT} --format html --lang en")
    assert page.returncode == 0 and "were downloaded completely by" in page.stdout


def test_the_auditor_reads_the_reports_through_sudo_and_nothing_else(downloaded):
    exchange, package = downloaded
    report = auditor(exchange, f"sudo -n exchange trail patient {PATIENT} --format csv")
    assert report.returncode == 0, report.stderr
    rows = list(csv.DictReader(io.StringIO(report.stdout)))
    assert {"package-made", "download"} <= {row["event"] for row in rows}
    account = auditor(exchange, f"sudo -n exchange trail account {PARTNER}")
    assert account.returncode == 0 and package in account.stdout, account.stderr
    assert auditor(exchange, f"sudo -n exchange trail staff {exchange.host.staff_user}").returncode == 0
    verified = auditor(exchange, "sudo -n exchange trail verify")
    assert verified.returncode == 0 and verified.stdout.startswith("intact: "), verified.stdout + verified.stderr
    for refused in ("sudo -n exchange trail ingest", "sudo -n exchange link list", "sudo -n exchange trail verify x"):
        answer = auditor(exchange, refused)
        assert (answer.returncode, answer.stdout) == (1, ""), (refused, answer.stderr)
    listing = auditor(exchange, "sudo -n -l").stdout
    (rule,) = [line.strip() for line in listing.splitlines() if line.strip().startswith("(")]
    assert rule == (
        "(root) NOPASSWD: /usr/local/bin/exchange audit-read *, /usr/local/bin/exchange trail patient *, "
        "/usr/local/bin/exchange trail account *, /usr/local/bin/exchange trail staff *, "
        "/usr/local/bin/exchange trail verify"
    )


def test_bad_input_gets_a_clear_error(downloaded):
    exchange, _ = downloaded
    unknown = staff(exchange, "sudo -n exchange trail patient NOBODY-4711")
    assert (unknown.returncode, unknown.stdout) == (1, "")
    assert unknown.stderr == "no records for patient NOBODY-4711 in the trail\n"
    bad_date = auditor(exchange, f"sudo -n exchange trail patient {PATIENT} --since 2026-13-01")
    assert bad_date.returncode == 2
    assert "--since 2026-13-01: not a date; use YYYY-MM-DD or YYYY-MM-DDTHH:MM" in bad_date.stderr
    backwards = staff(exchange, f"sudo -n exchange trail patient {PATIENT} --since 2026-12-04 --until 2026-12-03")
    assert backwards.returncode == 2 and "--since must be before --until" in backwards.stderr
    not_an_id = staff(exchange, "sudo -n exchange trail patient 'P1\x1b[2J'")
    assert not_an_id.returncode == 2 and "not a patient ID" in not_an_id.stderr and "\x1b" not in not_an_id.stderr
