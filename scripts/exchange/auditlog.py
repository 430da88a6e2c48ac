"""The audit trail: one JSON line per event to syslog (authpriv), which rsyslog writes to
/var/log/imaging-exchange/audit.log and passes on to the system log."""

from __future__ import annotations

import datetime
import json
import os
import pwd
import shlex
import syslog

AUDIT_TAG = "imaging-exchange"
LOG_DIR = "/var/log/imaging-exchange"
AUDIT_LOG = f"{LOG_DIR}/audit.log"
SFTP_LOG = f"{LOG_DIR}/sftp.log"  # internal-sftp, every line stamped account=<name>


def audit_line(event: str, **fields) -> str:
    """One JSON object: the event, its fields, and the time (UTC, to the second)."""
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    return json.dumps({"event": event, "time": now, **fields}, sort_keys=True)


def actor() -> str:
    """Who runs the tool: the staff member behind sudo, else the login itself."""
    return os.environ.get("SUDO_USER") or pwd.getpwuid(os.getuid()).pw_name


def record(event: str, **fields) -> str:
    line = audit_line(event, **fields)
    syslog.openlog(AUDIT_TAG, syslog.LOG_PID, syslog.LOG_AUTHPRIV)
    syslog.syslog(syslog.LOG_NOTICE, line)
    return line


def audit_command(event: str, **fields) -> str:
    """The same record as a shell command, for steps that run in a shell (exchange.accounts)."""
    return f"logger -t {AUDIT_TAG} -p authpriv.notice -- {shlex.quote(audit_line(event, **fields))}"
