"""The messages recipients and staff get, rendered from exchange/templates/messages/ for both languages."""

import datetime
import os
import time

import pytest

from exchange import templates
from exchange.credentials import generate_password
from exchange.messaging.messages import MessageError, Messages, mask_email, mask_phone, when
from exchange.policy import load_policy
from exchange.site import parse_site
from roles import REPO
from tests.sites import outbox_site, viewer_site

MESSAGES = templates.MESSAGES
POLICY = load_policy(REPO / "policies.yaml").policy
EXPIRES = datetime.datetime(2026, 12, 5, 13, 0, tzinfo=datetime.UTC)
LINK = "https://exchange.test.example/l/tOkEn-ExAmPlE_0123456789abcdefghijklmnopqrs"


@pytest.fixture(scope="module")
def messages():
    """The site with the CD viewer in every package."""
    return Messages(parse_site(viewer_site(), "test"), MESSAGES)


@pytest.fixture(scope="module")
def no_viewer():
    """The site without a viewer (the test hosts')."""
    return Messages(parse_site(outbox_site(), "test"), MESSAGES)


def link_mail(messages: Messages, lang: str) -> str:
    """The link e-mail's body, its lines joined (the mail wraps them)."""
    return " ".join(messages.email("link-email", lang, to="p@example.org", link=LINK, expires=EXPIRES).body.split())


VALID_UNTIL = "maandag 28 december 2026 om 01:00 (CET)"


def partner_mail(messages: Messages, lang: str, policy=POLICY) -> str:
    mail = messages.email(
        "partner-credentials-email", lang, to="c@partner.example", account="cardiology",
        organisation="Cardiology", phone_masked="+31*******78", valid_until=VALID_UNTIL, policy=policy,
    )  # fmt: skip
    return " ".join(mail.body.split())


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
    assert when(EXPIRES, lang, "Europe/Amsterdam") in " ".join(mail.body.split())
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
        organisation="Cardiology", phone_masked="+31*******78", valid_until=VALID_UNTIL, policy=POLICY,
    )  # fmt: skip
    sms = messages.sms("partner-credentials-sms", lang, password=password, valid_until=VALID_UNTIL)
    assert (
        "cardiology" in mail.body and "+31*******78" in mail.body and str(POLICY.passwords.quality.minlen) in mail.body
    )
    assert password not in mail.body and password in sms and "cardiology" not in sms
    # An unused temporary password stops working: both say until when.
    assert VALID_UNTIL in " ".join(mail.body.split()) and VALID_UNTIL in sms


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
    moment = datetime.datetime(2026, 12, 5, 13, 0, tzinfo=datetime.UTC)
    assert when(moment, "nl", "Europe/Amsterdam") == "zaterdag 5 december 2026 om 14:00 (CET)"
    assert when(moment, "en", "Europe/Amsterdam") == "Saturday 5 December 2026 at 14:00 (CET)"
    summer = datetime.datetime(2026, 7, 1, 12, 0, tzinfo=datetime.UTC)
    assert when(summer, "nl", "Europe/Amsterdam") == "woensdag 1 juli 2026 om 14:00 (CEST)"
    assert when(summer.timestamp(), "en", "Europe/London") == "Wednesday 1 July 2026 at 13:00 (BST)"


@pytest.fixture
def server_in_utc(monkeypatch):
    """The server's clock zone is UTC, as on a stock Debian server (and the test hosts)."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_times_are_in_the_sites_zone_not_the_servers(server_in_utc):
    assert datetime.datetime(2026, 12, 5, 13, 0).astimezone().tzname() == "UTC" and os.environ["TZ"] == "UTC"
    amsterdam = Messages(parse_site(outbox_site(), "test"), MESSAGES)
    assert amsterdam.site.timezone == "Europe/Amsterdam"  # the default
    for lang, expected in [("nl", "om 14:00 (CET)"), ("en", "at 14:00 (CET)")]:
        assert expected in link_mail(amsterdam, lang)
        assert expected in amsterdam.sms("link-sms", lang, password="x", expires=EXPIRES, resent=False)
    london = Messages(parse_site(outbox_site() | {"timezone": "Europe/London"}, "test"), MESSAGES)
    assert "at 13:00 (GMT)" in link_mail(london, "en")


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


# -- what recipients read: the reviewer's findings ------------------------------------------


@pytest.mark.parametrize("lang", ["nl", "en"])
def test_without_a_viewer_the_link_mail_says_so_and_names_the_department(no_viewer, lang):
    body = link_mail(no_viewer, lang)
    dicom = body.split("4. ")[1].split("5. ")[0]
    assert "run_cdviewer" not in body and "start" not in dicom
    assert {
        "nl": "De DICOM-bestanden zelf openen: in de map zit geen DICOM-viewerprogramma, gebruik daarvoor een "
        "DICOM-viewer op uw computer; op een Mac bijvoorbeeld met OsiriX Lite of Horos.",
        "en": "To open the DICOM files themselves: the folder holds no DICOM viewer program, so use a DICOM viewer "
        "on your computer; on a Mac, for example OsiriX Lite or Horos.",
    }[lang] in dicom
    department = {"nl": "contact op met de afdeling Radiologie", "en": "contact the Department of Radiology"}[lang]
    assert department in body


@pytest.mark.parametrize("lang", ["nl", "en"])
def test_the_urgent_number_is_shown_only_when_the_site_has_one(messages, lang):
    urgent = {
        "nl": "Alleen in spoedeisende gevallen kunt u buiten kantooruren de dienstdoende laborant Radiologie "
        "bereiken via de telefooncentrale: 012-345 0000.",
        "en": "Only in urgent cases outside office hours can you reach the radiographer on duty through the "
        "hospital switchboard: 012-345 0000.",
    }[lang]
    assert urgent in link_mail(messages, lang) and urgent in partner_mail(messages, lang)
    site = viewer_site()
    site["contact"] = {k: v for k, v in site["contact"].items() if k != "urgent_phone"}
    plain = Messages(parse_site(site, "test"), MESSAGES)
    assert "012-345 0000" not in link_mail(plain, lang) and "urgent" not in link_mail(plain, lang)
    assert "spoedeisende" not in link_mail(plain, lang)


@pytest.mark.parametrize("lang", ["nl", "en"])
def test_link_mail_views_on_any_device_help_is_on_the_site_and_no_padlock(lang):
    site = viewer_site() | {"portal_url": "https://exchange.test.example:8443"}
    body = link_mail(Messages(parse_site(site, "test"), MESSAGES), lang)
    steps = [body.split(f"{n}. ", 1)[1].split(f"{n + 1}. ", 1)[0].strip() for n in (1, 2, 3, 4)]
    # Nobody is sent away for their phone: any device downloads, unpacks and shows the images.
    any_device = {
        "nl": [
            "Open de link op een computer, tablet of telefoon. Vul het wachtwoord uit de sms in en download het "
            "zip-bestand.",
            'Pak het zip-bestand uit. Windows: klik met de rechtermuisknop op het bestand en kies "Alles uitpakken". '
            "Mac: dubbelklik op het bestand. Tablet of telefoon: open het bestand in de app Bestanden (op Android "
            'kiest u "Uitpakken").',
            "Open het bestand INDEX.HTM in de uitgepakte map: dan ziet u de beelden in uw browser, zonder iets te "
            "installeren.",
        ],
        "en": [
            "Open the link on any computer, tablet or phone. Enter the password from the text message and download "
            "the zip file.",
            'Unpack the zip file. Windows: right-click the file and choose "Extract All". Mac: double-click the file. '
            'Tablet or phone: open the file in the Files app (on Android, choose "Extract").',
            "Open the file INDEX.HTM in the unpacked folder: it shows the images in your browser, with nothing to "
            "install.",
        ],
    }
    assert steps[:3] == any_device[lang]
    assert {
        "nl": "start op Windows run_cdviewer.exe in de uitgepakte map",
        "en": "on Windows, start run_cdviewer.exe in the unpacked folder",
    }[lang] in steps[3]
    for gone in ("niet bekijken", "cannot be viewed", "Windows-computer of een Mac", "Windows computer or a Mac"):
        assert gone not in body
    assert "https://exchange.test.example:8443/help" in body
    assert "https://exchange.test.example:8443/ " in body  # the real site's address, port and all
    assert {"nl": 'geen waarschuwing zoals "Niet beveiligd"', "en": 'no warning such as "Not secure"'}[lang] in body
    assert {
        "nl": "Wij vragen u nooit om uw wachtwoord, niet per e-mail en niet per telefoon.",
        "en": "We never ask you for your password, by e-mail or by phone.",
    }[lang] in body
    for gone in ("padlock", "slotje", "only by text message", "alleen per sms"):
        assert gone not in body


def test_dutch_texts_read_as_a_dutch_hospital_writes(messages):
    body = link_mail(messages, "nl")
    subject = messages.email("link-email", "nl", to="p@example.org", link=LINK, expires=EXPIRES).subject
    assert subject == "Beelden uitwisselen met de afdeling Radiologie van het Testziekenhuis"
    assert "die de afdeling Radiologie van het Testziekenhuis voor u heeft klaargezet" in body
    assert "Download de bestanden dus vóór die tijd." in body
    partner = partner_mail(messages, "nl")
    assert "bij de afdeling Radiologie van het Testziekenhuis" in partner
    assert 'In uw account vindt u de mappen "download"' in partner
    sms = messages.sms("link-sms", "nl", password="x", expires=EXPIRES, resent=False)
    for text in (body, partner, sms):
        assert "SMS" not in text  # one spelling: sms
    assert "per sms" in body and "per sms" in partner
    files = [type("U", (), {"path": "scan.dcm", "size": 5, "modified": EXPIRES})()]
    notice = messages.email(
        "upload-notice-email", "nl", to="desk@hospital.example", account="link-abcdefgh", who="x",
        folder="/upload", files=files, retention_days=7,
    )  # fmt: skip
    assert "geüpload" in notice.body and "geupload" not in notice.body
    big = [type("U", (), {"path": "ct.dcm", "size": 5_000_000, "modified": EXPIRES})()]
    notice = messages.email(
        "upload-notice-email", "nl", to="desk@hospital.example", account="link-abcdefgh", who="x",
        folder="/upload", files=big, retention_days=7,
    )  # fmt: skip
    assert "(5,0 MB, zaterdag 5 december 2026 om 14:00 (CET))" in notice.body


@pytest.mark.parametrize("lang", ["nl", "en"])
def test_partner_mail_names_the_sftp_port_and_the_dictionary_only_when_checked(lang):
    site = viewer_site() | {"sftp_port": 2222}
    messages = Messages(parse_site(site, "test"), MESSAGES)
    body = partner_mail(messages, lang)
    assert {"nl": "server exchange.test.example, poort 2222,", "en": "server exchange.test.example, port 2222,"}[
        lang
    ] in body
    dictionary = {"nl": "woordenboek", "en": "dictionary"}[lang]
    assert dictionary in body
    quality = POLICY.passwords.quality.model_copy(update={"dictcheck": False})
    lenient = POLICY.model_copy(update={"passwords": POLICY.passwords.model_copy(update={"quality": quality})})
    assert dictionary not in partner_mail(messages, lang, lenient)


@pytest.mark.parametrize("lang", ["nl", "en"])
@pytest.mark.parametrize("expired", [False, True])
def test_the_expiry_notice_says_when_and_until_when_and_carries_the_disclaimer(messages, lang, expired):
    mail = messages.email(
        "password-expiry-email", lang, to="c@partner.example", account="cardiology", organisation="Cardiology",
        expires="zondag 6 december 2026 om 01:00 (CET)", locks="dinsdag 5 januari 2027 om 01:00 (CET)",
        expired=expired, policy=POLICY,
    )  # fmt: skip
    text = " ".join(mail.body.split())
    assert "cardiology" in mail.subject and ("verlopen" in mail.subject or "expired" in mail.subject) == expired
    assert "zondag 6 december 2026" in text and "dinsdag 5 januari 2027" in text
    assert f"{POLICY.passwords.quality.minlen} " in text and "/login" in text
    assert (DUTCH_DISCLAIMER if lang == "nl" else "intended for the addressee only") in text
