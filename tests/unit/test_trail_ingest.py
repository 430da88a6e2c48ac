"""The trail's ingest from real log lines: the audit log as rsyslog writes it (the sender's uid at
the end), internal-sftp's lines in sftp.log (OpenSSH 9.2's wording, rsyslog's sftp template),
sshd's accepted logins in logins.log; read from where the last run stopped, across a rotation."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import socket
import threading
from pathlib import Path

import pytest

from exchange import paths
from exchange.cli import trail_ingest
from exchange.policy import load_policy
from exchange.portal import sftp as portal_sftp
from exchange.trail import index
from exchange.trail.ingest import LogPaths, ingest
from exchange.trail.store import Trail
from roles import REPO
from roles.templating import render
from tests.dicom_synth import peak_memory

POLICY = load_policy(REPO / "policies.yaml").policy
PORTAL_USER = "daemon"  # a user every Debian has, standing in for the web page's service user
WEB = POLICY.model_copy(update={"portal": POLICY.portal.model_copy(update={"service_user": PORTAL_USER})})
PORTAL_UID = pwd.getpwnam(PORTAL_USER).pw_uid
KEY = "SHA256:Vx3ZKqg1Dln0nXbVx2ap4T0b9Vz8m0vWvh6w+VJ0jU4"
PACKAGE = "CT-THORAX-20261204.zip"
SIZE = 1_048_576
# The partners' accounts as the host's passwd has them: internal-sftp runs as the account, and
# rsyslog stamps each sftp.log line with the sender's uid from the kernel.
UIDS = {"cardiology": 5001, "radiology": 5002}
STAFF_UID = 1001


def audit(event: str, uid: int = 0, **fields) -> str:
    """A line of audit.log: exchange.auditlog's JSON, ended by rsyslog with the sender's uid."""
    fields.setdefault("time", "2026-12-04T18:00:00+00:00")
    return json.dumps({"event": event, **fields}, sort_keys=True)[:-1] + f', "writer_uid": {uid}}}'


def packaged(account: str = "cardiology", name: str = PACKAGE, time: str = "2026-12-04T18:00:00+00:00") -> str:
    return audit(
        "study-packaged", time=time, by="staff-anna", account=account, package=name, sha256="ab" * 32,
        patient_ids=["P-1001", "P-1002"], study_uids=["1.2.826.0.1.1", "1.2.826.0.1.2"], accession_numbers=["A7"],
        files=412, bytes=SIZE,
    )  # fmt: skip


def sftp(time: str, pid: int, message: str, account: str = "cardiology", uid: int | str | None = "account") -> str:
    """A line of sftp.log; `uid`: the account's own (default), another sender's, or None (a line
    written before rsyslog logged the sender)."""
    uid = UIDS.get(account) if uid == "account" else uid
    stamp = "" if uid is None else f" uid={uid}"
    return f"2026-12-04T{time}+01:00 account={account}{stamp} internal-sftp[{pid}]: {message}"


def session(pid: int, address: str, read: int, at: str = "19:02", account: str = "cardiology") -> list[str]:
    """One SFTP session that fetches the package, as internal-sftp -l INFO logs it."""
    path = f"/download/{PACKAGE}"
    return [
        sftp(f"{at}:11.532118", pid, f"session opened for local user {account} from [{address}]", account),
        sftp(f"{at}:11.601002", pid, 'opendir "/download"', account),
        sftp(f"{at}:11.601734", pid, 'closedir "/download"', account),
        sftp(f"{at}:12.100000", pid, f'open "{path}" flags READ mode 0666', account),
        sftp(f"{at}:14.900000", pid, f'close "{path}" bytes read {read} written 0', account),
        sftp(f"{at}:15.000000", pid, f"session closed for local user {account} from [{address}]", account),
    ]


def accepted(at: str, how: str, address: str, port: int, account: str = "cardiology") -> str:
    return f"2026-12-04T{at}+01:00 sshd[2339]: Accepted {how} for {account} from {address} port {port} ssh2{{}}".format(
        f": ED25519 {KEY}" if how == "publickey" else ""
    )


class Logs:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        partners = folder / "partners.yaml"
        partners.write_text(
            "partners:\n- name: cardiology\n  organisation: Cardiologie Oost\n  email: c@example.org\n"
            "  phone: '+31612345678'\n"
        )
        self.paths = LogPaths(
            audit=str(folder / "audit.log"), sftp=str(folder / "sftp.log"), logins=str(folder / "logins.log"),
            partners=str(partners), site=str(folder / "no-site.yaml"),
        )  # fmt: skip
        self.trail = Trail(folder=str(folder / "trail"), run_dir=str(folder))

    def add(self, log: str, *lines: str, end: str = "\n") -> None:
        with open(self.paths.of(log), "a") as handle:
            handle.write("\n".join(lines) + end)

    def run(self, policy=POLICY):
        return ingest(policy, self.trail, self.paths, account_uid=UIDS.get)

    def records(self, **query):
        return self.trail.query(**query)


@pytest.fixture
def logs(tmp_path) -> Logs:
    return Logs(tmp_path)


def test_an_sftp_download_names_the_packages_patients_its_login_and_key(logs):
    logs.add("audit", packaged())
    logs.add("logins", accepted("19:02:11.401337", "publickey", "192.0.2.10", 40000))
    logs.add("sftp", *session(2345, "192.0.2.10", SIZE))
    result = logs.run()
    assert result.records == 3 and result.distrusted == [] and result.unreadable == []
    made, login, download = logs.records()
    assert made.event == "package-made" and made.actor == "staff-anna"
    assert made.patient_ids == ("P-1001", "P-1002") and made.details["sha256"] == "ab" * 32
    assert login.event == "sftp-login" and login.actor == "Cardiologie Oost"  # the partner's organisation
    assert login.access_point == {"via": "sftp", "address": "192.0.2.10", "auth": KEY}
    assert login.time == "2026-12-04T18:02:11+00:00"  # UTC, from the log's own offset
    assert download.event == "download" and download.outcome == "ok"
    assert download.patient_ids == ("P-1001", "P-1002") and download.study_uids == ("1.2.826.0.1.1", "1.2.826.0.1.2")
    assert download.details == {"file": f"/download/{PACKAGE}", "bytes": SIZE, "complete": True, "size": SIZE,
                                "sha256": "ab" * 32}  # fmt: skip
    assert download.access_point["auth"] == KEY
    assert [r.event for r in logs.records(patient_id="P-1002")] == ["package-made", "download"]


def test_a_package_made_in_an_earlier_run_maps_a_later_download_through_its_record(logs):
    logs.add("audit", packaged())
    assert logs.run().records == 1
    logs.add("logins", accepted("19:02:11.401337", "password", "192.0.2.10", 40000))
    logs.add("sftp", *session(2345, "192.0.2.10", SIZE // 2))  # broken off halfway
    assert logs.run().records == 2
    download = logs.records(events={"download"})[0]
    assert download.patient_ids == ("P-1001", "P-1002")  # from the package-made record in the trail
    assert download.outcome == "incomplete" and download.details["complete"] is False
    assert logs.records(events={"sftp-login"})[0].access_point["auth"] == "password"


def test_the_web_pages_own_ssh_session_is_no_sftp_access_but_another_loopback_one_is(logs):
    logs.add("audit", packaged(), audit("portal-ssh-connection", uid=PORTAL_UID, time="2026-12-04T18:02:11+00:00",
                                        account="cardiology", port=50000))  # fmt: skip
    logs.add(
        "logins",
        accepted("19:00:01.000000", "publickey", "127.0.0.1", 49999),  # a login whose session never started
        accepted("19:02:11.401337", "keyboard-interactive/pam", "127.0.0.1", 50000),
        accepted("19:05:11.401337", "publickey", "127.0.0.1", 50001),  # someone's own client on the host
    )
    logs.add("sftp", *session(2345, "127.0.0.1", SIZE), *session(2400, "127.0.0.1", SIZE, at="19:05"))
    result = logs.run(WEB)
    assert result.web_sessions == 1
    logins = logs.records(events={"sftp-login"})
    assert [login.details["port"] for login in logins] == [50001]
    assert len(logs.records(events={"download"})) == 1


def test_an_announcement_not_by_the_web_pages_user_skips_nothing(logs):
    """Anyone able to write `portal-ssh-connection` could hide their SFTP access: only the web page is believed."""
    logs.add("audit", audit("portal-ssh-connection", uid=1001, time="2026-12-04T18:02:11+00:00", account="cardiology",
                            port=50000))  # fmt: skip
    logs.add("logins", accepted("19:02:11.401337", "password", "127.0.0.1", 50000))
    logs.add("sftp", *session(2345, "127.0.0.1", SIZE))
    result = logs.run(WEB)
    assert result.web_sessions == 0 and len(result.distrusted) == 1
    assert [r.event for r in logs.records()] == ["sftp-login", "download"]


def test_only_roots_lines_and_the_web_pages_portal_events_are_believed(logs):
    logs.add(
        "audit",
        packaged(),
        audit("study-packaged", uid=1001, account="cardiology", package="fake.zip", patient_ids=["P-9"]),
        audit("study-packaged", uid=PORTAL_UID, account="cardiology", package="fake2.zip", patient_ids=["P-9"]),
        audit("portal-login", uid=PORTAL_UID, kind="partner", account="cardiology", ip="198.51.100.7", agent="Firefox"),
        audit("portal-login", uid=1001, kind="partner", account="cardiology", ip="198.51.100.8"),
        "not json at all",
    )
    result = logs.run(WEB)
    assert [r.event for r in logs.records()] == ["package-made", "web-login"]
    assert len(result.distrusted) == 3 and all("written by uid" in line for line in result.distrusted)
    assert "study-packaged written by uid 1001" in result.distrusted[0]
    assert len(result.unreadable) == 1
    assert logs.records(patient_id="P-9") == []
    login = logs.records(events={"web-login"})[0]
    assert login.access_point == {"via": "web", "address": "198.51.100.7", "agent": "Firefox"}


def test_a_web_download_is_complete_only_when_the_whole_file_was_given(logs):
    def download(offset: int, sent: int) -> str:
        return audit("portal-download", uid=PORTAL_UID, time="2026-12-04T18:10:00+00:00", account="cardiology",
                     ip="198.51.100.7", agent="Mozilla/5.0", file=PACKAGE, bytes=sent, offset=offset, size=SIZE,
                     complete=True)  # fmt: skip

    logs.add("audit", packaged(), download(0, SIZE), download(0, 1000), download(1000, SIZE - 1000))
    logs.run(WEB)
    downloads = logs.records(events={"download"})
    assert [(d.outcome, d.details["complete"]) for d in downloads] == [
        ("ok", True), ("incomplete", False), ("incomplete", False)  # a resumed piece is not the whole file
    ]  # fmt: skip
    assert all(d.patient_ids == ("P-1001", "P-1002") and d.access_point["via"] == "web" for d in downloads)
    assert downloads[0].access_point["agent"] == "Mozilla/5.0"


def test_a_links_own_events_name_its_masked_recipient_and_a_user_agent_is_bounded(logs):
    logs.add("audit", audit("link-issued", account="link-abcdefgh", by="staff-anna", recipient="p***@example.org +31*****78",
                            expires="2026-12-11T18:00:00+00:00", days=7))  # fmt: skip
    assert logs.run().records == 1
    logs.add("audit", audit("portal-login", uid=PORTAL_UID, kind="link", account="link-abcdefgh", ip="198.51.100.7",
                            agent="\x1b[2J" + "A" * 5000))  # fmt: skip
    logs.run(WEB)
    issued, login = logs.records(account="link-abcdefgh")
    assert issued.actor == "staff-anna" and issued.details["recipient"] == "p***@example.org +31*****78"
    assert login.actor == "p***@example.org +31*****78"  # kept in the ingest's state between runs
    assert login.access_point["agent"].startswith("\x1b[2J") and len(login.access_point["agent"]) == 200


def test_a_rotated_log_is_finished_first_nothing_read_twice_and_a_half_line_waits(logs):
    logs.add("audit", packaged())
    logs.add("logins", accepted("19:02:11.401337", "publickey", "192.0.2.10", 40000))
    opened, *rest = session(2345, "192.0.2.10", SIZE)
    logs.add("sftp", opened)
    logs.add("sftp", rest[0][:30], end="")  # rsyslog is still writing this one
    first = logs.run()
    assert first.records == 2 and first.unreadable == [] and first.lines["sftp"] == 1  # the session goes on
    assert logs.run().records == 0  # nothing new: nothing twice
    logs.add("sftp", rest[0][30:], *rest[1:3])  # ... up to the download's close
    os.rename(logs.paths.sftp, logs.paths.sftp + ".1")  # logrotate (delaycompress), then rsyslog's new file
    logs.add("sftp", rest[3], *session(2346, "192.0.2.10", SIZE, at="19:09"))
    logs.add("logins", accepted("19:09:11.401337", "publickey", "192.0.2.10", 40001))
    result = logs.run()
    assert result.gaps == [] and result.unreadable == [] and result.lines["sftp"] == 3 + 7
    events = [r.event for r in logs.records()]
    assert events == ["package-made", "sftp-login", "download", "sftp-login", "download"]
    assert logs.records(events={"sftp-login"})[1].details == {"port": 40001}
    assert logs.run().records == 0


def test_a_log_rotated_twice_unread_is_said(logs):
    logs.add("sftp", *session(2345, "192.0.2.10", SIZE))
    logs.run()
    for _ in range(2):  # two rotations: what the last run read to its middle is sftp.log.2 now
        if os.path.exists(logs.paths.sftp + ".1"):
            os.rename(logs.paths.sftp + ".1", logs.paths.sftp + ".2")
        os.rename(logs.paths.sftp, logs.paths.sftp + ".1")
        logs.add("sftp", *session(2346, "192.0.2.10", SIZE, at="19:09"))
    result = logs.run()
    assert result.gaps == ["sftp.log: rotated more than once since the last run; lines missed"]
    assert len(logs.records(events={"download"})) == 2


def test_a_package_purged_names_its_patients_and_server_events_their_staff(logs):
    logs.add(
        "audit",
        packaged(),
        audit("file-purged", time="2026-12-11T18:00:00+00:00", account="cardiology", kind="partner",
              path=f"/download/{PACKAGE}", size=SIZE, age_hours=168.0, by="purge"),
        audit("file-purged", time="2026-12-11T18:00:00+00:00", account="cardiology", kind="partner",
              path=f"/upload/{PACKAGE}", size=10, age_hours=168.0, by="purge"),
        audit("pacs-import", pacs="main", account="cardiology", by="staff-bert", studies=["1.2.3"], outcome="incomplete",
              patients={"received": ["EXT-7"], "local": "P-7"}),
        audit("upload-notice-sent", account="cardiology", kind="partner", files=1, by="purge"),  # no patient data
    )  # fmt: skip
    logs.run()
    imported, purged, other = logs.records(events={"file-purged", "pacs-import"})
    assert purged.patient_ids == ("P-1001", "P-1002") and purged.actor == "purge"
    assert other.patient_ids == ()  # an upload of the same name is not the package
    assert imported.patient_ids == ("EXT-7", "P-7") and imported.outcome == "incomplete"
    assert imported.actor == "staff-bert" and imported.study_uids == ("1.2.3",)
    assert len(logs.records()) == 4


def test_a_read_of_a_patients_trail_is_in_that_patients_trail(logs):
    logs.add(
        "audit",
        audit("trail-read", by="auditor-ann", report="patient", subject="P-1001", results=3, patient_ids=["P-1001"],
              query={"report": "patient", "subject": "P-1001", "since": None, "until": None, "format": "html"}),
        audit("trail-read", by="staff-bert", report="staff", subject="staff-anna", results=9, patient_ids=[]),
    )  # fmt: skip
    logs.run()
    (read,) = logs.records(patient_id="P-1001")
    assert (read.event, read.actor, read.details["report"], read.details["results"]) == (
        "trail-read", "auditor-ann", "patient", 3,
    )  # fmt: skip
    assert len(logs.records(events={"trail-read"})) == 2


def test_the_web_page_names_its_local_port_before_it_connects(audit_socket):
    """The port sshd will log for the login is in the audit log before the connection exists."""
    seen: dict = {}
    listener = socket.create_server(("127.0.0.1", 0))

    def sshd():
        connection, peer = listener.accept()
        seen["port"], seen["announced"] = peer[1], audit_socket.records()
        connection.close()  # no SSH here: the login meets "unavailable"

    thread = threading.Thread(target=sshd)
    thread.start()
    target = portal_sftp.SshTarget("127.0.0.1", listener.getsockname()[1], (), ("aes128-gcm@openssh.com",))
    with pytest.raises(portal_sftp.ServerUnavailable):
        asyncio.run(portal_sftp.open_session(target, "cardiology", "secret"))
    thread.join(5)
    listener.close()
    (announced,) = seen["announced"]
    assert announced["event"] == "portal-ssh-connection" and announced["account"] == "cardiology"
    assert announced["port"] == seen["port"]


def test_rsyslog_writes_accepted_logins_without_stopping_them_and_rotates_them_with_sftp_log():
    conf = render(
        "logging/rsyslog.conf.j2", log_dir=paths.LOG_DIR, audit_log=paths.AUDIT_LOG, logins_log=paths.LOGINS_LOG,
        socket_dir=paths.LOG_SOCKETS_DIR, audit_socket=paths.AUDIT_SOCKET, audit_socket_dir=paths.AUDIT_SOCKET_DIR,
    )  # fmt: skip
    rule = conf[conf.index('if ($programname == "sshd"') :].split("\n}\n", 1)[0]
    assert f'file="{paths.LOGINS_LOG}"' in rule and "stop" not in rule  # on to the system log as well
    rotate = render(
        "logging/logrotate.j2", log_dir=paths.LOG_DIR, audit_log=paths.AUDIT_LOG, logins_log=paths.LOGINS_LOG
    )
    assert f"{paths.SFTP_LOG} {paths.LOGINS_LOG} {{" in rotate


def test_the_hourly_job_brings_the_trail_up_to_date_after_the_purge_and_notices():
    cron = render("retention/cron.j2", policy=POLICY, site_path=paths.SITE, exchange=paths.EXCHANGE)
    (job,) = [line for line in cron.splitlines() if line.startswith(POLICY.retention.purge_schedule)]
    after_notices = job.split("notify-expiring --quiet; }", 1)[1]
    # With site data or without; the delivery follow-ups come after it (tests/unit/test_trail_delivery.py).
    assert after_notices.startswith(f"; {paths.EXCHANGE} trail ingest --quiet; ")


def test_the_command_names_a_distrusted_line_even_when_quiet_and_escaped(logs, capsys):
    logs.add("audit", audit("\x1b[2Jstudy-packaged", uid=1001, account="cardiology"), packaged())
    trail_ingest.show(logs.run(), quiet=True)
    out, err = capsys.readouterr()
    assert out == "" and "\x1b" not in err
    assert err.startswith("distrusted: audit:") and err.endswith(": \\x1b[2Jstudy-packaged written by uid 1001\n")
    logs.add("sftp", *session(2345, "192.0.2.10", SIZE))
    trail_ingest.show(logs.run(), quiet=False)
    out, err = capsys.readouterr()
    assert out == "trail: 2 records from sftp.log 6 lines, logins.log 0 lines, audit.log 0 lines\n" and err == ""


def test_an_index_rebuilt_from_the_chain_resumes_each_log_after_its_last_line_read(logs):
    """Writers' clocks interleave in audit.log (a record is stamped when made, filed when received):
    the chain keeps each log's records in the order read, so the index's positions, rebuilt from
    the records' sources, are each log's furthest."""
    logs.add("audit", packaged(time="2026-12-04T18:05:00+00:00"), packaged(name="second.zip"))
    logs.add("logins", accepted("19:02:11.401337", "publickey", "192.0.2.10", 40000))
    logs.add("sftp", *session(2345, "192.0.2.10", SIZE))
    assert logs.run().records == 4
    for lost in Path(logs.trail.folder).glob("index.sqlite*"):
        lost.unlink()
    assert logs.run().records == 0
    assert len(logs.records()) == 4


def opened(pid: int = 77, address: str = "192.0.2.10") -> str:
    return sftp("19:02:11.5", pid, f"session opened for local user cardiology from [{address}]")


def closed(pid: int = 77, address: str = "192.0.2.10") -> str:
    return sftp("19:02:15.0", pid, f"session closed for local user cardiology from [{address}]")


def test_a_forced_close_at_the_end_of_a_session_is_a_download(logs):
    """sftp-server's handle_log_exit: a file still open when the session ends is logged `forced close`."""
    logs.add("audit", packaged())
    logs.add("logins", accepted("19:02:11.401337", "publickey", "192.0.2.10", 40000))
    path = f"/download/{PACKAGE}"
    logs.add("sftp", opened(), sftp("19:02:12.1", 77, f'open "{path}" flags READ mode 0666'),
             sftp("19:02:14.9", 77, f'forced close "{path}" bytes read {SIZE} written 0'), closed())  # fmt: skip
    result = logs.run()
    assert result.unreadable == []
    (download,) = logs.records(events={"download"})
    assert download.patient_ids == ("P-1001", "P-1002") and download.outcome == "ok"
    assert download.details["bytes"] == SIZE and download.details["complete"] is True


def test_a_log_line_cut_at_500_characters_is_a_download_of_every_package_of_the_account(logs, capsys):
    """OpenSSH's log.c writes at most 500 characters of a message: a long path ("./" repeated)
    cuts the line before its end. Which file is not known: each of the account's packages may be it."""
    logs.add("audit", packaged(), packaged(name="MR-KNEE.zip", time="2026-12-04T18:01:00+00:00"),
             packaged(account="radiology", name="OTHER.zip"))  # fmt: skip
    assert logs.run().records == 3
    logs.add("audit", audit("study-packaged", time="2026-12-04T18:02:00+00:00", by="staff-anna", account="cardiology",
                            package="LATER.zip", patient_ids=["P-3"], study_uids=["1.3"], bytes=5))  # fmt: skip
    logs.add("logins", accepted("19:02:11.401337", "publickey", "192.0.2.10", 40000))
    path = "/download/" + "./" * 250 + PACKAGE  # the kernel resolves it to the package

    def syslog500(message: str) -> str:  # log.c: syslog(pri, "%.500s", fmtbuf)
        return message[:500]

    logs.add("sftp", opened(), sftp("19:02:12.1", 77, syslog500(f'open "{path}" flags READ mode 0666')),
             sftp("19:02:14.9", 77, syslog500(f'close "{path}" bytes read {SIZE} written 0')), closed())  # fmt: skip
    result = logs.run()
    assert len(result.unreadable) == 2 and all("cut at 500 characters" in line for line in result.unreadable)
    downloads = logs.records(events={"download"})
    assert sorted(d.details["file"] for d in downloads) == [f"/download/{name}" for name in
                                                           ("CT-THORAX-20261204.zip", "LATER.zip", "MR-KNEE.zip")]  # fmt: skip
    assert all(d.outcome == "incomplete" and d.details["bytes"] is None and "cut" in d.details["log_line"]
               for d in downloads)  # fmt: skip
    downloaded = [r.account for r in logs.records(patient_id="P-1001") if r.event == "download"]
    assert downloaded == ["cardiology", "cardiology"]  # its two packages of P-1001, not radiology's
    assert [r.event for r in logs.records(patient_id="P-3")] == ["package-made", "download"]  # made in this run
    assert logs.records(account="radiology", events={"download"}) == []
    trail_ingest.show(result, quiet=True)  # as cron runs it: the cut lines are mailed
    err = capsys.readouterr().err
    assert err.count("unreadable: sftp:") == 2 and "close line cut at 500 characters" in err


def test_a_cut_close_of_a_file_whose_open_was_whole_is_a_download_of_that_file(logs):
    logs.add("audit", packaged(), packaged(name="MR-KNEE.zip"))
    path = "/download/" + "./" * 218 + PACKAGE  # its open fits in 500 characters, its close does not
    assert len(f'open "{path}" flags READ mode 0666') <= 500 < len(f'close "{path}" bytes read {SIZE} written 0')
    logs.add("sftp", opened(), sftp("19:02:12.1", 77, f'open "{path}" flags READ mode 0666'),
             sftp("19:02:14.9", 77, f'close "{path}" bytes read {SIZE} written 0'[:500]), closed())  # fmt: skip
    result = logs.run()
    assert len(result.unreadable) == 1
    (download,) = logs.records(events={"download"})
    assert download.details["file"] == f"/download/{PACKAGE}" and download.details["bytes"] is None
    assert download.outcome == "incomplete" and download.patient_ids == ("P-1001", "P-1002")


def test_a_file_read_without_a_close_when_its_session_closes_is_a_download_of_unknown_extent(logs):
    logs.add("audit", packaged())
    logs.add("sftp", opened(), sftp("19:02:12.1", 77, f'open "/download/{PACKAGE}" flags READ mode 0666'),
             sftp("19:02:12.2", 77, 'open "/upload/new.dcm" flags WRITE,CREATE,TRUNCATE mode 0644'), closed())  # fmt: skip
    logs.run()
    (download,) = logs.records(events={"download"})
    assert download.patient_ids == ("P-1001", "P-1002") and download.outcome == "incomplete"
    assert download.details["bytes"] is None and download.details["close"] == "not logged"


def test_an_sftp_line_is_believed_only_from_the_accounts_own_uid(logs):
    """Each chroot's /dev/log is open to every local user: rsyslog stamps the account, the kernel the sender."""
    logs.add("audit", packaged())
    path = f"/download/{PACKAGE}"
    forged = [sftp("19:02:11.5", 99, "session opened for local user cardiology from [203.0.113.9]", uid=STAFF_UID),
              sftp("19:02:14.9", 99, f'close "{path}" bytes read {SIZE} written 0', uid=STAFF_UID),
              sftp("19:02:14.9", 98, f'close "{path}" bytes read {SIZE} written 0', uid=""),
              sftp("19:02:14.9", 97, f'close "{path}" bytes read {SIZE} written 0', uid=UIDS["radiology"])]  # fmt: skip
    logs.add("sftp", *forged)
    result = logs.run()
    assert len(result.distrusted) == 4 and "sftp:" in result.distrusted[0] and "uid 1001" in result.distrusted[0]
    assert logs.records(events={"download", "sftp-login"}) == []
    logs.add(
        "sftp", sftp("19:03:14.9", 96, f'close "{path}" bytes read {SIZE} written 0', uid=None)
    )  # before the deploy
    result = logs.run()
    assert result.distrusted == []
    (download,) = logs.records(events={"download"})
    assert download.details["uid"] == "not logged" and download.patient_ids == ("P-1001", "P-1002")


def test_the_sftp_lines_of_an_account_removed_before_they_were_read_are_weighed_by_its_own_uid(logs):
    """The purge removes an ended link before the hourly ingest, a revoke at once: its uid is on
    record (link-issued, link-revoked), and remembered from one run to the next."""
    path = f"/download/{PACKAGE}"

    def root_record(event: str, **fields) -> str:  # audit(uid=) is the writer's
        return json.dumps({"event": event, "time": "2026-12-04T18:00:00+00:00", **fields})[:-1] + ', "writer_uid": 0}'

    issued = root_record(
        "link-issued", account="link-abcdefgh", uid=5101, by="staff-anna", recipient="j***@example.org"
    )
    revoked = root_record("link-revoked", account="link-abcdefgh", uid=5101, kind="link", by="staff-anna")
    logs.add("audit", issued, packaged(account="link-abcdefgh"))
    logs.add("sftp", sftp("19:02:14.9", 95, f'close "{path}" bytes read {SIZE} written 0', "link-abcdefgh", uid=5101))
    logs.add("audit", revoked)
    result = logs.run()  # passwd no longer knows the account
    assert result.distrusted == []
    (download,) = logs.records(events={"download"})
    assert download.patient_ids == ("P-1001", "P-1002") and download.details["complete"] is True
    logs.add("sftp", sftp("19:04:14.9", 94, f'close "{path}" bytes read {SIZE} written 0', "link-abcdefgh", uid=5101),
             sftp("19:04:15.9", 93, f'close "{path}" bytes read {SIZE} written 0', "link-abcdefgh", uid=STAFF_UID))  # fmt: skip
    result = logs.run()  # a later run remembers it; staff's uid is still not the account's
    assert len(logs.records(events={"download"})) == 2 and len(result.distrusted) == 1


def test_a_flood_of_opened_files_is_read_in_batches_and_bounded_in_memory_and_state(logs, monkeypatch):
    """A session that opens a great many files (that do not exist: never closed) neither fills the
    memory of a run nor the state every later run carries."""
    from exchange.trail import ingest as ingest_module

    monkeypatch.setattr(ingest_module, "BATCH_LINES", 2_000)
    monkeypatch.setattr(ingest_module, "BATCH_BYTES", 1_000_000)
    logs.add("logins", accepted("19:02:11.401337", "publickey", "192.0.2.10", 40000))
    pad = "x" * 400
    with open(logs.paths.sftp, "w") as handle:
        handle.write(opened() + "\n")
        for i in range(20_000):
            handle.write(sftp("19:03:00.0", 77, f'open "/upload/{pad}{i}" flags READ mode 0666') + "\n")
    with peak_memory() as peak:
        result = logs.run()
    assert result.lines["sftp"] == 20_001
    assert peak[0] < 12_000_000, peak
    with index.connect(logs.trail.index_path) as db:
        state = sum(len(value or "") for (value,) in db.execute("SELECT value FROM state"))
    assert state < 300_000, state
    logs.add("sftp", closed())
    logs.run()
    (download,) = [d for d in logs.records(events={"download"}) if d.details.get("files_not_kept")]
    assert download.details["files_not_kept"] == 20_000 - 256


def test_a_line_that_breaks_the_parser_is_unreadable_and_the_run_goes_on(logs):
    nested = '{"event": "portal-login", "x": ' + "[" * 5000 + "]" * 5000 + ', "writer_uid": 0}'
    logs.add(
        "audit",
        packaged(),
        nested,
        audit(
            "file-purged", time="9999-12-31T23:59:59-01:00", account="cardiology", path=f"/download/{PACKAGE}"
        ),  # fmt: skip
        packaged(name="after.zip"),
    )
    logs.add("sftp", sftp("19:02:14.9", 5, "session opened for local user cardiology from [192.0.2.10]").replace(
        "2026-12-04T19:02:14.9+01:00", "9999-12-31T23:59:59-01:00"))  # fmt: skip
    result = logs.run()
    assert len(result.unreadable) == 3, result.unreadable
    assert [r.details["package"] for r in logs.records(events={"package-made"})] == [PACKAGE, "after.zip"]
    logs.add("audit", packaged(name="next.zip"))
    assert logs.run().records == 1


def test_each_chroot_socket_and_sftp_log_line_name_the_senders_uid_from_the_kernel():
    from exchange.accounts import log_socket_config
    from exchange.trail.logins import parse_sftp

    socket_conf = log_socket_config("/srv/exchange/partners/cardiology/dev/log", "cardiology")
    assert 'Annotate="on" ParseTrusted="on"' in socket_conf and 'HostName="cardiology"' in socket_conf
    conf = render(
        "logging/rsyslog.conf.j2", log_dir=paths.LOG_DIR, audit_log=paths.AUDIT_LOG, logins_log=paths.LOGINS_LOG,
        socket_dir=paths.LOG_SOCKETS_DIR, audit_socket=paths.AUDIT_SOCKET, audit_socket_dir=paths.AUDIT_SOCKET_DIR,
    )  # fmt: skip
    assert "account=%hostname% uid=%$!uid% %syslogtag%%msg%" in conf
    line = parse_sftp(sftp("19:02:11.5", 77, 'close "/download/x.zip" bytes read 9 written 0'))
    assert line is not None and line.uid == "5001" and line.message.startswith("close ")


def test_batches_of_a_few_lines_read_a_rotated_log_the_same_and_a_line_too_long_is_skipped(logs, monkeypatch):
    from exchange.trail import ingest as ingest_module

    monkeypatch.setattr(ingest_module, "BATCH_LINES", 2)
    test_a_rotated_log_is_finished_first_nothing_read_twice_and_a_half_line_waits(logs)
    monkeypatch.setattr(ingest_module, "BATCH_BYTES", 1_000)
    logs.add("audit", audit("portal-login", uid=PORTAL_UID, junk="x" * 5_000), packaged(name="after.zip"))
    result = logs.run()
    assert result.unreadable == [
        f"audit:{os.stat(logs.paths.audit).st_ino}:{os.stat(logs.paths.audit).st_size - len(packaged(name='after.zip')) - 1}: a line longer than 1000 bytes"
    ]
    assert logs.records(events={"package-made"})[-1].details["package"] == "after.zip"
