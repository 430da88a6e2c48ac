"""Site data (scripts/exchange/site.py) of one made-up hospital, for the demo and test hosts,
the unit tests and the benchmarks."""

from __future__ import annotations

import struct
import zlib

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


ACCENT = "#0b5394"  # the made-up hospital's blue: 7.8:1 against white


def branded_site(logo: str) -> dict:
    """The outbox site with its own logo (a file on the admin's machine) and accent colour."""
    return outbox_site() | {"logo": logo, "accent_colour": ACCENT}


def logo_png(size: int = 168) -> bytes:
    """The made-up hospital's logo: a white cross on a rounded square of its blue, as a real PNG
    (browsers decode it), made here so no image file sits in the repository."""
    blue, white, clear = bytes.fromhex(ACCENT[1:]) + b"\xff", b"\xff\xff\xff\xff", b"\0\0\0\0"
    corner, arm, half = size // 5, size // 9, size // 2
    rows = []
    for y in range(size):
        row = bytearray(b"\0")  # filter type: none
        for x in range(size):
            dx, dy = max(corner - x, x - (size - 1 - corner), 0), max(corner - y, y - (size - 1 - corner), 0)
            inside = dx * dx + dy * dy <= corner * corner
            cross = (abs(x - half) < arm or abs(y - half) < arm) and max(abs(x - half), abs(y - half)) < size // 3
            row += white if inside and cross else blue if inside else clear
        rows.append(bytes(row))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", size, size, 8, 6, 0, 0, 0)  # 8 bits per channel, RGBA
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"".join(rows)))
        + chunk(b"IEND", b"")
    )
