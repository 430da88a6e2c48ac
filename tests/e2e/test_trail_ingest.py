"""The access trail's ingest on a real host: a package downloaded over SFTP (paramiko with a
password, OpenSSH's sftp with a key) and over the web page (an HTTPS client, as a browser)
shows up under its patient's ID (Trail.query), from the real audit log, sftp.log and sshd's logins.log;
the web page's own SSH session to sshd (on the same loopback as the SFTP clients here) is no
SFTP login."""

from __future__ import annotations

import hashlib
import json
import shlex

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from exchange import paths
from tests import testhost
from tests.e2e.clients import openssh_sftp, paramiko_sftp, portal_form
from tests.e2e.conftest import make_exchange
from tests.e2e.test_portal import client, issue_link, put_study
from tests.sites import outbox_site

pytestmark = pytest.mark.e2e

AGENT = 'Mozilla/5.0 (trail test; "quoted") <b>bold</b>'  # the browser's word: kept as data, as it came
PATIENT_ID = str(dcmread(get_testdata_file("JPEG2000.dcm", download=False)).PatientID)


@pytest.fixture(scope="module")
def web(shared_hosts, tmp_path_factory):
    host = testhost.boot("trail-ingest", log=lambda message: print(message, flush=True), directory=shared_hosts)
    directory = tmp_path_factory.mktemp("trail-ingest")
    try:
        yield make_exchange(
            host, directory, site=outbox_site() | {"portal_url": host.portal_url}, portal=host.portal_data()
        )
    finally:
        testhost.shutdown(host)


# The trail as the tools read it (exchange trail patient|account, Part 3's, read it the same way).
QUERY = (
    "import json, sys; from exchange.trail.store import Trail; "
    "print(json.dumps([r.as_dict() for r in Trail().query(**json.loads(sys.argv[1]))]))"
)


def trail_of(web, **query) -> list[dict]:
    """The trail brought up to date (`exchange trail ingest`), then asked."""
    web.host.ssh("exchange trail ingest --quiet")
    python = f"{paths.TOOLS_VENV}/bin/python"
    return json.loads(web.host.ssh(shlex.join([python, "-c", QUERY, json.dumps(query)])).stdout)


def test_sftp_and_web_downloads_name_the_patient_and_the_web_pages_own_session_is_left_out(web, tmp_path):
    link = issue_link(web)
    package, sha256 = put_study(web, link.account)
    partner = web.logins["alice-clinic"]
    partner_package, _ = put_study(web, partner.name)

    session = paramiko_sftp(web.host, link.account, password=link.password)  # over SFTP, a password
    session.get(f"/download/{package}", str(tmp_path / "sftp.zip"))
    session.close()
    got = openssh_sftp(web.host, partner.name, partner.key, f"get /download/{partner_package} {tmp_path}/key.zip\n")
    assert got.returncode == 0, got.stderr
    with client(web) as http:  # over the web page
        http.headers["user-agent"] = AGENT
        assert portal_form(http, link.url.removeprefix(web.host.portal_url), password=link.password).status_code == 200
        whole = http.get(f"/files/download/{package}")
        assert hashlib.sha256(whole.content).hexdigest() == sha256
        assert http.get(f"/files/download/{package}", headers={"Range": "bytes=0-999"}).status_code == 206
        assert http.get(f"/files/view/download/{package}").status_code == 200
    assert "Accepted keyboard-interactive/pam for " + link.account in web.host.ssh(f"cat {paths.LOGINS_LOG}").stdout

    ingested = web.host.ssh("exchange trail ingest")  # (the hourly job may have run it meanwhile)
    assert ingested.stdout.startswith("trail: ") and "distrusted" not in ingested.stderr, ingested

    records = trail_of(web, patient_id=PATIENT_ID)
    mine = [r for r in records if r["account"] == link.account]
    assert sorted(r["event"] for r in mine) == ["download", "download", "download", "package-made", "web-view"]
    (made,) = [r for r in mine if r["event"] == "package-made"]
    (viewed,) = [r for r in mine if r["event"] == "web-view"]
    by_sftp, *by_web = [r for r in mine if r["event"] == "download"]  # in time order: SFTP's came first
    by_web.sort(key=lambda r: r["details"]["bytes"], reverse=True)  # the whole, then the piece (same second)
    assert viewed["access_point"]["agent"] == AGENT and viewed["details"]["file"] == package
    assert made["details"]["sha256"] == sha256 and made["patient_ids"] == [PATIENT_ID]
    assert by_sftp["access_point"]["via"] == "sftp" and by_sftp["access_point"]["auth"] == "password"
    assert by_sftp["outcome"] == "ok" and by_sftp["details"]["complete"] is True
    assert by_sftp["details"]["sha256"] == sha256
    assert [(r["access_point"]["via"], r["outcome"], r["details"]["complete"]) for r in by_web] == [
        ("web", "ok", True), ("web", "incomplete", False)  # the range is a piece, not the package
    ]  # fmt: skip
    assert by_web[0]["access_point"]["agent"] == AGENT
    assert "@" in by_sftp["actor"] and "***" in by_sftp["actor"]  # the link's masked recipient

    theirs = [r for r in records if r["account"] == partner.name and r["event"] == "download"]
    assert len(theirs) == 1 and theirs[0]["actor"] == f"{partner.name} radiology"
    assert theirs[0]["access_point"]["auth"].startswith("SHA256:")  # the key's fingerprint, as sshd logged it

    # One SFTP login of the link's own client; the web page's SSH session (from loopback, as the
    # clients here are) is its web login only.
    account = trail_of(web, account=link.account)
    logins = [r["event"] for r in account if r["event"] in ("sftp-login", "web-login")]
    assert sorted(logins) == ["sftp-login", "web-login"]
    web_login = next(r for r in account if r["event"] == "web-login")
    assert web_login["access_point"] == {"via": "web", "address": "127.0.0.1", "agent": AGENT}

    assert trail_of(web, patient_id=PATIENT_ID) == records  # read again from where it stopped: nothing twice

    # A local account (not root) can reach the chroot's /dev/log: its line names the account (the
    # socket's stamp) but also its sender's uid, from the kernel: not the account's, not believed.
    conf = f"{paths.LOG_SOCKETS_DIR}/{partner.name}.conf"
    socket_path = web.host.ssh(f'sed -n \'s/.*Socket="\\([^"]*\\)".*/\\1/p\' {conf}').stdout.strip()
    forged = f'close "/download/{partner_package}" bytes read 99 written 0'
    logger = ["logger", "-u", socket_path, "-t", "internal-sftp[4242]", forged]
    web.host.ssh(shlex.join(["runuser", "-u", testhost.STAFF_USER, "--", *logger]))
    wait = f"until grep -qF {shlex.quote(forged)} {paths.SFTP_LOG}; do sleep 0.2; done"
    web.host.ssh(shlex.join(["timeout", "30", "sh", "-c", wait]))
    line = next(x for x in web.host.ssh(f"cat {paths.SFTP_LOG}").stdout.splitlines() if forged in x)
    staff_uid = web.host.ssh(f"id -u {testhost.STAFF_USER}").stdout.strip()
    assert f"account={partner.name} uid={staff_uid} internal-sftp[4242]: " in line
    ingested = web.host.ssh("exchange trail ingest --quiet")
    assert (
        "distrusted: sftp:" in ingested.stderr
        and f"a line of {partner.name} written by uid {staff_uid}" in ingested.stderr
    )
    (download,) = [r for r in trail_of(web, account=partner.name) if r["event"] == "download"]  # the real one only
    assert download["details"]["bytes"] != 99
    assert "uid" not in download["details"]  # the real download's lines carry the account's own uid
