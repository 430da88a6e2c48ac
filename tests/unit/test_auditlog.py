"""Audit lines: one JSON object with the event, its fields and the time, sent to the audit socket."""

import datetime
import json
import subprocess
import time

from exchange import auditlog
from exchange.auditlog import audit_command, audit_line


def test_an_audit_line_carries_event_fields_and_utc_time():
    before = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    line = json.loads(audit_line("link-issued", account="link-abcdefgh", by="staff-jdoe"))
    assert line["event"] == "link-issued" and line["account"] == "link-abcdefgh" and line["by"] == "staff-jdoe"
    assert before <= datetime.datetime.fromisoformat(line["time"]) <= datetime.datetime.now(datetime.UTC)


def test_a_record_goes_to_the_audit_socket_as_a_syslog_datagram(audit_socket):
    line = auditlog.record("link-issued", account="link-abcdefgh")
    (message,) = audit_socket.received()
    assert message.startswith("<85>imaging-exchange[")  # authpriv.notice, the tag rsyslog files it by
    assert message.endswith("]: " + line)


def test_without_rsyslog_the_record_goes_to_the_system_log_and_the_tool_says_so(tmp_path, monkeypatch, capsys):
    logged = []
    monkeypatch.setattr(auditlog.syslog, "syslog", lambda priority, text: logged.append((priority, text)))
    started = time.monotonic()
    auditlog.send('{"event": "x"}', socket_path=str(tmp_path / "gone"), wait=0.3)
    assert 0.3 <= time.monotonic() - started < 3  # waited for a restarting rsyslog, then gave up
    assert logged == [(auditlog.syslog.LOG_WARNING, 'audit log unavailable, record kept here: {"event": "x"}')]
    assert "audit log unavailable" in capsys.readouterr().err


def test_the_shell_form_sends_the_same_line_to_the_audit_socket_quoted(audit_socket):
    command = audit_command("account-removed", account="o'brien")
    assert subprocess.run(["sh", "-c", command], capture_output=True).returncode == 0
    deadline = time.monotonic() + 5
    while not audit_socket.records() and time.monotonic() < deadline:
        time.sleep(0.01)
    (received,) = audit_socket.records()
    assert received["event"] == "account-removed" and received["account"] == "o'brien"
    assert command.count("logger ") == 2  # the system log, if the audit socket stays away
