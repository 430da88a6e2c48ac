"""The audit trail: one JSON line per event, written by rsyslog to /var/log/imaging-exchange/audit.log
and passed on to the system log.

Records reach the audit log only through its own socket (exchange.paths.AUDIT_SOCKET), which
only root and the web page's service group can reach; rsyslog adds the sender's uid to every
line as the kernel reports it (`writer_uid`), so no account can write a record in another's
name. `logger -t imaging-exchange` by any other account reaches the system log only.

A record waits for rsyslog (a restart, a full queue) where it is made, except on an event loop
(the web page): there a wait would stop every request of every account, so a record rsyslog
does not take at once waits in a thread of its own, with the records after it, in order.
"""

from __future__ import annotations

import datetime
import json
import os
import pwd
import shlex
import socket
import sys
import syslog
import threading
import time
from collections import deque

from exchange import paths

__all__ = ["actor", "audit_command", "audit_line", "record"]

# rsyslog is away for a moment at every restart (each new account restarts it): a record waits.
WAIT_SECONDS = 10
# What rsyslog takes in one record (maxMessageSize 64k in templates/logging/rsyslog.conf.j2), with
# room for the syslog header and the uid it adds. A longer record would be cut off and lost.
MAX_RECORD = 60_000
_PRIORITY = syslog.LOG_AUTHPRIV | syslog.LOG_NOTICE


def audit_line(event: str, **fields) -> str:
    """One JSON object: the event, its fields, and the time (UTC, to the second). One that would
    not fit a record has its longest lists (or texts) shortened, each named with its full length
    in `cut`: the record still arrives, and says what it leaves out."""
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    line = json.dumps({"event": event, "time": now, **fields}, sort_keys=True)
    cut: dict[str, int] = {}
    while len(line) > MAX_RECORD:
        longest = max(
            (key for key, value in fields.items() if isinstance(value, list | str) and len(value) > 1),
            key=lambda key: len(json.dumps(fields[key])),
            default=None,
        )
        if longest is None:
            break
        cut.setdefault(longest, len(fields[longest]))
        fields = {**fields, longest: fields[longest][: len(fields[longest]) // 2]}
        line = json.dumps({"event": event, "time": now, **fields, "cut": cut}, sort_keys=True)
    return line


def actor() -> str:
    """Who runs the tool: the staff member behind sudo, else the login itself."""
    return os.environ.get("SUDO_USER") or pwd.getpwuid(os.getuid()).pw_name


def record(event: str, **fields) -> str:
    line = audit_line(event, **fields)
    send(line)
    return line


def send(line: str, socket_path: str | None = None, wait: float = WAIT_SECONDS) -> None:
    """One record to the audit socket. If rsyslog does not take it within `wait` seconds, the
    record goes to the system log instead, marked, and the tool says so: never lost unsaid.
    On an event loop that wait is a thread's (_Waiting)."""
    socket_path = socket_path or paths.AUDIT_SOCKET
    message = f"<{_PRIORITY}>{paths.AUDIT_TAG}[{os.getpid()}]: {line}".encode()
    if _on_event_loop():
        _waiting.send(message, line, socket_path, wait)
    else:
        _send(message, line, socket_path, wait)


def _on_event_loop() -> bool:
    asyncio = sys.modules.get("asyncio")  # a tool that never imported it runs no loop (and need not load it)
    if asyncio is None:
        return False
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class _Waiting:
    """Records that rsyslog did not take at once, sent in order by a thread while there are any,
    each waited for up to its `wait` from when it was made (a long outage does not pile them up).
    The thread is not a daemon: a process that ends waits for it, so no record is dropped."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: deque[tuple[bytes, str, str, float]] = deque()  # message, line, socket, deadline
        self._thread: threading.Thread | None = None

    def send(self, message: bytes, line: str, socket_path: str, wait: float) -> None:
        with self._lock:
            if not self._queue and _send_now(message, socket_path):
                return
            self._queue.append((message, line, socket_path, time.monotonic() + wait))  # after those waiting
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="audit-records", daemon=False)
                self._thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._thread = None
                    return
                message, line, socket_path, deadline = self._queue[0]  # left there until sent: a new one goes after it
            _send(message, line, socket_path, max(0.0, deadline - time.monotonic()))
            with self._lock:
                self._queue.popleft()


_waiting = _Waiting()


def _send_now(message: bytes, socket_path: str) -> bool:
    """Whether rsyslog took the record without a wait."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK) as sender:
        try:
            sender.sendto(message, socket_path)
        except OSError:  # restarting, its queue full, or worse: _send says which
            return False
    return True


def _send(message: bytes, line: str, socket_path: str, wait: float) -> None:
    deadline = time.monotonic() + wait
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sender:
        while True:
            try:
                sender.sendto(message, socket_path)
                return
            except (FileNotFoundError, ConnectionRefusedError) as error:  # rsyslog restarting
                if time.monotonic() >= deadline:
                    problem = error.strerror
                    break
                time.sleep(0.05)
            except OSError as error:
                problem = error.strerror
                break
    syslog.openlog(paths.AUDIT_TAG, syslog.LOG_PID, syslog.LOG_AUTHPRIV)
    syslog.syslog(syslog.LOG_WARNING, f"audit log unavailable, record kept here: {line}")
    print(
        f"warning: audit log unavailable ({socket_path}: {problem}); the record is in the system log", file=sys.stderr
    )


def audit_command(event: str, **fields) -> str:
    """The same record as a shell command, for steps that run in a shell (exchange.accounts):
    logger to the audit socket, waiting out an rsyslog restart as `send` does."""
    line = shlex.quote(audit_line(event, **fields))
    to_audit = f"logger --socket-errors=on -u {paths.AUDIT_SOCKET} -t {paths.AUDIT_TAG} -p authpriv.notice -- {line}"
    to_syslog = f"logger -t {paths.AUDIT_TAG} -p authpriv.warning -- 'audit log unavailable, record kept here: '{line}"
    tries = WAIT_SECONDS * 10
    return (
        f"n=0; until {to_audit} 2>/dev/null; do n=$((n+1)); "
        f"if [ $n -ge {tries} ]; then {to_syslog}; break; fi; sleep 0.1; done"
    )
