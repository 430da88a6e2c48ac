"""Audit lines: one JSON object with the event, its fields and the time."""

import datetime
import json

from exchange.auditlog import audit_command, audit_line


def test_an_audit_line_carries_event_fields_and_utc_time():
    before = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    line = json.loads(audit_line("link-issued", account="link-abcdefgh", by="staff-jdoe"))
    assert line["event"] == "link-issued" and line["account"] == "link-abcdefgh" and line["by"] == "staff-jdoe"
    assert before <= datetime.datetime.fromisoformat(line["time"]) <= datetime.datetime.now(datetime.UTC)


def test_the_shell_form_sends_the_same_line_to_syslog_quoted():
    command = audit_command("account-removed", account="o'brien")
    assert command.startswith("logger -t imaging-exchange -p authpriv.notice -- ")
    assert "o'\"'\"'brien" in command
