"""Real message servers on the outer loopback for the tests: an SMTP server (aiosmtpd, with
STARTTLS and AUTH required, under a test CA) and an HTTP server that captures SMS gateway
calls. The test hosts share the outer network namespace, so their 127.0.0.1 reaches both."""

from __future__ import annotations

import email
import email.policy
import json
import logging
import socket
import ssl
import subprocess
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.sites import SMTP_PASSWORD, SMTP_USER

# aiosmtpd 1.4 warns about its own deprecated attribute on every login.
logging.getLogger("mail.log").setLevel(logging.ERROR)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def make_ca(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a certificate for 127.0.0.1 signed by it: (ca, cert, key)."""
    ca_key, ca, key, csr, cert = (directory / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem"))
    run = lambda *args: subprocess.run(["openssl", *args], check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
        "-subj", "/CN=imaging-exchange test CA", "-keyout", str(ca_key), "-out", str(ca))  # fmt: skip
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", str(key), "-out", str(csr))  # fmt: skip
    extensions = directory / "san.ext"
    extensions.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-days", "2",
        "-extfile", str(extensions), "-out", str(cert))  # fmt: skip
    return ca, cert, key


@dataclass
class Received:
    sender: str
    recipients: list[str]
    message: email.message.EmailMessage

    @property
    def body(self) -> str:
        return self.message.get_body(preferencelist=("plain",)).get_content()


@dataclass
class SmtpServer:
    """aiosmtpd requiring STARTTLS and AUTH. `stop()` then `start()` again simulates an outage."""

    cert: Path
    key: Path
    port: int = field(default_factory=free_port)
    received: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._controller: Controller | None = None

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd handler hook
        message = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), message))
        return "250 OK"

    def _authenticate(self, server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
            SMTP_USER.encode(),
            SMTP_PASSWORD.encode(),
        )
        return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535 itself

    def start(self) -> SmtpServer:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        self._controller = Controller(
            self,
            hostname="127.0.0.1",
            port=self.port,
            tls_context=context,
            require_starttls=True,
            authenticator=self._authenticate,
            auth_require_tls=True,
        )
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller:
            self._controller.stop()
            self._controller = None

    def to(self, address: str) -> list[Received]:
        return [r for r in self.received if address in r.recipients]


@dataclass
class SmsCall:
    headers: dict[str, str]
    body: dict


class SmsGateway:
    """Captures JSON POSTs as an SMS provider's API would receive them; `status` sets the answer."""

    def __init__(self) -> None:
        self.calls: list[SmsCall] = []
        self.status = 200
        self.echo = False  # a refusal that repeats the request, as some gateways' do
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                request = self.rfile.read(length)
                gateway.calls.append(SmsCall(dict(self.headers), json.loads(request)))
                self.send_response(gateway.status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                refusal = b'{"error": "invalid request", "request": ' + request + b"}" if gateway.echo else None
                self.wfile.write(
                    b'{"accepted": true}' if gateway.status < 300 else refusal or b'{"error": "quota exceeded"}'
                )

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/sms"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> SmsGateway:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def to(self, phone: str) -> list[SmsCall]:
        return [call for call in self.calls if call.body.get("to") == phone]
