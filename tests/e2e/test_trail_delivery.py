"""Delivery follow-up on a real host: packages downloaded over SFTP (or not) reach the access
trail, `link list` shows them, and `notify-delivery` mails the reminder and the staff notices
through the real SMTP server (tests/messaging.py) once, not twice."""

from __future__ import annotations

import base64
import datetime
import json
import shlex
import subprocess
import time

import pytest

from exchange import paths
from tests import testhost
from tests.dicom_synth import ct_study
from tests.e2e.clients import paramiko_sftp
from tests.e2e.conftest import CA_ON_HOST, make_exchange
from tests.e2e.test_links import audit_events, issue, run
from tests.sites import relay_site

pytestmark = pytest.mark.e2e

STAFF = "desk@hospital.example"  # the test site's staff mailbox (staff_language en)


@pytest.fixture(scope="module")
def delivering(shared_hosts, tmp_path_factory, relay):
    host = testhost.boot("delivery", log=lambda message: print(message, flush=True), directory=shared_hosts)
    try:
        ca = base64.b64encode(relay.ca.read_bytes()).decode()
        host.ssh(f"install -d {paths.CONFIG_DIR} && echo {ca} | base64 -d > {CA_ON_HOST}")
        exchange = make_exchange(
            host, tmp_path_factory.mktemp("delivery"), site=relay_site(relay.smtp.port, relay.sms.url, CA_ON_HOST)
        )
        # The hourly job would send the follow-ups itself at its minute: here the test runs them.
        host.ssh("systemctl stop cron")
        yield exchange
    finally:
        testhost.shutdown(host)


def reminders_in_trail(exchange) -> list[dict]:
    """The trail's reminder-sent records, once `link list` has brought it up to date."""
    listed(exchange)
    query = (
        "import json; from exchange.trail.store import Trail; "
        "print(json.dumps([r.as_dict() for r in Trail().query(events={'reminder-sent'})]))"
    )
    return json.loads(exchange.host.ssh(shlex.join([f"{paths.TOOLS_VENV}/bin/python", "-c", query])).stdout)


def listed(exchange) -> dict[str, dict]:
    answer = run(exchange, "link", "list", "--json")
    assert answer.returncode == 0, answer.stderr
    return {row["account"]: row for row in map(json.loads, answer.stdout.splitlines())}


def test_reminder_and_notices_go_out_once_through_the_real_smtp_server(delivering, relay, tmp_path):
    notified = issue(delivering, relay, "--lang", "en", "--notify-downloaded")
    waiting = issue(delivering, relay, "--lang", "nl", "--days", "1")
    revoked = issue(delivering, relay, "--lang", "en")
    empty = issue(delivering, relay, "--lang", "en")  # nothing is packaged for it
    assert f"notice   to {STAFF} once all its packages were downloaded" in notified.output
    ct_study(tmp_path / "study" / "CT", 2)
    tar = subprocess.run(["tar", "-C", str(tmp_path / "study"), "-c", "."], check=True, capture_output=True).stdout
    subprocess.run([*delivering.host.ssh_args(), "mkdir -p /tmp/incoming && tar -C /tmp/incoming -x"], input=tar,
                   check=True)  # fmt: skip
    packages = {}
    for link in (notified, waiting, revoked):
        packed = run(delivering, "package", "--to", link.account, "--label", "CT thorax", "/tmp/incoming/CT")
        assert packed.returncode == 0, packed.stderr
        packages[link.account] = delivering.host.ssh(
            f"cd /srv/exchange/links/{link.account}/download && ls *.zip"
        ).stdout.strip()
    # Over SFTP: one recipient fetches the whole zip, the other gives up after 100 bytes.
    session = paramiko_sftp(delivering.host, notified.account, password=notified.password)
    session.get(f"/download/{packages[notified.account]}", str(tmp_path / "got.zip"))
    session.close()
    session = paramiko_sftp(delivering.host, waiting.account, password=waiting.password)
    with session.open(f"/download/{packages[waiting.account]}") as handle:
        handle.read(100)
    session.close()
    # The reminder of a one-day link is due half way: its record moved 13 hours back.
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    record = f"{paths.STATE_DIR}/links/{waiting.account}.json"
    moved = {
        "created": (now - datetime.timedelta(hours=13)).isoformat(),
        "expires": (now + datetime.timedelta(hours=11)).isoformat(),
    }
    delivering.host.ssh(
        f"python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); r.update(json.loads(sys.argv[2])); "
        f"json.dump(r, open(sys.argv[1], \"w\"))' {record} {shlex.quote(json.dumps(moved))}"
    )  # fmt: skip
    assert run(delivering, "link", "revoke", revoked.account).returncode == 0
    # rsyslog writes the SFTP log a moment after the session: `link list` brings the trail up to date.
    deadline = time.monotonic() + 60
    while True:
        rows = listed(delivering)
        if rows[notified.account]["packages"][0]["downloaded"] and rows[waiting.account]["packages"][0]["tries"]:
            break
        assert time.monotonic() < deadline, rows
        time.sleep(2)
    (fetched,) = rows[notified.account]["packages"]
    assert fetched["package"] == packages[notified.account] and fetched["from"].endswith("(sftp)")
    (partly,) = rows[waiting.account]["packages"]
    assert (partly["downloaded"], partly["percent"] < 100) == (False, True)
    assert rows[empty.account]["packages"] == [] and rows[notified.account]["notify_downloaded"] is True
    table = run(delivering, "link", "list").stdout
    assert f"{packages[notified.account]}: downloaded " in table and f"{packages[waiting.account]}: partly (" in table

    before = len(relay.smtp.received)
    sent = run(delivering, "notify-delivery")
    assert sent.returncode == 0, sent.stderr
    assert "3 delivery reminders and notices sent" in sent.stderr
    mails = relay.smtp.received[before:]
    subjects = sorted((mail.recipients[0], mail.message["Subject"]) for mail in mails)
    assert subjects == sorted([
        (STAFF, f"Downloaded: all packages of {notified.account} (1 package)"),
        (STAFF, f"Not downloaded: {revoked.account} ended with 1 package never downloaded completely"),
        (waiting.email, "Herinnering: er staan beelden van de afdeling Radiologie van het Testziekenhuis voor u klaar"),
    ])  # fmt: skip
    reminder = next(mail.body for mail in mails if mail.recipients == [waiting.email])
    assert packages[waiting.account] in reminder
    assert waiting.password not in reminder and waiting.token not in reminder  # neither password nor link
    ended = next(mail.body for mail in mails if revoked.account in mail.message["Subject"])
    assert "was revoked by root" in " ".join(ended.split()) and "never started" in ended
    assert [e["account"] for e in audit_events(delivering, "reminder-sent")] == [waiting.account]
    notices = sorted((e["kind"], e["account"]) for e in audit_events(delivering, "delivery-notice-sent"))
    assert notices == sorted([("downloaded", notified.account), ("ended", revoked.account)])
    # Not twice: the next runs, as cron would make them, send nothing more.
    again = run(delivering, "notify-delivery")
    assert again.returncode == 0 and "0 delivery reminders and notices sent" in again.stderr
    assert delivering.host.ssh(f"{paths.EXCHANGE} notify-delivery --quiet").stdout == ""
    assert len(relay.smtp.received) == before + 3
    assert delivering.host.ssh(f"stat -c '%U %a' {paths.STATE_DIR}/{paths.DELIVERY_NOTICES}").stdout.strip() == (
        "root 700"
    )
    # The reminder is a record of the access trail too (rsyslog may write the audit line a moment late).
    deadline = time.monotonic() + 30
    while not (trail := reminders_in_trail(delivering)) and time.monotonic() < deadline:
        time.sleep(2)
    assert [(r["account"], r["actor"]) for r in trail] == [(waiting.account, "notify-delivery")]
