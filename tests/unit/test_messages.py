"""The messages recipients and staff get, rendered from templates/messages/ for both languages."""

import datetime

import pytest

from exchange.credentials import generate_password
from exchange.messages import MessageError, Messages, mask_email, mask_phone, when
from exchange.policy import load_policy
from exchange.site import parse_site
from roles import REPO
from tests.sites import outbox_site

MESSAGES = REPO / "templates" / "messages"
POLICY = load_policy(REPO / "policies.yaml").policy
EXPIRES = datetime.datetime(2026, 12, 5, 13, 0, tzinfo=datetime.UTC)
LINK = "https://exchange.test.example/l/tOkEn-ExAmPlE_0123456789abcdefghijklmnopqrs"


@pytest.fixture(scope="module")
def messages():
    return Messages(parse_site(outbox_site(), "test"), MESSAGES)


# The source document's disclaimer (issue 5), with the site's name where it names the hospital.
DUTCH_DISCLAIMER = (
    "Via de beelduitwisselingswebsite kunt u files sturen naar en/of ontvangen van het Testziekenhuis. Deze files "
    "kunnen vertrouwelijke of persoonlijk informatie bevatten. De inhoud is alleen bestemd voor de geadresseerde. "
    "Als u onbedoeld toegang heeft ontvangen tot deze website, dan verzoeken wij u per direct contact met ons op te "
    "nemen. Het is niet toegestaan om files die niet voor u bestemd zijn in te zien, te vermenigvuldigen dan wel te "
    "verspreiden."
)


@pytest.mark.parametrize("lang", ["nl", "en"])
def test_link_mail_has_link_expiry_help_and_disclaimer_but_no_password(messages, lang):
    password = generate_password(POLICY)
    mail = messages.email("link-email", lang, to="p@example.org", link=LINK, expires=EXPIRES)
    sms = messages.sms("link-sms", lang, password=password, expires=EXPIRES, resent=False)
    assert LINK in mail.body and mail.subject
    assert when(EXPIRES, lang) in mail.body
    assert "run_cdviewer.exe" in mail.body and "OsiriX Lite" in mail.body and "Horos" in mail.body
    assert "helpdesk@hospital.example" in mail.body and "012-345 6789" in mail.body
    assert password not in mail.body
    assert password in sms and LINK not in sms and "/l/" not in sms
    assert len(sms) <= 306, "two SMS segments at most"


def test_dutch_disclaimer_is_the_source_documents_text_with_the_sites_name(messages):
    mail = messages.email("link-email", "nl", to="p@example.org", link=LINK, expires=EXPIRES)
    assert DUTCH_DISCLAIMER in " ".join(mail.body.split())


def test_english_disclaimer_says_the_same(messages):
    body = " ".join(messages.email("link-email", "en", to="p@example.org", link=LINK, expires=EXPIRES).body.split())
    assert "receive files from Test Hospital" in body
    assert "not permitted to view, copy or distribute files that are not intended for you" in body


@pytest.mark.parametrize("lang", ["nl", "en"])
def test_partner_notice_names_account_and_rules_but_sms_alone_carries_the_password(messages, lang):
    password = generate_password(POLICY)
    mail = messages.email(
        "partner-credentials-email", lang, to="c@partner.example", account="cardiology",
        organisation="Cardiology", phone_masked="+31*******78", policy=POLICY,
    )  # fmt: skip
    sms = messages.sms("partner-credentials-sms", lang, password=password)
    assert (
        "cardiology" in mail.body and "+31*******78" in mail.body and str(POLICY.passwords.quality.minlen) in mail.body
    )
    assert password not in mail.body and password in sms and "cardiology" not in sms


def test_upload_notice_lists_every_file(messages):
    files = [
        type("U", (), {"path": "scan/ct-1.dcm", "size": 5_000_000, "modified": EXPIRES})(),
        type("U", (), {"path": "report.pdf", "size": 1200, "modified": EXPIRES})(),
    ]
    mail = messages.email(
        "upload-notice-email", "en", to="desk@hospital.example", account="link-abcdefgh",
        who="link for p***@example.org", folder="/srv/exchange/links/link-abcdefgh/upload", files=files, retention_days=7,
    )  # fmt: skip
    assert "link-abcdefgh" in mail.subject and "2 files" in mail.subject
    assert "scan/ct-1.dcm" in mail.body and "report.pdf" in mail.body and "5.0 MB" in mail.body


def test_dates_read_naturally_in_both_languages():
    moment = datetime.datetime(2026, 12, 5, 13, 0, tzinfo=datetime.UTC).astimezone()
    assert when(moment, "nl").startswith(f"zaterdag 5 december 2026 om {moment:%H:%M}")
    assert when(moment, "en").startswith(f"Saturday 5 December 2026 at {moment:%H:%M}")


def test_masks_keep_enough_to_recognise_and_too_little_to_use():
    assert mask_email("patient.name@example.org") == "p***@example.org"
    assert mask_phone("+31612345678") == "+31*******78"


def test_a_broken_or_missing_template_is_named(messages, tmp_path):
    (tmp_path / "link-email.nl.j2").write_text("no subject line\n\nbody\n")
    broken = Messages(messages.site, tmp_path)
    with pytest.raises(MessageError, match="link-email.nl.j2: must start with one `Subject:` line"):
        broken.email("link-email", "nl", to="p@example.org")
    with pytest.raises(MessageError, match="link-sms.nl.j2: message template missing"):
        broken.sms("link-sms", "nl")


def test_mail_lines_are_wrapped_but_links_stay_whole(messages):
    body = messages.email("link-email", "nl", to="p@example.org", link=LINK, expires=EXPIRES).body
    assert f"    {LINK}\n" in body
    assert all(len(line) <= 76 for line in body.splitlines() if not line.startswith(" "))
