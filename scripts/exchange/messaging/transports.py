"""How messages leave the server: e-mail by SMTP, SMS by an HTTP gateway, or both to an outbox.

Which one a site uses is its site data (exchange.site). A failure raises DeliveryError with
a message that says which transport failed and why, and never contains the message text
(an SMS holds a password).
"""

from __future__ import annotations

import datetime
import email.message
import email.utils
import json
import os
import secrets
import smtplib
import urllib.error
import urllib.request
from pathlib import Path

from exchange import tls
from exchange.errors import ExchangeError
from exchange.messaging.messages import Email
from exchange.site import HttpSmsTransport, OutboxTransport, Site, SmtpTransport


class DeliveryError(ExchangeError):
    pass


def _mime(site: Site, message: Email) -> email.message.EmailMessage:
    sender = site.email.sender or site.contact.email
    mime = email.message.EmailMessage()
    mime["From"] = sender
    mime["To"] = message.to
    mime["Subject"] = message.subject
    mime["Date"] = email.utils.formatdate(localtime=True)
    mime["Message-ID"] = email.utils.make_msgid(domain=sender.rpartition("@")[2])
    mime["Auto-Submitted"] = "auto-generated"  # no out-of-office replies
    mime.set_content(message.body)  # UTF-8, quoted-printable as needed
    return mime


def _smtp(transport: SmtpTransport, mime: email.message.EmailMessage) -> None:
    where = f"smtp {transport.host}:{transport.port}"
    try:
        context = tls.client_context(transport.ca_file)
        if transport.security == "tls":
            client = smtplib.SMTP_SSL(transport.host, transport.port, timeout=transport.timeout, context=context)
        else:
            client = smtplib.SMTP(transport.host, transport.port, timeout=transport.timeout)
        with client:
            if transport.security == "starttls":
                client.ehlo()
                if not client.has_extn("starttls"):
                    raise DeliveryError(f"e-mail not sent: {where} does not offer STARTTLS; refusing to send in clear")
                client.starttls(context=context)
                client.ehlo()
            if transport.username:
                client.login(transport.username, transport.password or "")
            client.send_message(mime)
    except smtplib.SMTPAuthenticationError as exc:
        raise DeliveryError(
            f"e-mail not sent: {where} refused the login of {transport.username!r} ({exc.smtp_code})"
        ) from None
    except smtplib.SMTPRecipientsRefused as exc:
        raise DeliveryError(f"e-mail not sent: {where} refused the recipient {', '.join(exc.recipients)}") from None
    except smtplib.SMTPResponseException as exc:
        reason = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else exc.smtp_error
        raise DeliveryError(f"e-mail not sent: {where} answered {exc.smtp_code} {reason}") from None
    except (OSError, smtplib.SMTPException) as exc:
        raise DeliveryError(
            f"e-mail not sent: {where}: {exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}"
        ) from None


def _without_secrets(detail: str, phone: str, text: str) -> str:
    """The gateway's answer for staff and the audit log, unless it repeats the number or any
    word of the message (which holds the password)."""
    repeated = [word for word in text.split() if len(word) >= 6] + [phone, phone.lstrip("+")]
    if any(part in detail for part in repeated):
        return "(its answer repeats the request, so it is not shown)"
    return detail


def _http_sms(transport: HttpSmsTransport, phone: str, text: str) -> None:
    body = {transport.fields["to"]: phone, transport.fields["text"]: text}
    if transport.sender:
        body[transport.fields["sender"]] = transport.sender
    request = urllib.request.Request(
        transport.url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "User-Agent": "imaging-exchange", **transport.headers},
        method="POST",
    )
    where = f"SMS gateway {transport.url}"
    try:
        context = tls.client_context(transport.ca_file) if transport.url.startswith("https:") else None
        with urllib.request.urlopen(request, timeout=transport.timeout, context=context) as response:
            response.read(65536)
    except urllib.error.HTTPError as exc:
        detail = _without_secrets(exc.read(300).decode(errors="replace").strip(), phone, text)
        raise DeliveryError(f"SMS not sent: {where} answered {exc.code} {exc.reason}: {detail}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason.strerror if isinstance(exc.reason, OSError) and exc.reason.strerror else exc.reason
        raise DeliveryError(f"SMS not sent: {where}: {reason}") from None
    except OSError as exc:
        raise DeliveryError(f"SMS not sent: {where}: {exc}") from None


def _spool(site: Site, kind: str, payload: bytes) -> Path:
    outbox = Path(site.outbox_dir)
    try:
        outbox.mkdir(mode=0o700, parents=True, exist_ok=True)
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        path = outbox / f"{stamp}-{secrets.token_hex(4)}.{kind}"
        staged = outbox / f".{path.name}.tmp"
        descriptor = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(payload)
        staged.rename(path)  # a reader never sees half a message
        return path
    except OSError as exc:
        raise DeliveryError(f"{kind} not written: outbox {outbox}: {exc.strerror}") from None


def send_email(site: Site, message: Email) -> None:
    mime = _mime(site, message)
    if isinstance(site.email, OutboxTransport):
        _spool(site, "eml", mime.as_bytes())
    else:
        _smtp(site.email, mime)


def send_sms(site: Site, phone: str, text: str) -> None:
    if isinstance(site.sms, OutboxTransport):
        _spool(site, "sms", json.dumps({"to": phone, "text": text}).encode())
    else:
        _http_sms(site.sms, phone, text)
