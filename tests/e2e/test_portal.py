"""The secure web page on a real host: nginx with TLS, the portal service, sshd and PAM behind
it, driven by Debian's headless Chromium (Playwright) and by plain HTTPS clients.

Screenshots of every page land in reports/portal/ (test artifacts)."""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import io
import json
import os
import re
import shlex
import socket
import ssl
import subprocess
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, sync_playwright
from pydicom.data import get_testdata_file

from exchange import paths
from exchange.policy import load_policy
from tests import testhost
from tests.dicom_synth import ct_study
from tests.e2e.clients import issued_account, paramiko_sftp, portal_form
from tests.e2e.conftest import make_exchange
from tests.pyinfra_run import REPO
from tests.sites import ACCENT, branded_site, logo_png

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
SHOTS = REPO / "reports" / "portal"
PASSWORD = re.compile(r"\b([A-Za-z2-9]{4}(?:-[A-Za-z2-9]{4}){3,})\b")
NEUTRAL = "did not succeed"


@pytest.fixture(scope="module")
def web(shared_hosts, tmp_path_factory):
    """A deployed host with the web page and the hospital's logo and colour; messages go to its outbox."""
    host = testhost.boot("portal", log=lambda message: print(message, flush=True), directory=shared_hosts)
    directory = tmp_path_factory.mktemp("portal")
    logo = directory / "logo.png"  # on the admin's machine: the deploy copies it to the server
    logo.write_bytes(logo_png())
    try:
        yield make_exchange(
            host, directory, site=branded_site(str(logo)) | {"portal_url": host.portal_url}, portal=host.portal_data()
        )
    finally:
        testhost.shutdown(host)


@pytest.fixture(scope="module")
def browser():
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    # The test host's certificate is self-signed; TLS itself is checked with a pinned CA below.
    context = browser.new_context(ignore_https_errors=True, accept_downloads=True, locale="en-GB")
    yield context.new_page()
    context.close()


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


@dataclass
class Link:
    account: str
    url: str
    password: str


_counter = iter(range(10_000))


def issue_link(web, lang: str = "en") -> Link:
    n = next(_counter)
    email, phone = f"web{n}@example.org", f"+3162345{n:04d}"
    result = web.host.ssh(shlex.join(["exchange", "link", "issue", "--email", email, "--phone", phone, "--lang", lang]))
    account = issued_account(result.stdout)
    mail = web.host.ssh(f"grep -l -F {shlex.quote(email)} {paths.OUTBOX_DIR}/*.eml | xargs cat").stdout
    sms = web.host.ssh(f"grep -l -F {shlex.quote(phone)} {paths.OUTBOX_DIR}/*.sms | xargs cat").stdout
    url = re.search(re.escape(web.host.portal_url) + r"/l/[A-Za-z0-9_-]{43}", mail)[0]
    return Link(account, url, PASSWORD.search(json.loads(sms)["text"])[1])


def put_study(web, account: str) -> tuple[str, str]:
    """Staff pack a JPEG 2000 study into the account; returns the package's name and SHA-256."""
    study = Path(get_testdata_file("JPEG2000.dcm", download=False))
    encoded = base64.b64encode(study.read_bytes()).decode()
    web.host.ssh(f"rm -rf /tmp/study && mkdir /tmp/study && echo {encoded} | base64 -d > /tmp/study/IM1")
    out = web.host.ssh(f"exchange package --to {account} /tmp/study --label 'CT thorax'").stdout
    package = re.search(r"/download/(\S+\.zip)", out)[1]
    folder = f"/srv/exchange/{'links' if account.startswith('link-') else 'partners'}/{account}/download"
    return package, web.host.ssh(f"sha256sum {folder}/{shlex.quote(package)}").stdout.split()[0]


def audit_events(web, event: str) -> list[dict]:
    text = web.host.ssh(f'grep -hF \'"event": "{event}"\' {paths.AUDIT_LOG} || true').stdout
    return [json.loads(line) for line in text.splitlines()]


_certificates: dict[str, str] = {}


def tls_context(web) -> ssl.SSLContext:
    """Trusts exactly the test host's certificate."""
    if web.host.name not in _certificates:
        _certificates[web.host.name] = web.host.ssh(f"cat {paths.TLS_CERTIFICATE}").stdout
    return ssl.create_default_context(cadata=_certificates[web.host.name])


def client(web, source: str | None = None) -> httpx.Client:
    """An HTTPS client as a browser set to English, optionally from another loopback address."""
    context = tls_context(web)
    transport = httpx.HTTPTransport(verify=context, local_address=source) if source else None
    return httpx.Client(
        base_url=web.host.portal_url,
        verify=context,
        transport=transport,
        timeout=60,
        follow_redirects=True,
        headers={"accept-language": "en"},
    )


# -- the link flow -------------------------------------------------------------------------


def test_link_flow_download_and_upload_in_the_browser(web, page, tmp_path):
    link = issue_link(web)
    package, sha256 = put_study(web, link.account)

    page.goto(link.url)
    assert "This link works until" in page.content()
    # The host's clock runs in UTC; recipients read the site's zone (Europe/Amsterdam), named.
    assert web.host.ssh("date +%Z").stdout.strip() == "UTC"
    works_until = r"This link works until \w+ \d+ \w+ \d{4} at \d\d:\d\d \((CET|CEST)\)"
    assert re.search(works_until, page.inner_text("main"))
    assert "intended for the addressee only" in page.inner_text("footer")
    shot(page, "01-link-password")
    page.fill("#password", link.password)
    page.click("button[type=submit]")
    page.wait_for_url("**/files")
    shot(page, "02-files")
    assert package in page.inner_text("main")
    download_before = works_until.replace("This link works until", "Download your files before")
    assert re.search(download_before, page.inner_text("main"))

    with page.expect_download() as download:
        page.click(f"a[download]:has-text('{package}')")
    saved = tmp_path / "got.zip"
    download.value.save_as(saved)
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == sha256

    upload = tmp_path / "referral letter.pdf"
    upload.write_bytes(b"%PDF-1.4 made up\n" + bytes(range(256)) * 4000)
    page.set_input_files("#file", str(upload))
    page.click("#upload-form button[type=submit]")
    page.wait_for_url("**/files?uploaded=*")
    shot(page, "03-uploaded")
    assert "Received: referral letter.pdf" in page.inner_text("main")
    # Staff find it, complete, in the upload folder, under the name the recipient gave it.
    stored = web.host.ssh(f"sha256sum '/srv/exchange/links/{link.account}/upload/referral letter.pdf'").stdout
    assert stored.split()[0] == hashlib.sha256(upload.read_bytes()).hexdigest()
    assert not web.host.ssh(f"ls -A /srv/exchange/links/{link.account}/upload | grep '^\\.' || true").stdout

    page.click("form[action='/logout'] button")
    shot(page, "04-logged-out")
    page.goto(web.host.portal_url + "/files")
    assert page.locator("p.error").inner_text().startswith("Your session has ended")

    logins = [e for e in audit_events(web, "portal-login") if e["account"] == link.account]
    assert logins and logins[0]["ip"] == "127.0.0.1" and logins[0]["kind"] == "link"
    downloads = [e for e in audit_events(web, "portal-download") if e["account"] == link.account]
    assert downloads[0]["file"] == package and downloads[0]["complete"] is True
    uploads = [e for e in audit_events(web, "portal-upload") if e["account"] == link.account]
    assert uploads[0]["file"] == "referral letter.pdf" and uploads[0]["bytes"] == upload.stat().st_size
    # The web session was the account's own SFTP session: the SFTP log has it.
    assert f"account={link.account}" in web.host.ssh(f"cat {paths.SFTP_LOG}").stdout


def test_download_resumes_with_a_range_and_partials_stay_hidden(web):
    link = issue_link(web)
    package, _ = put_study(web, link.account)
    web.host.ssh(f"cd /srv/exchange/links/{link.account}/download && echo half > .next.zip.partial")
    with client(web) as http:
        assert portal_form(http, link.url.removeprefix(web.host.portal_url), password=link.password).status_code == 200
        listing = http.get("/files").text
        assert package in listing and ".next.zip.partial" not in listing
        whole = http.get(f"/files/download/{package}")
        assert whole.status_code == 200 and whole.headers["content-length"] == str(len(whole.content))
        assert whole.headers["cache-control"] == "no-store"
        part = http.get(f"/files/download/{package}", headers={"Range": "bytes=1000-1999"})
        assert part.status_code == 206 and part.content == whole.content[1000:2000]
        assert part.headers["content-range"] == f"bytes 1000-1999/{len(whole.content)}"
        assert http.get(f"/files/download/{package}", headers={"Range": "bytes=99999999-"}).status_code == 416
        assert http.get("/files/download/.next.zip.partial").status_code == 404
        # A resume continues the same file only; a range past any size is no range; HEAD reads nothing.
        stale = {"Range": "bytes=1000-", "If-Range": "Mon, 01 Jan 2024 00:00:00 GMT"}
        assert http.get(f"/files/download/{package}", headers=stale).content == whole.content
        same = {"Range": "bytes=1000-", "If-Range": whole.headers["last-modified"]}
        assert http.get(f"/files/download/{package}", headers=same).content == whole.content[1000:]
        huge = http.get(f"/files/download/{package}", headers={"Range": "bytes=0-" + "9" * 4000})
        assert huge.status_code == 200 and huge.content == whole.content
        downloads = len(audit_events(web, "portal-download"))
        head = http.head(f"/files/download/{package}")
        assert head.status_code == 200 and head.headers["content-length"] == str(len(whole.content))
        assert not head.content and len(audit_events(web, "portal-download")) == downloads
        assert http.get("/files?error=no-such-text").status_code == 200


def test_bad_uploads_are_refused_by_name_and_leave_nothing(web):
    link = issue_link(web)
    upload_folder = f"/srv/exchange/links/{link.account}/upload"
    with client(web) as http:
        assert portal_form(http, link.url.removeprefix(web.host.portal_url), password=link.password).status_code == 200
        token = http.cookies["exchange_csrf"]
        cases = [
            ({"csrf": token}, {"file": (".hidden", b"x" * 1000)}, "bad_name"),
            ({"csrf": token}, {"file": ("C:\\Users\\me\\.profile", b"x" * 1000)}, "bad_name"),
            ({}, {"file": ("letter.pdf", b"x" * 1000)}, "form_expired"),  # no token before the file
            ({"csrf": token}, {}, "no_file"),
        ]
        for fields, files, error in cases:
            response = http.post("/files/upload", data=fields, files=files or {"other": ("", b"")})
            assert response.url.params.get("error") == error, (fields, files)
            assert 'role="alert"' in response.text
    assert web.host.ssh(f"ls -A {upload_folder}").stdout == ""  # no file, no hidden partial


def test_unknown_revoked_expired_token_and_wrong_password_get_one_answer(web, page):
    wrong, revoked, expired = issue_link(web), issue_link(web), issue_link(web)
    web.host.ssh(f"exchange link revoke {revoked.account}")
    # The record's expiry passed (the hourly purge has not run yet): the token no longer opens.
    token_file = f"{paths.LINK_TOKENS_DIR}/" + hashlib.sha256(expired.url.rsplit("/", 1)[1].encode()).hexdigest()
    web.host.ssh(
        f"python3 -c \"import json,sys; p='{token_file}'; d=json.load(open(p)); d['expires']='2020-01-01T00:00:00+00:00';"
        " open(p,'w').write(json.dumps(d))\""
    )
    answers = []
    with client(web) as http:
        for url, password in [
            (wrong.url, "Wrong-Pass-Word-0000"),
            (web.host.portal_url + "/l/" + "A" * 43, wrong.password),
            (revoked.url, revoked.password),
            (expired.url, expired.password),
        ]:
            response = portal_form(http, url.removeprefix(web.host.portal_url), password=password)
            # The whole page, but for the form's own address (which holds the token) and its token.
            main = re.search(r"<main>.*</main>", response.text, re.S)[0]
            main = re.sub(r'action="[^"]*"|name="csrf" value="[^"]*"', "", main)
            answers.append((response.status_code, main))
    assert len(set(answers)) == 1 and answers[0][0] == 401 and NEUTRAL in answers[0][1]
    page.goto(wrong.url)
    page.fill("#password", "Wrong-Pass-Word-0000")
    page.click("button[type=submit]")
    shot(page, "05-login-failed")
    assert NEUTRAL in page.locator("p.error").inner_text()


def test_lockout_after_repeated_failures(web, policy):
    link = issue_link(web)
    path = link.url.removeprefix(web.host.portal_url)
    with client(web) as http:
        for _ in range(policy.passwords.lockout.deny):
            assert portal_form(http, path, password="Wrong-Pass-Word-0000").status_code == 401
        # PAM's lockout (pam_faillock) holds for the web exactly as for SFTP.
        assert portal_form(http, path, password=link.password).status_code == 401
    web.host.ssh(f"faillock --dir {paths.FAILLOCK_DIR} --user {link.account} --reset")


def test_forms_without_the_csrf_token_are_refused(web):
    link = issue_link(web)
    with client(web) as http:
        http.get(link.url.removeprefix(web.host.portal_url))
        response = http.post(link.url.removeprefix(web.host.portal_url), data={"password": link.password})
        assert response.status_code == 403
        response = http.post("/login", data={"csrf": "forged", "username": "alice-clinic", "password": "x"})
        assert response.status_code == 403


# -- partners ------------------------------------------------------------------------------


def test_partner_sees_own_folders_and_cannot_reach_another(web, page, tmp_path):
    alice, bob = web.logins["alice-clinic"], web.logins["bob-hospital"]
    web.host.ssh(
        "echo 'for alice' > /srv/exchange/partners/alice-clinic/download/report-alice.txt && "
        "echo 'bob only' > /srv/exchange/partners/bob-hospital/download/secret-bob.txt && "
        "echo 'bob upload' > /srv/exchange/partners/bob-hospital/upload/from-bob.txt"
    )
    page.goto(web.host.portal_url + "/login")
    shot(page, "06-partner-login")
    page.fill("#username", alice.name)
    page.fill("#password", alice.password)
    page.click("button[type=submit]")
    page.wait_for_url("**/files")
    shot(page, "07-partner-files")
    text = page.inner_text("main")
    assert "report-alice.txt" in text and "secret-bob" not in text and "from-bob" not in text

    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    with client(web) as http:
        http.cookies.update(cookies)
        assert http.get("/files/download/report-alice.txt").text == "for alice\n"
        for crafted in [
            "/files/download/secret-bob.txt",
            "/files/download/..%2F..%2Fbob-hospital%2Fdownload%2Fsecret-bob.txt",
            "/files/download/../../bob-hospital/download/secret-bob.txt",
            "/files/download/%2Fsrv%2Fexchange%2Fpartners%2Fbob-hospital%2Fdownload%2Fsecret-bob.txt",
            "/files/download/..%2Fupload%2Ffrom-bob.txt",
        ]:
            response = http.get(crafted)
            assert response.status_code in (404, 401), crafted
            assert "bob only" not in response.text and "bob upload" not in response.text
    # Bob's session (his own password) does see it: the refusal above was about Alice.
    with client(web) as http:
        assert portal_form(http, "/login", username=bob.name, password=bob.password).status_code == 200
        assert http.get("/files/download/secret-bob.txt").text == "bob only\n"
    # A link account's name with its password does not open the partner login.
    link = issue_link(web)
    with client(web) as http:
        assert portal_form(http, "/login", username=link.account, password=link.password).status_code == 401


def test_expired_partner_password_is_changed_through_the_form(web, page):
    bob = web.logins["bob-hospital"]
    web.set_password(bob.name, bob.password)
    web.host.ssh(f"chage -d 0 {bob.name}")
    page.goto(web.host.portal_url + "/login")
    page.fill("#username", bob.name)
    page.fill("#password", bob.password)
    page.click("button[type=submit]")
    assert page.locator("h1").inner_text() == "Choose a new password"
    shot(page, "08-password-expired")

    def change(new: str) -> None:
        page.fill("#password", bob.password)
        page.fill("#new_password", new)
        page.fill("#new_password_again", new)
        page.evaluate("document.querySelectorAll('input[minlength]').forEach(i => i.removeAttribute('minlength'))")
        page.click("button[type=submit]")

    page.fill("#password", "Not-The-Current-One-1")
    page.fill("#new_password", "Quartz-Meadow-Lantern-4711")
    page.fill("#new_password_again", "Quartz-Meadow-Lantern-4711")
    page.click("button[type=submit]")  # a wrong current password: the neutral answer, the form again
    assert NEUTRAL in page.locator("p.error").inner_text() and page.locator("#new_password").count() == 1
    web.host.ssh(f"faillock --dir {paths.FAILLOCK_DIR} --user {bob.name} --reset")
    change("Short-1a")  # PAM's own reason comes back
    assert "BAD PASSWORD" in page.locator("ul.error").inner_text()
    shot(page, "09-password-rejected")
    new = "Quartz-Meadow-Lantern-4711"
    change(new)
    page.wait_for_url("**/files")
    changed = web.host.ssh(f"chage -l {bob.name} | sed -n 1p").stdout
    assert "password must be changed" not in changed
    paramiko_sftp(web.host, bob.name, password=new).close()  # the new password is the account's, for SFTP too
    bob.password = new
    assert [e for e in audit_events(web, "portal-password-changed") if e["account"] == bob.name]


# -- the service ---------------------------------------------------------------------------


def test_help_page_and_languages(web, page):
    page.goto(web.host.portal_url + "/help")
    shot(page, "10-help-en")
    text = page.inner_text("main")
    for question in ["no page opens", "not accepted", "cannot open", "unzip", "browsers", "within a certain time",
                     "real, secure website", "on a Mac"]:  # fmt: skip
        assert question in text, question
    # The site's data and the policy, as this host has them: the SFTP port is the host's sshd port.
    assert f"port {web.host.port}." in text
    assert "through the hospital switchboard: 012-345 0000" in text and "padlock" not in text
    assert "Everything works on a computer, tablet or phone alike" in text and "you need a Windows" not in text
    page.click("a[hreflang=nl]")
    shot(page, "11-help-nl")
    assert "Veelgestelde vragen" in page.inner_text("main") or "veelgestelde vragen" in page.inner_text("main")
    assert page.locator("html").get_attribute("lang") == "nl"


# -- on a phone --------------------------------------------------------------------------------

# Names long enough to wrap on a phone, with no hyphen (where a browser breaks by itself): a study
# as staff label it and a file a recipient uploads. They may wrap only after - _ / or a space, or
# before . or @. And the longest dates there are, in Dutch and in English (a Thursday and a
# Wednesday in September, two-digit day, summer time), as the study's time.
LONG_NAME = "CT_thorax_met_contrast_vervolgonderzoek_20261128_142300.zip"
LONG_UPLOAD = "MRI.knie.links.vervolgonderzoek.na.operatie.20261128.zip"
WRAPS_AFTER, WRAPS_BEFORE = set("-_/ "), set(".@")
LONGEST_DATE = {"nl": 1822294380, "en": 1822207980}  # donderdag 30 september 2027, Wednesday 29 September 2027

# What a page shows of itself, measured in the browser: the logo, the colour, its width, and per
# file block where its parts are and where each line of the name begins.
MEASURE = """() => {
  const box = (el) => el.getBoundingClientRect();
  // The text a reader sees (not what is there for screen readers only), and where each of its lines
  // after the first begins: the character before it, and the first of the line.
  const shown = (el) => {
    const breaks = [], range = document.createRange();
    let text = "", top = null, before = "";
    const walker = document.createTreeWalker(el, NodeFilter.SHOW_TEXT, {acceptNode: (node) =>
      node.parentElement.closest(".visually-hidden") ? NodeFilter.FILTER_REJECT : NodeFilter.FILTER_ACCEPT});
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      for (let i = 0; i < node.data.length; i++) {
        range.setStart(node, i);
        range.setEnd(node, i + 1);
        const rect = range.getClientRects()[0];
        if (rect && rect.width > 0) {
          if (top !== null && rect.top > top + 1) breaks.push(before + node.data[i]);
          top = rect.top;
        }
        before = node.data[i];
        text += node.data[i];
      }
    }
    return {text: text.trim(), breaks};
  };
  const logo = document.querySelector("img.logo");
  const blocks = [...document.querySelectorAll("ul.files > li")].map((li) => {
    const part = (selector) => li.querySelector(selector);
    const name = part(".file-name"), size = part(".file-size"), date = part(".file-date"), action = part("ul.actions a");
    const lineHeight = (el) => parseFloat(getComputedStyle(el).lineHeight);
    return {
      text: shown(name).text, date: date.textContent, box: box(li).toJSON(), lineStarts: shown(name).breaks,
      nameInside: box(name).right <= box(li).right && box(name).left >= box(li).left,
      facts: [size, date].map((el) => ({
        lines: el.getClientRects().length, tall: box(el).height / lineHeight(el), inside: box(el).right <= box(li).right,
      })),
      action: action && {text: shown(action).text, below: box(action).top >= box(date).bottom - 1,
                         inside: box(action).right <= box(li).right},
    };
  });
  return {
    scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth,
    logo: logo && {loaded: logo.complete && logo.naturalWidth > 0, alt: logo.alt, height: box(logo).height},
    accent: getComputedStyle(document.querySelector("header")).borderBottomColor,
    button: [...document.querySelectorAll("main button, main a.button")].map((el) => getComputedStyle(el).backgroundColor),
    blocks,
  };
}"""


def folder(web, path: str) -> list[str]:
    """The names the page lists of a folder: its visible regular files."""
    return web.host.ssh(f"find {path} -maxdepth 1 -type f ! -name '.*' -printf '%f\\n'").stdout.splitlines()


def rgb(colour: str) -> str:
    return "rgb({}, {}, {})".format(*bytes.fromhex(colour[1:]))


@pytest.fixture
def phone(browser):
    """A 390 px wide phone (an iPhone 12 to 15: 390 x 844, three device pixels per CSS pixel, touch)."""
    contexts = []

    def open_phone(locale: str):
        context = browser.new_context(
            viewport={"width": 390, "height": 844}, device_scale_factor=3, is_mobile=True, has_touch=True,
            ignore_https_errors=True, locale=locale,
        )  # fmt: skip
        contexts.append(context)
        return context.new_page()

    yield open_phone
    for context in contexts:
        context.close()


def fits_the_phone_and_shows_the_hospital(page: Page, institution: str, buttons: bool = True) -> dict:
    """The page as measured, after checking what every page must do on a phone: no sideways
    scrolling, the logo loaded and named for the institution, the site's colour on the header
    rule and behind every button (log out: white, with the colour as its text and rim)."""
    seen = page.evaluate(MEASURE)
    assert seen["innerWidth"] == 390 and seen["scrollWidth"] <= seen["innerWidth"], (page.url, seen["scrollWidth"])
    assert seen["logo"] == {"loaded": True, "alt": institution, "height": 56}, seen["logo"]  # 3.5 rem
    assert seen["accent"] == rgb(ACCENT)
    assert set(seen["button"]) <= {rgb(ACCENT), "rgb(255, 255, 255)"}, seen["button"]
    assert (rgb(ACCENT) in seen["button"]) == buttons, seen["button"]
    return seen


def files_fit_the_phone(seen: dict, names: list[str], downloads: int) -> None:
    """One block per file, stacked, each with its name, size and date and, for a download, its action
    below them; sizes and dates on one line; a name wraps only after - _ . / @ or a space."""
    assert sorted(block["text"] for block in seen["blocks"]) == sorted(names)
    boxes = [block["box"] for block in seen["blocks"]]
    assert all(b["left"] >= 0 and b["right"] <= 390 for b in boxes)
    assert all(later["top"] >= earlier["bottom"] for earlier, later in zip(boxes, boxes[1:], strict=False))
    for block in seen["blocks"]:
        assert block["nameInside"], block
        for fact in block["facts"]:
            assert fact["lines"] == 1 and fact["tall"] < 1.5 and fact["inside"], block
        for start in block["lineStarts"]:
            assert start[0] in WRAPS_AFTER or start[1] in WRAPS_BEFORE, (block["text"], start)
    actions = [block["action"] for block in seen["blocks"]]
    assert all(a and a["below"] and a["inside"] for a in actions[:downloads]) and not any(actions[downloads:])
    for block in seen["blocks"]:
        if block["text"] in (LONG_NAME, LONG_UPLOAD):
            assert block["lineStarts"], f"{block['text']} fits one line: it tests no wrapping"
    long = next(block for block in seen["blocks"] if block["text"] == LONG_NAME)
    assert long["date"].startswith(("donderdag 30 september 2027", "Wednesday 29 September 2027")), long["date"]


def test_the_pages_fit_a_phone_and_show_the_hospital(web, phone):
    """A patient's link (Dutch) and a partner (English) on a 390 px phone: every page fits its width,
    carries the logo and the colour, and lists each file as one block that breaks no word."""
    link = issue_link(web, lang="nl")
    package, _ = put_study(web, link.account)
    downloads, uploads = (f"/srv/exchange/links/{link.account}/{which}" for which in ("download", "upload"))
    web.host.ssh(
        f"echo 'a study' > {downloads}/{LONG_NAME} && touch -d @{LONGEST_DATE['nl']} {downloads}/{LONG_NAME}"
        f" && echo 'a scan' > {uploads}/{LONG_UPLOAD}"
    )
    page = phone("nl-NL")
    page.goto(link.url)
    fits_the_phone_and_shows_the_hospital(page, "het Testziekenhuis")
    shot(page, "mobile-01-link-password")
    page.fill("#password", link.password)
    page.click("button[type=submit]")
    page.wait_for_url("**/files")
    seen = fits_the_phone_and_shows_the_hospital(page, "het Testziekenhuis")
    listed = folder(web, downloads)
    assert set(listed) == {LONG_NAME, package, f"{package}.sha256"}
    files_fit_the_phone(seen, [*listed, LONG_UPLOAD], downloads=3)
    # A zip's first action is to view it (exchange.portal.viewing), every other file's to download it.
    firsts = {block["text"]: block["action"]["text"] for block in seen["blocks"][:3]}
    assert firsts == {name: "Bekijken" if name.endswith(".zip") else "Downloaden" for name in firsts}
    shot(page, "mobile-02-link-files")
    page.goto(web.host.portal_url + "/help")
    fits_the_phone_and_shows_the_hospital(page, "het Testziekenhuis", buttons=False)
    shot(page, "mobile-03-help-nl")

    alice = web.logins["alice-clinic"]
    long = f"/srv/exchange/partners/alice-clinic/download/{LONG_NAME}"
    web.host.ssh(f"echo 'for alice' > {long} && touch -d @{LONGEST_DATE['en']} {long}")
    page = phone("en-GB")
    page.goto(web.host.portal_url + "/login")
    fits_the_phone_and_shows_the_hospital(page, "Test Hospital")
    shot(page, "mobile-04-partner-login")
    # The password page as a partner sees it when the two new passwords differ (no login is tried).
    page.evaluate("""() => {
      const form = document.createElement("form");
      form.method = "post"; form.action = "/password";
      const fields = {csrf: document.querySelector("input[name=csrf]").value, username: "alice-clinic",
                      password: "x", new_password: "a", new_password_again: "b"};
      for (const [name, value] of Object.entries(fields)) {
        const input = document.createElement("input");
        input.type = "hidden"; input.name = name; input.value = value; form.append(input);
      }
      document.body.append(form); form.submit();
    }""")
    page.wait_for_url("**/password")
    assert page.locator("h1").inner_text() == "Choose a new password"
    fits_the_phone_and_shows_the_hospital(page, "Test Hospital")
    shot(page, "mobile-05-partner-password")
    page.goto(web.host.portal_url + "/login")
    page.fill("#username", alice.name)
    page.fill("#password", alice.password)
    page.click("button[type=submit]")
    page.wait_for_url("**/files")
    seen = fits_the_phone_and_shows_the_hospital(page, "Test Hospital")
    listed = folder(web, "/srv/exchange/partners/alice-clinic/download")
    uploaded = folder(web, "/srv/exchange/partners/alice-clinic/upload")
    files_fit_the_phone(seen, [*listed, *uploaded], downloads=len(listed))
    shot(page, "mobile-06-partner-files")


def test_download_and_upload_work_without_javascript(web, browser, tmp_path):
    link = issue_link(web)
    package, sha256 = put_study(web, link.account)
    context = browser.new_context(ignore_https_errors=True, accept_downloads=True, java_script_enabled=False)
    page = context.new_page()
    page.goto(link.url)
    page.fill("#password", link.password)
    page.click("button[type=submit]")
    page.wait_for_url("**/files")
    with page.expect_download() as download:
        page.click(f"a[download]:has-text('{package}')")
    download.value.save_as(tmp_path / "p.zip")
    assert hashlib.sha256((tmp_path / "p.zip").read_bytes()).hexdigest() == sha256
    # Without the page's script (no progress bar) the form posts by itself; the same file arrives.
    upload = tmp_path / "scan.bin"
    upload.write_bytes(os.urandom(3 << 20))
    page.set_input_files("#file", str(upload))
    with page.expect_request("**/files/upload") as sent:
        page.click("#upload-form button[type=submit]")
    assert sent.value.headers["content-type"].startswith("multipart/form-data")
    page.wait_for_url("**/files?uploaded=scan.bin")
    stored = web.host.ssh(f"sha256sum /srv/exchange/links/{link.account}/upload/scan.bin").stdout
    assert stored.split()[0] == hashlib.sha256(upload.read_bytes()).hexdigest()
    context.close()


def test_headers_cookies_and_tls(web):
    with client(web) as http:
        response = http.get("/login")
        headers = response.headers
        assert headers["strict-transport-security"].startswith("max-age=")
        assert "default-src 'none'" in headers["content-security-policy"]
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert headers["referrer-policy"] == "no-referrer" and headers["cache-control"] == "no-store"
        assert "nginx/" not in headers.get("server", "")
        # No compression (BREACH): a page's length would tell an eavesdropper its CSRF token,
        # or a link page's token, a guess at a time, since pages show the path asked for.
        assert response.request.headers["accept-encoding"].startswith("gzip") and len(response.text) > 1400
        assert "content-encoding" not in headers
        cookie = response.headers["set-cookie"]
        assert all(flag in cookie for flag in ("Secure", "HttpOnly", "SameSite=strict"))
        # The logo the deploy installed, through nginx: the admin's file, byte for byte, nothing in it to run.
        logo = http.get(re.search(r'<img class="logo" src="([^"]+)"', response.text)[1])
        assert logo.content == logo_png() and logo.headers["content-type"] == "image/png"
        assert logo.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert logo.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'; sandbox"
    for version, accepted in [(ssl.TLSVersion.TLSv1_1, False), (ssl.TLSVersion.TLSv1_2, True)]:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        with warnings.catch_warnings():  # TLS 1.1 is deprecated in Python: here it must be offered
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = context.maximum_version = version
        if not accepted:
            context.set_ciphers("ALL:@SECLEVEL=0")
        try:
            with httpx.Client(verify=context) as http:
                http.get(web.host.portal_url + "/login")
            connected = True
        except httpx.ConnectError:
            connected = False
        assert connected == accepted, version


def test_login_posts_are_rate_limited_per_address(web):
    """From another loopback address, so the other tests' address is not slowed."""

    def attempt(_):
        with client(web, source="127.0.0.2") as http:
            return portal_form(http, "/login", username="nobody", password="x").status_code

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        codes = list(pool.map(attempt, range(30)))
    assert 429 in codes, codes  # nginx: login posts per address per minute
    assert set(codes) <= {401, 429}


def test_oversized_upload_is_refused_by_nginx_before_it_is_read(web, policy):
    """Only the headers are sent: nginx answers from the declared length alone."""
    declared = (policy.portal.upload_max_mb + 2) << 20
    request = (
        f"POST /files/upload HTTP/1.1\r\nHost: {web.host.hostname}\r\nContent-Type: multipart/form-data; boundary=x\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    )
    with socket.create_connection((web.host.hostname, web.host.portal_port), timeout=30) as raw:
        with tls_context(web).wrap_socket(raw, server_hostname=web.host.hostname) as tls:
            tls.sendall(request.encode())
            status = tls.recv(4096).split(b"\r\n", 1)[0]
    assert status == b"HTTP/1.1 413 Request Entity Too Large"


def test_portal_service_has_no_access_to_the_exchange_folders(web):
    user = "exchange-portal"
    groups = web.host.ssh(f"id -Gn {user}").stdout.split()
    assert groups == [user]
    assert web.host.ssh(f"runuser -u {user} -- ls /srv/exchange/partners", check=False).returncode != 0
    paths = web.host.ssh("systemctl show imaging-exchange-portal -p InaccessiblePaths --value").stdout
    assert "/srv/exchange" in paths
    pid = web.host.ssh("systemctl show imaging-exchange-portal -p MainPID --value").stdout.strip()
    # In the service's own mount namespace the folders are not there at all.
    inside = web.host.ssh(f"nsenter -t {pid} -m ls /srv/exchange/partners", check=False)
    assert inside.returncode != 0


def test_the_audit_suite_checks_the_web_page(web, tmp_path):
    from tests.e2e.test_audit import run_audit

    result, controls = run_audit(web.host, tmp_path)
    assert result.returncode == 0, result.stdout[-4000:]
    assert "PORTAL-01" in controls and not controls["PORTAL-01"]["failed"]


def test_the_audit_suite_sees_the_token_index_and_the_running_nginx(web, policy, tmp_path):
    """Drift only root can see (the link token index) and drift only the configuration nginx
    loads shows (an edited copy enabled in place of the deployed site file) fail their controls."""
    from tests.e2e.test_audit import run_audit

    tokens, site, enabled = paths.LINK_TOKENS_DIR, paths.NGINX_SITE, paths.NGINX_ENABLED
    link = issue_link(web)
    record = web.host.ssh(f"cat {paths.LINK_RECORDS_DIR}/{link.account}.json").stdout
    token = json.loads(record)["token_sha256"]
    rate = policy.portal.login_requests_per_minute
    web.host.ssh(
        f"""set -e
        chmod 0644 {tokens}/{token}
        chmod 2750 {tokens}
        sed -e 's#rate={rate}r/m#rate={rate * 20}r/m#' \\
            -e 's#^    location / {{$#    location / {{\\n        client_max_body_size 10m;#' {site} > /tmp/drifted-site
        rm {enabled} && install -m 0644 /tmp/drifted-site {enabled} && systemctl reload nginx
        """
    )
    try:
        result, controls = run_audit(web.host, tmp_path, "test_tools.py", "test_portal.py")
    finally:
        web.host.ssh(
            f"chmod 0640 {tokens}/{token} && chmod 2710 {tokens} && ln -sfn {site} {enabled} && systemctl reload nginx"
        )
    failed = {control for control, outcome in controls.items() if outcome["failed"]}
    assert failed == {"TOOLS-01", "PORTAL-04"}, result.stdout[-4000:]
    assert "TOOLS-01: expected" in controls["TOOLS-01"]["message"]
    modes = json.loads(controls["TOOLS-01"]["actual"])
    assert modes[tokens] == "root:exchange-portal 2750"
    assert modes[f"{tokens}/{token[:12]}..."] == "root:exchange-portal 0644 file"
    assert "PORTAL-04: expected" in controls["PORTAL-04"]["message"]
    assert json.loads(controls["PORTAL-04"]["actual"]) == {
        "client_max_body_size_mb /files/upload": 10,
        "login_posts_per_minute": {"/login": rate * 20, "/l/<token>": rate * 20, "/password": rate * 20},
        # Not drifted, but part of what the control reports.
        "connections_per_address": dict.fromkeys(
            ["/files/download/<name>", "/files/upload", "/login", "/l/<token>", "/password"],
            policy.portal.connections_per_address,
        ),
    }


@pytest.fixture(scope="module")
def policy():
    return load_policy(REPO / "policies.yaml").policy


# -- the view page: a study before download --------------------------------------------------


def put_ct(web, account: str, tmp_path: Path, count: int, patient_id: str, label: str = "CT view") -> str:
    """Staff pack a synthetic CT series of `count` slices into the account; returns the package's name."""
    ct_study(tmp_path / "ct", count, patient_id=patient_id)
    tar = subprocess.run(["tar", "-C", str(tmp_path / "ct"), "-c", "."], check=True, capture_output=True).stdout
    subprocess.run(
        [*web.host.ssh_args(), "rm -rf /tmp/ct && mkdir /tmp/ct && tar -C /tmp/ct -x"], input=tar, check=True
    )
    out = web.host.ssh(f"exchange package --to {account} /tmp/ct --label '{label}'").stdout
    return re.search(r"/download/(\S+\.zip)", out)[1]


def view_events(web, account: str) -> list[dict]:
    return [e for e in audit_events(web, "portal-view") if e["account"] == account]


def stack_seen(page: Page) -> dict:
    return page.evaluate("""() => {
      const stack = document.querySelector("div.stack");
      const image = document.querySelector(".stack-image");
      return {on: stack.classList.contains("stack-on"), current: stack.dataset.current,
              figures: stack.querySelectorAll("figure").length, src: image.getAttribute("src"),
              loaded: image.complete && image.naturalWidth > 0, width: image.naturalWidth,
              scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth};
    }""")


def test_a_link_recipient_views_the_study_on_a_phone_before_download(web, phone, tmp_path):
    link = issue_link(web)
    package = put_ct(web, link.account, tmp_path, 24, "VIEW0001")
    page = phone("en-GB")
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(link.url)
    page.fill("#password", link.password)
    page.click("button[type=submit]")
    page.wait_for_url("**/files")
    page.click(f"a[href^='/files/view/download/']:has-text('{package}')")
    page.wait_for_url("**/files/view/download/**")
    assert "Not for diagnosis" in page.inner_text("main")
    thumbs = page.evaluate("() => [...document.querySelectorAll('ul.series img')].map(i => i.naturalWidth)")
    assert len(thumbs) == 1 and thumbs[0] > 0, thumbs
    # The picture seen first comes in the page itself, and the page's CSP lets it show.
    assert page.get_attribute("ul.series img", "src").startswith("data:image/jpeg;base64,")
    assert "VIEW0001" in page.inner_text("main")
    shot(page, "view-01-link-overview")
    page.click("ul.series a")
    page.wait_for_url("**?series=1")
    page.wait_for_function("() => document.querySelector('.stack-image')?.naturalWidth > 0")
    seen = stack_seen(page)
    assert seen["on"] and seen["figures"] == 24 and seen["current"] == "1" and seen["loaded"], seen
    assert seen["src"].startswith("data:image/jpeg;base64,"), seen["src"][:40]
    assert seen["scrollWidth"] <= seen["innerWidth"] == 390, seen
    page.focus(".stack-view")
    for _ in range(3):
        page.keyboard.press("ArrowDown")
    page.wait_for_function("() => document.querySelector('.stack-image')?.naturalWidth > 0")
    seen = stack_seen(page)
    assert seen["current"] == "4" and "/files/picture/download/1/4/" in seen["src"] and seen["loaded"], seen
    shot(page, "view-02-link-stack")
    assert not errors, errors
    # Every picture is the one stored in the zip, as the recipient downloads it.
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    with client(web) as http:
        http.cookies.update(cookies)
        zipped = http.get(f"/files/download/{package}").content
        picture = http.get(f"/files/picture/download/1/4/{package}")
    assert picture.status_code == 200 and picture.headers["content-type"] == "image/jpeg"
    with zipfile.ZipFile(io.BytesIO(zipped)) as archive:
        stacks = json.loads(archive.read("IHE_PDI/STACKS.JSON"))
        assert picture.content == archive.read(stacks["series"][0]["pictures"][3]["name"])
    # Each page is on the record like a download: the package, the series, how many pictures.
    pages = [e for e in view_events(web, link.account) if e["by"] == "page"]
    assert [(e["file"], e["series"], e["pictures"]) for e in pages] == [(package, None, 1), (package, 1, 24)]
    assert all(e["ip"] == "127.0.0.1" for e in pages)


def test_a_partner_views_its_own_packages_only_and_crafted_urls_open_nothing(web, page, tmp_path):
    alice, bob = web.logins["alice-clinic"], web.logins["bob-hospital"]
    own = put_ct(web, "alice-clinic", tmp_path / "a", 3, "ALICE001")
    # Its own label: two packages made in the same second would share a name, and Alice's own
    # of that name is hers to view.
    bobs = put_ct(web, "bob-hospital", tmp_path / "b", 3, "BOBONLY1", label="CT bob")
    web.host.ssh(
        "cd /srv/exchange/partners/alice-clinic/download && echo 'no zip' > notes.zip && "
        f"cp /srv/exchange/partners/bob-hospital/download/{bobs} /srv/exchange/partners/bob-hospital/upload/b.zip"
    )
    page.goto(web.host.portal_url + "/login")
    page.fill("#username", alice.name)
    page.fill("#password", alice.password)
    page.click("button[type=submit]")
    page.wait_for_url("**/files")
    page.goto(web.host.portal_url + f"/files/view/download/{own}?series=1")
    page.wait_for_function("() => document.querySelector('.stack-image')?.naturalWidth > 0")
    assert stack_seen(page)["figures"] == 3 and "ALICE001" in page.inner_text("main")
    shot(page, "view-03-partner-stack")
    page.goto(web.host.portal_url + "/files/view/download/notes.zip")
    assert "This file cannot be shown here: it is not a zip file" in page.inner_text("main")
    assert page.locator("a[download]").count() == 1  # it can still be downloaded

    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    with client(web) as http:
        http.cookies.update(cookies)
        before = len(view_events(web, "alice-clinic"))
        for crafted in [
            f"/files/view/download/{bobs}",
            f"/files/view/download/..%2F..%2Fbob-hospital%2Fdownload%2F{bobs}",
            f"/files/view/download/../../bob-hospital/download/{bobs}",
            "/files/view/download/..%2Fupload%2Fb.zip",
            "/files/view/home/b.zip",  # no folder of the account
            f"/files/view/upload/..%2F..%2Fbob-hospital%2Fdownload%2F{bobs}",
            "/files/view/upload/..%2F..%2Fbob-hospital%2Fupload%2Fb.zip",
            f"/files/view/download/%2Fsrv%2Fexchange%2Fpartners%2Fbob-hospital%2Fdownload%2F{bobs}",
            f"/files/picture/download/1/1/{bobs}",
            f"/files/picture/download/1/1/..%2F..%2Fbob-hospital%2Fdownload%2F{bobs}",
            "/files/picture/download/1/1/..%2Fupload%2Fb.zip",
            f"/files/picture/download/1/4/{own}",  # beyond the series' three pictures
            f"/files/picture/download/2/1/{own}",  # a series the package does not have
            f"/files/picture/download/0/1/{own}",
            f"/files/view/download/{own}?series=7",
            f"/files/view/download/{own}?series=-1",
        ]:
            response = http.get(crafted)
            assert response.status_code == 404, (crafted, response.status_code)
            assert "BOBONLY1" not in response.text and not response.content.startswith(b"\xff\xd8"), crafted
        assert len(view_events(web, "alice-clinic")) == before  # nothing was viewed
        refused = [e for e in audit_events(web, "portal-view-refused") if e["account"] == "alice-clinic"]
        assert len(refused) >= 8
    # Bob's own session does see his: the refusals above were about Alice.
    with client(web) as http:
        assert portal_form(http, "/login", username=bob.name, password=bob.password).status_code == 200
        assert "BOBONLY1" in http.get(f"/files/view/download/{bobs}").text
        assert http.get(f"/files/picture/download/1/1/{bobs}").content.startswith(b"\xff\xd8\xff")
    # Without a session nothing opens.
    with client(web) as http:
        assert http.get(f"/files/picture/download/1/1/{own}").status_code == 401
        assert http.get(f"/files/view/download/{own}").status_code == 401


def test_a_partner_views_a_folder_of_dicom_files_it_uploaded_over_sftp(web, browser, tmp_path):
    """A folder uploaded with an SFTP client shows on the web page with "View": its series, each
    picture rendered from its file on the server; a file whose pixel data is damaged fails its
    own picture only."""
    alice = web.logins["alice-clinic"]
    local = tmp_path / "CT from abroad"
    ct_study(local, 6, patient_id="FOLDER01")
    (damaged,) = ct_study(tmp_path / "broken", 1, patient_id="FOLDER01", series=1)
    data = damaged.read_bytes()
    (local / "sub").mkdir()
    (local / "sub" / "BROKEN").write_bytes(data[: len(data) - 1000])  # the pixel data cut short
    (local / "letter.pdf").write_bytes(b"%PDF-1.4 not an image")
    session = paramiko_sftp(web.host, alice.name, password=alice.password)
    try:
        session.mkdir("/upload/CT from abroad")
        session.mkdir("/upload/CT from abroad/sub")
        for file in sorted(p for p in local.rglob("*") if p.is_file()):
            session.put(str(file), f"/upload/CT from abroad/{file.relative_to(local).as_posix()}")
    finally:
        session.close()
    context = browser.new_context(ignore_https_errors=True, locale="en-GB")
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        page.goto(web.host.portal_url + "/login")
        page.fill("#username", alice.name)
        page.fill("#password", alice.password)
        page.click("button[type=submit]")
        page.wait_for_url("**/files")
        uploads = page.locator("section[aria-labelledby=uploads]")
        assert "CT from abroad" in uploads.inner_text() and "folder" in uploads.inner_text()
        uploads.locator("a:has-text('View')").click()
        page.wait_for_url("**/files/view/upload/**")
        page.wait_for_function("() => [...document.querySelectorAll('ul.series img')].every(i => i.complete)")
        thumbs = page.evaluate("() => [...document.querySelectorAll('ul.series img')].map(i => i.naturalWidth)")
        assert len(thumbs) == 2 and thumbs[0] > 0, thumbs  # the study, and the damaged file's own series
        assert "Not for diagnosis" in page.inner_text("main") and page.locator("a[download]").count() == 0
        shot(page, "view-04-partner-folder")
        page.click("ul.series a >> nth=0")
        page.wait_for_url("**?series=1")
        page.wait_for_function("() => document.querySelector('.stack-image')?.naturalWidth > 0")
        assert stack_seen(page)["figures"] == 6
        assert not errors, errors
        cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    finally:
        context.close()
    with client(web) as http:
        http.cookies.update(cookies)
        broken = http.get("/files/picture/upload/2/1/CT%20from%20abroad")
        assert broken.status_code == 422 and "cannot be decoded" in broken.text
        assert http.get("/files/picture/upload/1/6/CT%20from%20abroad").content.startswith(b"\xff\xd8\xff")
        assert http.get("/files/files").status_code == 404  # the portal still answers: no worker took it down
    events = [e for e in view_events(web, "alice-clinic") if e.get("folder") == "upload"]
    assert {(e["file"], e["series"]) for e in events} >= {("CT from abroad", None), ("CT from abroad", 1)}
