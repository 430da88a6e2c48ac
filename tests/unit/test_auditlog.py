"""Audit lines: one JSON object with the event, its fields and the time, sent to the audit socket."""

import asyncio
import contextlib
import datetime
import json
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from exchange import auditlog, paths
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


def _received(receiver, count: int) -> list[str]:
    deadline = time.monotonic() + 10
    while len(receiver.records()) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return [record["event"] for record in receiver.records()]


def test_on_an_event_loop_a_record_never_waits_for_rsyslog_and_arrives_in_order_once_it_is_back(monkeypatch):
    """The web page records on its event loop: a record that waited there for a restarting
    rsyslog (up to WAIT_SECONDS) stopped every request of every account meanwhile."""
    from tests.unit.conftest import AuditSocket

    with tempfile.TemporaryDirectory(prefix="audit-") as folder:
        path = Path(folder) / "log"  # no rsyslog there yet
        monkeypatch.setattr(paths, "AUDIT_SOCKET", str(path))

        async def page():
            started = time.monotonic()
            auditlog.record("portal-view", n=1)
            auditlog.record("portal-view", n=2)
            return time.monotonic() - started

        took = asyncio.run(page())
        receiver = AuditSocket(path)  # rsyslog is back
        try:
            assert _received(receiver, 2) == ["portal-view"] * 2
            assert [record["n"] for record in receiver.records()] == [1, 2] and took < 0.5
            auditlog.record("portal-view", n=3)  # off the loop: sent at once, as ever
            assert len(_received(receiver, 3)) == 3 and [record["n"] for record in receiver.records()] == [1, 2, 3]
        finally:
            receiver.close()


def test_on_an_event_loop_a_full_audit_queue_does_not_stop_the_loop(monkeypatch):
    """A datagram to a socket whose queue is full waits until rsyslog reads: on the loop, in a thread."""
    with tempfile.TemporaryDirectory(prefix="audit-") as folder:
        path = str(Path(folder) / "log")
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        receiver.bind(path)
        monkeypatch.setattr(paths, "AUDIT_SOCKET", path)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK) as filler:
            filled = 0
            with contextlib.suppress(BlockingIOError):
                while True:
                    filler.sendto(b"<85>imaging-exchange[1]: {}", path)
                    filled += 1
        read = []

        def rsyslog_catches_up():
            time.sleep(2)
            while len(read) < filled + 1:
                read.append(receiver.recv(1 << 16))

        catching_up = threading.Thread(target=rsyslog_catches_up)
        catching_up.start()

        async def page():
            started = time.monotonic()
            auditlog.record("portal-view", n=1)
            return time.monotonic() - started

        try:
            took = asyncio.run(page())
            catching_up.join(10)
            assert took < 0.5 and json.loads(read[-1].decode().split(": ", 1)[1])["n"] == 1
        finally:
            receiver.close()
