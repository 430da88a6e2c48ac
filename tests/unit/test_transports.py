"""The transports against real servers on loopback: aiosmtpd (STARTTLS, AUTH) and an HTTP gateway."""

import json

import pytest

from exchange.messaging.messages import Email
from exchange.messaging.transports import DeliveryError, send_email, send_sms
from exchange.site import parse_site
from tests.messaging import free_port
from tests.sites import SMS_TOKEN, outbox_site, relay_site


def site(servers, **changes):
    smtp, sms, ca = servers
    data = relay_site(smtp.port, sms.url, str(ca))
    for key, value in changes.items():
        data[key] = {**data[key], **value}
    return parse_site(data, "test")


MAIL = Email(
    to="patient@example.org",
    subject="Beelden van het Testziekenhuis",
    body="Geachte heer/mevrouw, \u00e9\u00e9n link.\n",
)


def test_mail_goes_through_starttls_and_auth(servers):
    smtp = servers[0]
    send_email(site(servers), MAIL)
    received = smtp.to("patient@example.org")[-1]
    assert received.message["Subject"] == MAIL.subject
    assert received.message["From"] == "no-reply@hospital.example"
    assert received.message["Auto-Submitted"] == "auto-generated"
    assert "\u00e9\u00e9n link" in received.body


def test_wrong_relay_password_is_reported_by_name(servers):
    with pytest.raises(
        DeliveryError, match=r"e-mail not sent: smtp 127.0.0.1:\d+ refused the login of 'exchange-relay'"
    ):
        send_email(site(servers, email={"password": "wrong"}), MAIL)


def test_an_untrusted_relay_certificate_is_refused(servers):
    with pytest.raises(DeliveryError, match="CERTIFICATE_VERIFY_FAILED"):
        send_email(site(servers, email={"ca_file": None}), MAIL)


def test_a_relay_that_is_down_is_reported(servers):
    with pytest.raises(DeliveryError, match=r"e-mail not sent: smtp 127.0.0.1:\d+: Connection refused"):
        send_email(site(servers, email={"port": free_port()}), MAIL)


def test_sms_is_one_json_post_with_the_auth_header(servers):
    sms = servers[1]
    send_sms(site(servers), "+31612345678", "uw wachtwoord is Abc2-Kp7x")
    call = sms.to("+31612345678")[-1]
    assert call.body == {"to": "+31612345678", "text": "uw wachtwoord is Abc2-Kp7x", "from": "Radiology"}
    assert call.headers["Authorization"] == f"Bearer {SMS_TOKEN}"
    assert call.headers["Content-Type"] == "application/json"


def test_field_names_follow_the_provider(servers):
    sms = servers[1]
    send_sms(
        site(servers, sms={"fields": {"to": "recipient", "text": "body", "sender": "originator"}}), "+31611111111", "x"
    )
    assert sms.calls[-1].body == {"recipient": "+31611111111", "body": "x", "originator": "Radiology"}


def test_a_gateway_refusal_is_reported_without_the_text(servers):
    sms = servers[1]
    sms.status = 402
    try:
        with pytest.raises(DeliveryError) as refused:
            send_sms(site(servers), "+31612345678", "uw wachtwoord is Secret-Pass-2345")
    finally:
        sms.status = 200
    assert (
        "SMS not sent" in str(refused.value) and "402" in str(refused.value) and "quota exceeded" in str(refused.value)
    )
    assert "Secret-Pass" not in str(refused.value)


def test_a_gateway_refusal_that_repeats_the_request_is_not_shown(servers):
    sms = servers[1]
    sms.status, sms.echo = 400, True
    try:
        with pytest.raises(DeliveryError) as refused:
            send_sms(site(servers), "+31612345678", "uw wachtwoord is Kq7m-Tz4p-Wx9r")
    finally:
        sms.status, sms.echo = 200, False
    message = str(refused.value)
    assert "400" in message and "repeats the request" in message
    assert "Kq7m-Tz4p-Wx9r" not in message and "31612345678" not in message


def test_outbox_writes_whole_private_files(tmp_path):
    outbox = tmp_path / "outbox"
    data = outbox_site() | {"outbox_dir": str(outbox)}
    local = parse_site(data, "test")
    send_email(local, MAIL)
    send_sms(local, "+31612345678", "pw")
    assert sorted(p.suffix for p in outbox.iterdir()) == [".eml", ".sms"]
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in outbox.iterdir())
    assert outbox.stat().st_mode & 0o777 == 0o700
    assert json.loads(next(outbox.glob("*.sms")).read_text()) == {"to": "+31612345678", "text": "pw"}
    assert f"Subject: {MAIL.subject}" in next(outbox.glob("*.eml")).read_text()
