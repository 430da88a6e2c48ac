"""Unit tests: the audit socket is a real datagram socket of the test's own; mail and SMS go to real
servers on loopback (tests/messaging.py)."""

from __future__ import annotations

import json
import socket
import tempfile
import threading
from pathlib import Path

import pytest

from exchange import paths
from tests.messaging import SmsGateway, SmtpServer, make_ca

_MARK = b"\0mark"


class AuditSocket:
    """Receives what the tools send to the audit socket, as rsyslog would (without its stamp)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[str] = []
        self._marks = 0
        self._seen = threading.Condition()
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(path))
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while True:
            try:
                data = self._socket.recv(1 << 20)
            except OSError:
                return
            with self._seen:
                if data == _MARK:
                    self._marks += 1
                    self._seen.notify_all()
                else:
                    self.messages.append(data.decode())

    def records(self) -> list[dict]:
        return [json.loads(message.split(": ", 1)[1]) for message in self.received()]

    def received(self) -> list[str]:
        # A datagram socket keeps order: once our own mark has come through, so has everything
        # sent before it (the receiving thread may lag behind a busy machine).
        with self._seen:
            wanted = self._marks + 1
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
            sender.sendto(_MARK, str(self.path))
        with self._seen:
            if not self._seen.wait_for(lambda: self._marks >= wanted, timeout=30):
                raise TimeoutError("the audit socket's receiver stopped")
            return list(self.messages)

    def close(self) -> None:
        self._socket.shutdown(socket.SHUT_RDWR)
        self._socket.close()


@pytest.fixture(autouse=True)
def audit_socket(monkeypatch):
    # A short path: a unix socket's path is limited to about 100 bytes.
    with tempfile.TemporaryDirectory(prefix="audit-") as folder:
        receiver = AuditSocket(Path(folder) / "log")
        monkeypatch.setattr(paths, "AUDIT_SOCKET", str(receiver.path))
        yield receiver
        receiver.close()


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """(SMTP server with a certificate of its own CA, SMS gateway, that CA), for a module."""
    ca, cert, key = make_ca(tmp_path_factory.mktemp("ca"))
    smtp = SmtpServer(cert=cert, key=key).start()
    sms = SmsGateway().start()
    yield smtp, sms, ca
    smtp.stop()
    sms.stop()
