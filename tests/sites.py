"""Site data (scripts/exchange/site.py) of one made-up hospital, for the demo and test hosts,
the unit tests and the benchmarks."""

from __future__ import annotations

# The credentials the loopback message servers (tests/messaging.py) accept.
SMTP_USER = "exchange-relay"
SMTP_PASSWORD = "relay-Secret-4711"
SMS_TOKEN = "sms-token-0815"


def outbox_site() -> dict:
    """Messages go to the host's outbox (/var/spool/imaging-exchange/outbox), not to anyone.
    No viewer: the test hosts have none, so their packages carry none and the texts say so."""
    return {
        "institution": {"nl": "het Testziekenhuis", "en": "Test Hospital"},
        "department": {"nl": "afdeling Radiologie", "en": "Department of Radiology"},
        "portal_url": "https://exchange.test.example",
        "contact": {
            "email": "helpdesk@hospital.example",
            "phone": "012-345 6789",
            "hours": {"nl": "op werkdagen 8:30-17:00", "en": "weekdays 8:30-17:00"},
            "urgent_phone": "012-345 0000",
        },
        "staff_mailbox": "desk@hospital.example",
        "staff_language": "en",
        "email": {"transport": "outbox", "sender": "no-reply@hospital.example"},
        "sms": {"transport": "outbox"},
    }


def viewer_site(viewer_dir: str = "/opt/imaging-exchange/cdviewer") -> dict:
    """The same site with the CD viewer in every package (`viewer_dir` holds run_cdviewer.exe)."""
    return outbox_site() | {"windows_viewer": "run_cdviewer.exe", "viewer_dir": viewer_dir}


def relay_site(smtp_port: int, sms_url: str, ca_file: str) -> dict:
    """The same site sending through an SMTP relay (STARTTLS, AUTH) and an HTTP SMS gateway;
    `ca_file` is the relay CA's path where the tool runs."""
    return outbox_site() | {
        "email": {
            "transport": "smtp",
            "host": "127.0.0.1",
            "port": smtp_port,
            "security": "starttls",
            "username": SMTP_USER,
            "password": SMTP_PASSWORD,
            "sender": "no-reply@hospital.example",
            "ca_file": ca_file,
            "timeout": 10,
        },
        "sms": {
            "transport": "http",
            "url": sms_url,
            "headers": {"Authorization": f"Bearer {SMS_TOKEN}"},
            "sender": "Radiology",
            "timeout": 10,
        },
    }
