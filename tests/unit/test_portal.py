"""The web page without a server: its pieces, and the app's answers that need no SSH login
(the logins themselves are tested against a real host in tests/e2e/test_portal.py)."""

from __future__ import annotations

import asyncio
import datetime
import gc
import json
import random
import re
import warnings
import weakref

import httpx
import pytest
from typer.testing import CliRunner

from exchange import templates
from exchange.cli import app as cli
from exchange.links import LinkStore, token_hash
from exchange.policy import Policy, PolicyError, load_policy, parse_policy
from exchange.portal import files, multipart, sessions
from exchange.portal.app import create_app
from exchange.portal.config import PortalConfig, load_portal_config, portal_yaml
from exchange.portal.headers import BRAND_CACHE, BRAND_CSP, PAGE_CSP
from exchange.portal.login import FAILURE_FLOOR
from exchange.portal.pages import load_text
from exchange.site import parse_site
from roles import REPO
from roles.settings import HostSettingsError, host_settings
from tests.sites import ACCENT, logo_png, outbox_site, viewer_site

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

TEMPLATES = templates.PORTAL
POLICY = load_policy(REPO / "policies.yaml").policy


@pytest.fixture(autouse=True)
def _messages(monkeypatch):
    monkeypatch.setenv("EXCHANGE_MESSAGES", str(templates.MESSAGES))


def make_config(tmp_path, port: int = 9, site: dict | None = None, logo: str | None = None) -> PortalConfig:
    key = tmp_path / "host_ed25519.pub"
    key.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFQHE7N7uyXYc+m8Nn7U8LKl2r4Cwf9DfnUgHkeyBpJu test\n")
    (tmp_path / "state" / "link-tokens").mkdir(parents=True, exist_ok=True)
    return PortalConfig(
        site=parse_site(site or outbox_site(), "test").public(),
        sshd_port=port,  # nothing listens there: a login that gets as far as SSH meets "unavailable"
        host_key_files=[str(key)],
        templates_dir=str(TEMPLATES),
        state_dir=str(tmp_path / "state"),
        logo=logo,
    )


def client_for(tmp_path, policy: Policy = POLICY, site: dict | None = None, logo: str | None = None) -> TestClient:
    return TestClient(create_app(make_config(tmp_path, site=site, logo=logo), policy), base_url="https://portal.test")


@pytest.fixture
def no_floor(monkeypatch):
    monkeypatch.setattr("exchange.portal.login.FAILURE_FLOOR", 0.0)


def csrf_post(web: TestClient, path: str, **fields) -> httpx.Response:
    web.get(path)
    return web.post(path, data={"csrf": web.cookies["exchange_csrf"], **fields})


# -- names and ranges ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["study.zip", "CT thorax 2026-11-28.zip", "résumé.pdf", "a" * 255])
def test_plain_names_pass(name):
    assert files.check_name(name) == name


@pytest.mark.parametrize(
    "name", ["", ".hidden", "..", "../x", "a/b", "a\\b", "a\x00b", "tab\there", " lead", "trail ", "é" * 128]
)
def test_unsafe_names_are_refused(name):
    with pytest.raises(files.BadName):
        files.check_name(name)


def test_upload_names_lose_a_browser_added_directory():
    assert files.upload_name("C:\\Users\\me\\scan.zip") == "scan.zip"
    assert files.upload_name("/home/me/scan.zip") == "scan.zip"
    with pytest.raises(files.BadName):
        files.upload_name("C:\\Users\\me\\.secret")


@pytest.mark.parametrize(
    "header, size, expected",
    [
        (None, 100, None),
        ("bytes=0-9", 100, (0, 9)),
        ("bytes=90-", 100, (90, 99)),
        ("bytes=-10", 100, (90, 99)),
        ("bytes=50-500", 100, (50, 99)),
        ("bytes=0-1,5-6", 100, None),  # several ranges: answered whole
        ("items=0-1", 100, None),
        ("bytes=0-" + "9" * 4400, 100, None),  # beyond any file: answered whole, never parsed
    ],
)
def test_byte_ranges(header, size, expected):
    assert files.byte_range(header, size) == expected


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=9-3"])
def test_unsatisfiable_ranges(header):
    with pytest.raises(files.RangeNotSatisfiable):
        files.byte_range(header, 100)


# -- the multipart stream --------------------------------------------------------------------


def test_a_multipart_body_in_arbitrary_pieces_gives_back_the_exact_file():
    payload = random.Random(7).randbytes(300_000)
    request = httpx.Request(
        "POST", "https://x/", data={"csrf": "token-1"}, files={"file": ("scan one.zip", payload, "application/zip")}
    )
    body = request.read()
    cuts = sorted(random.Random(8).sample(range(1, len(body)), 40))
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]

    async def stream():
        for piece in pieces:
            yield piece

    async def collect():
        got, current = {}, None
        async for event in multipart.parts(request.headers["content-type"], stream()):
            if isinstance(event, multipart.PartStart):
                current = (event.name, event.filename)
                got[current] = b""
            elif isinstance(event, multipart.PartData):
                got[current] += event.data
        return got

    got = asyncio.run(collect())
    assert got == {("csrf", None): b"token-1", ("file", "scan one.zip"): payload}


def test_a_body_that_is_not_multipart_is_refused():
    async def stream():
        yield b"x"

    async def run():
        async for _ in multipart.parts("application/json", stream()):
            pass

    with pytest.raises(multipart.MalformedBody):
        asyncio.run(run())


# -- sessions and the login limit ------------------------------------------------------------


class _Connection:
    def __init__(self) -> None:
        self.closed = False

    def is_closed(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


class _Sftp:
    def __init__(self) -> None:
        self.connection = _Connection()

    def close(self) -> None:
        self.connection.close()


def test_sessions_end_after_the_idle_time_and_close_their_sftp(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(sessions.time, "monotonic", lambda: clock[0])
    store = sessions.SessionStore(idle_seconds=60, max_sessions=2)
    first = store.open("link-aaaaaaaa", "link", "192.0.2.1", _Sftp())
    clock[0] += 59
    assert store.get(first.id) is first  # touched: idle counts again from here
    clock[0] += 59
    assert store.get(first.id) is first
    clock[0] += 61
    assert store.get(first.id) is None and first.ssh.connection.closed


def test_a_transfer_in_progress_keeps_its_session_and_a_links_end_ends_it(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(sessions.time, "monotonic", lambda: clock[0])
    store = sessions.SessionStore(idle_seconds=60, max_sessions=3)
    partner = store.open("cardiology", "partner", "192.0.2.1", _Sftp())
    with partner.transfer():  # a long upload or download
        clock[0] += 3600
        assert store.close_idle() == [] and not partner.ssh.connection.closed
    clock[0] += 59
    assert store.get(partner.id) is partner  # idle counts from the transfer's end
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=30)
    link = store.open("link-aaaaaaaa", "link", "192.0.2.2", _Sftp(), soon)
    assert store.get(link.id) is link
    link.expires = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=1)
    with link.transfer():  # the link's end is the end, transfer or not
        assert store.close_idle() == [link] and link.ssh.connection.closed


class _RefusingSftp:
    """An SFTP session whose server refuses writes after `good` of them (disk full), or every
    rename (a name too long): what a test host cannot easily be made to do."""

    def __init__(self, good: int = 1_000, rename_error: type | None = None) -> None:
        self.good, self.rename_error = good, rename_error
        self.files: dict[str, int] = {}

    async def open(self, path, mode):
        self.files[path] = 0
        sftp = self

        class Handle:
            async def write(self, data, offset):
                await asyncio.sleep(0)
                if sftp.good <= 0:
                    raise files.asyncssh.SFTPFailure("No space left on device")
                sftp.good -= 1
                sftp.files[path] += len(data)

            async def close(self):
                pass

        return Handle()

    async def rename(self, old, new):
        raise self.rename_error("refused")

    async def exists(self, path):
        return path in self.files

    async def remove(self, path):
        del self.files[path]


def test_an_upload_whose_writes_are_refused_ends_and_leaves_nothing():
    async def run(sftp):
        upload = await files.Upload(sftp, "/upload", "scan.zip", 1 << 40).start()
        try:
            for _ in range(64):  # far more than the queue and the writes in flight hold
                await upload.write(b"x" * files.CHUNK)
            await upload.finish()
        finally:
            await upload.discard()

    sftp = _RefusingSftp(good=2)
    with pytest.raises(files.asyncssh.SFTPFailure, match="No space left"):
        asyncio.run(asyncio.wait_for(run(sftp), timeout=10))  # an answer, not a hang
    assert sftp.files == {}


def test_an_upload_that_cannot_take_its_name_leaves_nothing():
    async def run(sftp):
        upload = await files.Upload(sftp, "/upload", "a" * 250 + ".zip", 1 << 40).start()
        try:
            await upload.write(b"x" * 1000)
            await upload.finish()
        finally:
            await upload.discard()

    sftp = _RefusingSftp(rename_error=files.asyncssh.SFTPBadMessage)  # OpenSSH's answer to ENAMETOOLONG
    with pytest.raises(files.asyncssh.SFTPBadMessage):
        asyncio.run(run(sftp))
    assert sftp.files == {}


def test_sessions_are_capped_and_a_dropped_connection_ends_its_session():
    store = sessions.SessionStore(idle_seconds=60, max_sessions=1)
    first = store.open("a", "partner", "192.0.2.1", _Sftp())
    refused = _Sftp()
    with pytest.raises(sessions.TooManySessions):
        store.open("b", "partner", "192.0.2.2", refused)
    assert refused.connection.closed  # never left open
    first.ssh.connection.closed = True  # e.g. the account was removed
    assert store.get(first.id) is None and len(store) == 0


def test_one_account_cannot_take_the_pool_and_its_oldest_quiet_session_makes_room(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(sessions.time, "monotonic", lambda: clock[0])
    store = sessions.SessionStore(idle_seconds=600, max_sessions=4, per_account=2)
    first = store.open("cardiology", "partner", "192.0.2.1", _Sftp())
    clock[0] += 1
    second = store.open("cardiology", "partner", "192.0.2.1", _Sftp())
    clock[0] += 1
    third = store.open("cardiology", "partner", "192.0.2.1", _Sftp())  # a third login: the first goes
    assert first.ssh.connection.closed and store.get(first.id) is None
    assert store.get(second.id) is second and store.get(third.id) is third
    # Others still get in: the account holds two of the four places, never more.
    others = [store.open(name, "partner", "192.0.2.9", _Sftp()) for name in ("neurology", "oncology")]
    assert all(store.get(session.id) is session for session in others) and len(store) == 4
    with second.transfer(), third.transfer():  # both transferring: neither is cut off for a new login
        refused = _Sftp()
        with pytest.raises(sessions.TooManySessions):
            store.open("cardiology", "partner", "192.0.2.1", refused)
        assert refused.connection.closed and not second.ssh.connection.closed


def test_one_account_runs_a_bounded_number_of_transfers_over_all_its_sessions():
    store = sessions.SessionStore(idle_seconds=600, max_sessions=10, per_account=5, transfers=3)
    first, second = (store.open("cardiology", "partner", "192.0.2.1", _Sftp()) for _ in range(2))
    other = store.open("neurology", "partner", "192.0.2.2", _Sftp())
    slots = [store.transfer_slot(first), store.transfer_slot(second), store.transfer_slot(first)]
    with pytest.raises(sessions.TooManyTransfers):  # a fourth, from either session
        store.transfer_slot(second)
    with store.transfer_slot(other):  # another account is not held back
        pass
    slots[0].release()
    slots[0].release()  # once only
    assert first.transfers == 1 and second.transfers == 1
    store.transfer_slot(second).release()


def test_a_download_whose_body_never_ran_gives_its_place_back():
    store = sessions.SessionStore(idle_seconds=600, max_sessions=10, transfers=1)
    session = store.open("cardiology", "partner", "192.0.2.1", _Sftp())
    slot = store.transfer_slot(session)

    async def body():
        try:
            yield b"x"
        finally:
            slot.release()

    stream = body()
    weakref.finalize(stream, slot.release)  # as the portal's download does
    del stream  # the client went away before the response began
    gc.collect()
    assert session.transfers == 0 and store.transfer_slot(session)


def test_the_login_limit_counts_per_address_within_the_window(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(sessions.time, "monotonic", lambda: clock[0])
    limit = sessions.LoginLimit(limit=3, window=100)
    for _ in range(3):
        assert not limit.blocked("192.0.2.1")
        limit.failed("192.0.2.1")
    assert limit.blocked("192.0.2.1") and not limit.blocked("192.0.2.2")
    clock[0] += 101
    assert not limit.blocked("192.0.2.1")


# -- the token index -------------------------------------------------------------------------


def test_tokens_open_only_while_valid(tmp_path):
    tokens = LinkStore(tmp_path)
    (tmp_path / "link-tokens").mkdir()
    now = datetime.datetime(2026, 11, 28, tzinfo=datetime.UTC)
    good, old = "A" * 43, "B" * 43
    for token, days in [(good, 3), (old, -1)]:
        expires = (now + datetime.timedelta(days=days)).isoformat()
        (tmp_path / "link-tokens" / token_hash(token)).write_text(json.dumps({"account": "link-a", "expires": expires}))
    assert tokens.by_token(good, now)[0] == "link-a"
    assert tokens.by_token(old, now) is None
    assert tokens.by_token("C" * 43, now) is None
    assert tokens.by_token("../../etc/passwd", now) is None  # not even looked up


# -- the app's answers -----------------------------------------------------------------------


def test_every_page_has_the_security_headers_and_secure_cookies(tmp_path):
    with client_for(tmp_path) as web:
        cookies = web.get("/login?lang=nl").headers.get_list("set-cookie")  # the first visit sets both
        assert sorted(c.split("=")[0] for c in cookies) == ["exchange_csrf", "exchange_lang"]
        for cookie in cookies:
            assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
        for path in ["/login", "/help", "/l/" + "A" * 43, "/files"]:
            response = web.get(path)
            assert response.headers["content-security-policy"].startswith("default-src 'none'")
            assert response.headers["x-frame-options"] == "DENY"
            assert response.headers["referrer-policy"] == "no-referrer"
            assert response.headers["cache-control"] == "no-store"
        assert web.get("/static/portal.css").headers["cache-control"].startswith("public")


def test_forms_need_the_csrf_token(tmp_path):
    with client_for(tmp_path) as web:
        web.get("/login")
        assert web.post("/login", data={"username": "x", "password": "y"}).status_code == 403
        assert web.post("/login", data={"csrf": "other", "username": "x", "password": "y"}).status_code == 403
        assert web.post("/l/" + "A" * 43, data={"password": "y"}).status_code == 403
        # Only small url-encoded forms: a file posted to a login form is never read into memory.
        token = web.cookies["exchange_csrf"]
        files_post = web.post("/login", data={"csrf": token}, files={"f": ("big", b"x" * 100_000)})
        assert files_post.status_code == 403
        assert web.post("/login", data={"csrf": token, "username": "x" * 20_000, "password": "y"}).status_code == 403


def test_unknown_tokens_and_unknown_partners_get_the_neutral_answer_after_the_floor(tmp_path):
    with client_for(tmp_path) as web:
        started = datetime.datetime.now()
        link = csrf_post(web, "/l/" + "A" * 43, password="whatever")
        elapsed = (datetime.datetime.now() - started).total_seconds()
        partner = csrf_post(web, "/login", username="not-a-partner", password="whatever")
    assert link.status_code == partner.status_code == 401
    assert elapsed >= FAILURE_FLOOR
    errors = {re.search(r'role="alert">(.*?)</p>', r.text)[1] for r in (link, partner)}
    assert len(errors) == 1


def test_a_refused_password_change_shows_its_form_again(tmp_path, no_floor):
    with client_for(tmp_path) as web:
        fields = {
            "username": "not-a-partner",
            "password": "x",
            "new_password": "N" * 16,
            "new_password_again": "N" * 16,
        }
        web.get("/login")
        response = web.post("/password", data={"csrf": web.cookies["exchange_csrf"], **fields})
    assert response.status_code == 401
    assert 'name="username" value="not-a-partner"' in response.text and 'name="new_password"' in response.text


def test_too_many_failures_from_one_address_must_wait(tmp_path, no_floor):
    strict = POLICY.model_copy(update={"portal": POLICY.portal.model_copy(update={"login_failures_per_ip": 2})})
    with client_for(tmp_path, strict) as web:
        codes = [csrf_post(web, "/l/" + "A" * 43, password="x").status_code for _ in range(3)]
    assert codes == [401, 401, 429]


def test_a_known_token_shows_its_expiry_and_a_down_sshd_is_not_a_failed_login(tmp_path, no_floor):
    config = make_config(tmp_path)
    token = "T" * 43
    expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=2)
    (tmp_path / "state" / "link-tokens" / token_hash(token)).write_text(
        json.dumps({"account": "link-abcdefgh", "expires": expires.isoformat()})
    )
    with TestClient(create_app(config, POLICY), base_url="https://portal.test") as web:
        page = web.get(f"/l/{token}")
        assert "This link works until" in page.text or "Deze link werkt tot" in page.text
        response = csrf_post(web, f"/l/{token}", password="x")
    assert response.status_code == 503  # "not reachable right now", never "wrong password"


def test_languages_follow_the_choice_then_the_browser(tmp_path):
    with client_for(tmp_path) as web:
        assert 'lang="en"' in web.get("/help", headers={"accept-language": "en-GB,en;q=0.9"}).text
        assert 'lang="nl"' in web.get("/help", headers={"accept-language": "nl-NL"}).text
        assert 'lang="nl"' in web.get("/help?lang=nl", headers={"accept-language": "en"}).text
        assert 'lang="nl"' in web.get("/help", headers={"accept-language": "en"}).text  # the cookie remembers


def test_pages_without_a_session_say_so(tmp_path):
    with client_for(tmp_path) as web:
        assert web.get("/files").status_code == 401
        assert web.get("/files/download/x.zip").status_code == 401
        assert web.post("/files/upload", files={"file": ("a", b"x")}).status_code == 401


# -- texts, configuration and the check command --------------------------------------------


def test_every_text_a_template_uses_exists_in_every_language():
    text = load_text(TEMPLATES / "text.yaml")
    used = set()
    for template in TEMPLATES.glob("*.j2"):
        used |= set(re.findall(r't\(["\'](\w+)["\']\)', template.read_text()))
    routes = "".join(path.read_text() for path in sorted((REPO / "scripts/exchange/portal").glob("*.py")))
    errors = set(re.findall(r'error="(\w+)"|back\("(\w+)"\)', routes))
    used |= {f"error_{name}" for pair in errors for name in pair if name}
    assert used - set(text) == set()


def test_text_without_every_language_is_refused(tmp_path):
    (tmp_path / "text.yaml").write_text("open:\n  nl: Openen\n")
    with pytest.raises(ValueError, match="open"):
        load_text(tmp_path / "text.yaml")


def test_portal_check_accepts_the_deployed_shape_and_names_a_problem(tmp_path, monkeypatch):
    monkeypatch.setenv("EXCHANGE_POLICY", str(REPO / "policies.yaml"))
    good = tmp_path / "portal.yaml"
    good.write_text(portal_yaml(make_config(tmp_path)))
    assert load_portal_config(good).sshd_port == 9
    result = CliRunner().invoke(cli, ["portal", "check", str(good)])
    assert result.exit_code == 0, result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(good.read_text().replace("sshd_port: 9", "sshd_port: 99999"))
    result = CliRunner().invoke(cli, ["portal", "check", str(bad)])
    assert result.exit_code == 1 and "sshd_port" in result.output


def test_the_portal_user_may_not_be_an_account_group():
    text = (REPO / "policies.yaml").read_text().replace("service_user: exchange-portal", "service_user: exchange-staff")
    with pytest.raises(PolicyError, match="service_user"):
        parse_policy(text, REPO / "policies.yaml")


def test_nginx_listens_on_ipv4_and_ipv6_addresses_and_refuses_other_text():
    from roles.settings import PortalSettings
    from roles.templating import render

    web = PortalSettings(server_name="exchange.hospital.example", listen_addresses=["192.0.2.5", "2001:db8::5"])
    site = render("webserver/nginx-site.conf.j2", portal=web, policy=POLICY, socket="/run/x.sock")
    assert "listen 192.0.2.5:443 ssl;" in site and "listen [2001:db8::5]:443 ssl;" in site
    assert "listen [2001:db8::5]:80;" in site
    with pytest.raises(HostSettingsError, match="portal.listen_addresses.0"):
        host_settings("web", {"portal": {"server_name": "x.example", "listen_addresses": ["exchange01"]}})


def test_a_portal_needs_site_data():
    with pytest.raises(HostSettingsError, match="portal needs site"):
        host_settings("web", {"portal": {"server_name": "exchange.hospital.example"}})


def view_context(why: str | None = None, series: bool = False) -> dict:
    """What exchange.portal.viewing passes the view page: a package's view, one of its series, or why not."""
    from urllib.parse import quote

    from exchange.portal.package_view import PackageView
    from exchange.portal.study_view import TEXTS, Picture, SeriesStack

    texts = dict.fromkeys(TEXTS, "") | {"modality": "CT", "patient_name": "DOE^JANE"}
    stack = SeriesStack(1, texts, 2, 2, (Picture("IHE_PDI/SE0001/IM0001.JPG", 512, 512),), {"x": 1})
    view = None if why else PackageView("a.zip", 1, 1, [stack], {})
    chosen = stack if series and not why else None
    return {"session": None, "name": "a.zip", "quote": quote, "folder": "download", "view": view, "series": chosen,
            "why": why, "package": view is not None, "inline": {}}  # fmt: skip


@pytest.mark.parametrize(
    "template, context",
    [
        ("password.htm.j2", {"username": "bob", "notice": "password_expired"}),
        ("password.htm.j2", {"username": "bob", "error": "password_rejected", "reasons": ["BAD PASSWORD: short"]}),
        ("link.htm.j2", {"expires": None, "error": "login_failed"}),
        ("login.htm.j2", {"error": "too_many"}),
        ("message.htm.j2", {"notice": "logged_out"}),
        ("view.htm.j2", lambda: view_context(why="it is not a zip file")),
        ("view.htm.j2", lambda: view_context(series=False)),
        ("view.htm.j2", lambda: view_context(series=True)),
    ],
)
def test_every_page_renders_with_what_its_callers_pass(tmp_path, template, context):
    context = context() if callable(context) else context
    """The pages behind an SSH login are rendered here with exactly the context the routes (login.py, transfer.py) give them."""
    from starlette.requests import Request

    from exchange.portal.app import Portal

    portal = Portal(make_config(tmp_path), POLICY)
    request = Request({"type": "http", "method": "GET", "path": "/x", "headers": [], "query_string": b""})
    html = portal.page(request, template, **context).body.decode()
    assert "<h1>" in html or "<p class=" in html
    for reason in context.get("reasons", []):
        assert f"<li>{reason}</li>" in html


def test_the_files_page_lists_what_it_is_given(tmp_path):
    from starlette.requests import Request

    from exchange.portal.app import Portal
    from exchange.portal.sessions import WebSession

    portal = Portal(make_config(tmp_path), POLICY)
    request = Request({"type": "http", "method": "GET", "path": "/files", "headers": [], "query_string": b""})
    session = WebSession("id", "link-abcdefgh", "link", "192.0.2.1", _Sftp(), datetime.datetime.now(datetime.UTC))
    listed = [files.Listed("CT thorax <1>.zip", 123_456_789, 1_764_300_000)]
    html = portal.page(
        request, "files.htm.j2", session=session, downloads=listed, uploads=[], uploaded=["a.pdf"], error=None,
        quote=__import__("urllib.parse").parse.quote,
    ).body.decode()  # fmt: skip
    assert "CT thorax &lt;1&gt;.zip" in html and "/files/download/CT%20thorax%20%3C1%3E.zip" in html
    assert "123,5 MB" in html  # Dutch (the default language) writes a decimal comma


# -- what recipients read: the reviewer's findings ------------------------------------------


def page_text(html: str) -> str:
    """The page's <main> as a reader sees it: no tags, entities resolved, one space between words."""
    import html as markup

    main = re.search(r"<main>(.*)</main>", html, re.S)[1].replace("<wbr>", "")  # a place to wrap, no text
    return " ".join(markup.unescape(re.sub(r"<[^>]+>", " ", main)).split())


def help_page(tmp_path, lang: str, policy: Policy = POLICY, site: dict | None = None) -> str:
    with client_for(tmp_path, policy, site) as web:
        return page_text(web.get(f"/help?lang={lang}").text)


def section(text: str, heading: str, next_heading: str) -> str:
    return text.split(heading, 1)[1].split(next_heading, 1)[0]


HEADINGS = {
    "nl": {
        "no_page": "Ik klik op de link in de e-mail, maar er opent geen pagina.",
        "password": "Het wachtwoord uit de sms wordt niet geaccepteerd.",
        "open": "Ik kan de gedownloade bestanden niet openen.",
        "unzip": "Hoe pak ik het zip-bestand uit?",
        "browsers": "Welke browsers worden ondersteund?",
        "time": "Moet ik de bestanden binnen een bepaalde tijd downloaden?",
        "real": "Hoe weet ik zeker dat ik op de echte, beveiligde website ben?",
        "mac": "Kan ik de beelden op een Mac bekijken?",
        "phone": "Kan ik de beelden op een tablet of telefoon bekijken?",
        "upload": "Hoe groot mag een upload zijn en wat gebeurt ermee?",
        "contact": "Contact",
    },
    "en": {
        "no_page": "I click the link in the e-mail, but no page opens.",
        "password": "The password from the text message is not accepted.",
        "open": "I cannot open the downloaded files.",
        "unzip": "How do I unzip the zip file?",
        "browsers": "Which browsers are supported?",
        "time": "Do I have to download the files within a certain time?",
        "real": "How do I know for sure that I am on the real, secure website?",
        "mac": "Can I view the images on a Mac?",
        "phone": "Can I view the images on a tablet or phone?",
        "upload": "How large can an upload be, and what happens to it?",
        "contact": "Contact",
    },
}


@pytest.mark.parametrize("lang", ["nl", "en"])
def test_help_on_an_expired_link_is_where_it_shows_and_follows_the_policy(tmp_path, lang):
    short = POLICY.model_copy(update={"links": POLICY.links.model_copy(update={"validity_days": 3})})
    text, h = help_page(tmp_path, lang, short), HEADINGS[lang]
    no_page = section(text, h["no_page"], h["password"])
    # An expired link does open its page: "no page opens" has nothing to say about expiry.
    assert not re.search(r"verlopen|expired|\d+ (dagen|days)", no_page)
    password = section(text, h["password"], h["open"])
    first = {
        "nl": "Open de link uit de e-mail opnieuw. Staat op de pagina met het wachtwoordveld, vóór u iets typt, niet "
        "de regel ‘Deze link werkt tot …’? (Na een verkeerd wachtwoord laat de pagina die regel weg.) Dan is de link "
        "verlopen of ingetrokken, of niet helemaal gekopieerd, en wordt ook het juiste wachtwoord niet geaccepteerd. "
        "De link werkt tot de datum en tijd die in de e-mail staan, hooguit 3 dagen nadat de e-mail is verstuurd.",
        "en": "Open the link from the e-mail again. Does the page with the password field, before you type anything, "
        "not show the line ‘This link works until …’? (After a wrong password the page leaves it out.) Then the link has "
        "expired or been withdrawn, or was not copied completely, and even the right password is not accepted. The "
        "link works until the date and time in the e-mail, at most 3 days after the e-mail was sent.",
    }[lang]
    assert password.strip().startswith(first)
    # The policy's 3 days wherever the link's life is told; never a fixed "7 days after it was sent".
    assert not re.search(r"7 (dagen|days) (nadat|after) (deze|de e-mail|it|the e-mail)", text)
    assert text.count("hooguit 3 dagen nadat" if lang == "nl" else "at most 3 days after") == 2


@pytest.mark.parametrize("lang", ["nl", "en"])
def test_help_says_when_files_go_for_links_and_for_partners(tmp_path, lang):
    text, h = help_page(tmp_path, lang), HEADINGS[lang]
    time_section = section(text, h["time"], h["real"])
    link, partner = {
        "nl": ("Download de bestanden dan vóór de datum en tijd die in de e-mail staan.", "Bent u partner? Dan "
               "worden bestanden 7 dagen nadat ze zijn klaargezet automatisch verwijderd."),
        "en": ("Then download the files before the date and time in the e-mail.", "Are you a partner? Then files "
               "are deleted automatically 7 days after they were placed."),
    }[lang]  # fmt: skip
    assert link in time_section and partner in time_section
    assert {"nl": "ook bestanden die pas kort daarvoor zijn klaargezet", "en": "even files placed shortly before"}[
        lang
    ] in time_section


@pytest.mark.parametrize("lang", ["nl", "en"])
def test_help_without_a_viewer_names_none_and_whom_to_contact(tmp_path, lang):
    text, h = help_page(tmp_path, lang), HEADINGS[lang]
    opening = section(text, h["open"], h["unzip"])
    assert "run_cdviewer" not in text and "start" not in opening
    assert {
        "nl": "in de uitgepakte map zit geen DICOM-viewerprogramma. Open de DICOM-bestanden met een DICOM-viewer op "
        "uw computer. Lukt het niet om de beelden te bekijken? Neem dan contact op met de afdeling Radiologie.",
        "en": "the unpacked folder holds no DICOM viewer program. Open the DICOM files with a DICOM viewer on your "
        "computer. Cannot view the images? Then please contact the Department of Radiology.",
    }[lang] in opening
    with_viewer = help_page(tmp_path, lang, site=viewer_site())
    assert {"nl": "start run_cdviewer.exe in de uitgepakte map", "en": "start run_cdviewer.exe in the unpacked folder"}[
        lang
    ] in with_viewer


@pytest.mark.parametrize("lang", ["nl", "en"])
def test_help_views_on_any_device_the_checksum_is_optional_and_the_real_site(tmp_path, lang):
    site = outbox_site() | {"portal_url": "https://exchange.test.example:8443", "sftp_port": 2222}
    text, h = help_page(tmp_path, lang, site=site), HEADINGS[lang]
    browsers = section(text, h["browsers"], h["time"])
    assert {
        "nl": "Alles werkt net zo goed op een computer, tablet of telefoon: inloggen, downloaden en de beelden bekijken "
        "(INDEX.HTM in de uitgepakte map opent in elk van deze browsers).",
        "en": "Everything works on a computer, tablet or phone alike: logging in, downloading and viewing the images "
        "(INDEX.HTM in the unpacked folder opens in any of these browsers).",
    }[lang] in browsers
    # Nobody is sent to another device to see the images.
    for gone in ("lukt dat niet", "not possible on a tablet", "heeft u een Windows-computer", "you need a Windows"):
        assert gone not in text
    opening = section(text, h["open"], h["unzip"])
    assert {
        "nl": "Open het bestand INDEX.HTM in de uitgepakte map. Dan ziet u de beelden in uw browser, op elke computer, "
        "tablet of telefoon, zonder iets te installeren.",
        "en": "Open the file INDEX.HTM in the unpacked folder. It shows the images in your browser, on any computer, "
        "tablet or phone, with nothing to install.",
    }[lang] in opening
    unzip = section(text, h["unzip"], h["browsers"])
    assert {"nl": "iPhone of iPad", "en": "iPhone or iPad"}[lang] in unzip and "Android" in unzip
    phone = section(text, h["phone"], h["upload"])
    assert {
        "nl": "Ja. Download het zip-bestand, pak het uit in de app Bestanden",
        "en": "Yes. Download the zip file, unpack it in the Files app",
    }[lang] in phone
    assert {
        "nl": "Naast het zip-bestand staat een bestand dat eindigt op .sha256. Dat hoeft u niet te downloaden.",
        "en": "Next to the zip file there is a file ending in .sha256. You need not download it.",
    }[lang] in opening
    assert {"nl": "Er staan geen beelden in.", "en": "It holds no images."}[lang] in opening
    real = section(text, h["real"], h["mac"])
    assert "https://exchange.test.example:8443/" in real
    assert {"nl": "geen waarschuwing, zoals ‘Niet beveiligd’", "en": "no warning, such as ‘Not secure’"}[lang] in real
    assert {
        "nl": "Wij vragen u nooit om uw wachtwoord, niet per e-mail en niet per telefoon.",
        "en": "We never ask you for your password, by e-mail or by phone.",
    }[lang] in real
    for gone in ("slotje", "padlock", "alleen per sms", "only by text message"):
        assert gone not in text
    assert {"nl": "poort 2222", "en": "port 2222"}[lang] in text


@pytest.mark.parametrize("lang", ["nl", "en"])
def test_help_contact_gives_the_urgent_number(tmp_path, lang):
    text, h = help_page(tmp_path, lang), HEADINGS[lang]
    contact = text.rsplit(h["contact"], 1)[1]
    assert {
        "nl": "Alleen in spoedeisende gevallen kunt u buiten kantooruren de dienstdoende laborant Radiologie bereiken "
        "via de telefooncentrale: 012-345 0000.",
        "en": "Only in urgent cases outside office hours can you reach the radiographer on duty through the hospital "
        "switchboard: 012-345 0000.",
    }[lang] in contact


def test_dutch_pages_read_as_a_dutch_hospital_writes(tmp_path):
    text = help_page(tmp_path, "nl")
    assert "wisselt de afdeling Radiologie van het Testziekenhuis" in text
    assert "krijgt de afdeling Radiologie automatisch bericht" in text
    assert "SMS" not in text and "sms" in text
    dutch = load_text(TEMPLATES / "text.yaml")
    assert not [key for key, value in dutch.items() if "SMS" in value["nl"]]
    assert dutch["error_bad_name"]["nl"].startswith("Deze bestandsnaam is niet toegestaan")


def rendered_files_page(
    tmp_path, lang: str = "en", session=None, downloads: list | None = None, uploads: list | None = None,
    uploaded: list[str] | None = None, policy: Policy = POLICY, site: dict | None = None,
) -> str:  # fmt: skip
    """The files page as the folders route renders it (its listing comes through SSH in the app)."""
    from starlette.requests import Request

    from exchange.portal.app import Portal
    from exchange.portal.sessions import WebSession

    portal = Portal(make_config(tmp_path, site=site), policy)
    request = Request(
        {"type": "http", "method": "GET", "path": "/files", "headers": [], "query_string": f"lang={lang}".encode()}
    )
    listed = [files.Listed("CT.zip", 123_456_789, 1_764_936_000)]  # 2025-12-05 12:00 UTC
    return portal.page(
        request, "files.htm.j2", session=session or WebSession("id", "cardiology", "partner", "192.0.2.1", _Sftp()),
        downloads=listed if downloads is None else downloads, uploads=uploads or [], uploaded=uploaded or [],
        error=None, quote=__import__("urllib.parse").parse.quote,
    ).body.decode()  # fmt: skip


def files_page(tmp_path, lang: str, session, policy: Policy = POLICY, site: dict | None = None) -> str:
    return page_text(rendered_files_page(tmp_path, lang, session, policy=policy, site=site))


@pytest.mark.parametrize("lang", ["nl", "en"])
def test_the_files_page_tells_a_link_to_download_before_its_end_and_a_partner_the_retention(tmp_path, lang):
    from exchange.portal.sessions import WebSession

    ends = datetime.datetime(2026, 12, 5, 13, 0, tzinfo=datetime.UTC)
    link = files_page(tmp_path, lang, WebSession("id", "link-abcdefgh", "link", "192.0.2.1", _Sftp(), ends))
    assert {
        "nl": "Download uw bestanden vóór zaterdag 5 december 2026 om 14:00 (CET) . Op dat moment vervallen de link "
        "en het wachtwoord en worden al uw bestanden verwijderd, ook bestanden die pas kort daarvoor zijn klaargezet.",
        "en": "Download your files before Saturday 5 December 2026 at 14:00 (CET) . At that moment the link and the "
        "password stop working and all your files are deleted, even files placed shortly before.",
    }[lang] in link
    assert "dagen nadat" not in link and "days after" not in link
    partner = files_page(tmp_path, lang, WebSession("id", "cardiology", "partner", "192.0.2.1", _Sftp()))
    assert {
        "nl": "Bestanden worden 7 dagen nadat ze zijn geplaatst automatisch verwijderd.",
        "en": "Files are deleted automatically 7 days after they were placed.",
    }[lang] in partner
    for text in (link, partner):
        assert {"nl": "hoeft u niet te downloaden", "en": "You need not download the file ending in .sha256"}[
            lang
        ] in text
        assert {"nl": "123,5 MB", "en": "123.5 MB"}[lang] in text


def test_page_times_are_in_the_sites_zone_not_the_servers(tmp_path, monkeypatch):
    import time

    from exchange.portal.sessions import WebSession

    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        session = WebSession("id", "cardiology", "partner", "192.0.2.1", _Sftp())
        assert "vrijdag 5 december 2025 om 13:00 (CET)" in files_page(tmp_path, "nl", session)
        london = outbox_site() | {"timezone": "Europe/London"}
        assert "Friday 5 December 2025 at 12:00 (GMT)" in files_page(tmp_path, "en", session, site=london)
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.parametrize("lang", ["nl", "en"])
def test_limits_on_the_pages_come_from_the_policy(tmp_path, lang, no_floor):
    portal = POLICY.portal.model_copy(update={"login_failures_per_ip": 1, "login_failure_window_seconds": 121})
    quality = POLICY.passwords.quality.model_copy(update={"dictcheck": False})
    policy = POLICY.model_copy(
        update={"portal": portal, "passwords": POLICY.passwords.model_copy(update={"quality": quality})}
    )
    with client_for(tmp_path, policy) as web:
        web.get(f"/login?lang={lang}")
        codes = [csrf_post(web, "/l/" + "A" * 43, password="x") for _ in range(2)]
        rules = page_text(
            web.post(
                "/password", data={"csrf": web.cookies["exchange_csrf"], "new_password": "a", "new_password_again": "b"}
            ).text
        )
    assert [c.status_code for c in codes] == [401, 429]
    blocked = page_text(codes[1].text)
    assert {"nl": "Wacht 3 minuten en probeer", "en": "Wait 3 minutes, then try again."}[lang] in blocked
    assert "kwartier" not in blocked and "quarter" not in blocked
    assert "woordenboek" not in rules and "dictionary" not in rules
    assert {"nl": "leestekens en niet een van uw laatste 24", "en": "punctuation, and none of your last 24"}[
        lang
    ] in rules
    with client_for(tmp_path) as web:
        web.get(f"/login?lang={lang}")
        rules = page_text(
            web.post(
                "/password", data={"csrf": web.cookies["exchange_csrf"], "new_password": "a", "new_password_again": "b"}
            ).text
        )
    assert {"nl": ", geen woord uit het woordenboek en niet", "en": ", no dictionary word, and none"}[lang] in rules


def test_a_refused_uploads_body_is_read_to_its_end_so_the_answer_arrives(tmp_path):
    """A server that answers before the body is read and closes makes the kernel reset the
    connection; nginx then shows a 502 instead of the page naming what was wrong. Here the
    upload is refused (no session) and the app still takes every piece of the body."""
    app = create_app(make_config(tmp_path), POLICY)
    pieces = [{"type": "http.request", "body": b"x" * 1000, "more_body": True} for _ in range(5)]
    left = iter([*pieces, {"type": "http.request", "body": b"", "more_body": False}])
    sent = []

    async def receive():
        return next(left)

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http", "http_version": "1.1", "method": "POST", "scheme": "https", "path": "/files/upload",
        "raw_path": b"/files/upload", "query_string": b"", "root_path": "", "server": ("portal.test", 443),
        "client": ("127.0.0.1", 50000), "headers": [(b"host", b"portal.test"), (b"content-type", b"multipart/form-data; boundary=x")],
    }  # fmt: skip
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 401 and next(left, None) is None  # answered, and every piece taken


def test_a_big_refused_body_is_read_only_so_far():
    from starlette.requests import Request

    from exchange.portal.transfer import drain

    messages = [{"type": "http.request", "body": b"x" * 1000, "more_body": True} for _ in range(5)]
    left = iter([*messages, {"type": "http.request", "body": b"", "more_body": False}])

    async def receive():
        return next(left)

    asyncio.run(drain(Request({"type": "http", "method": "POST", "headers": []}, receive), most=2500))
    assert len(list(left)) == 3  # then cut off: the connection closes instead


# -- a phone's width, and the hospital's look ------------------------------------------------


def test_each_file_is_one_block_with_its_facts_and_actions_and_names_wrap_only_at_separators(tmp_path):
    listed = [
        files.Listed("CT-thorax_2025-12-05.zip", 123_456_789, 1_764_936_000),
        files.Listed("CT-thorax_2025-12-05.zip.sha256", 99, 1_764_936_000),
    ]
    html = rendered_files_page(
        tmp_path, downloads=listed, uploads=[files.Listed("letter <b>&</b>.pdf", 5, 1_764_936_000)]
    )
    downloads = re.search(r'<h2 id="downloads">.*?</section>', html, re.S)[0]
    blocks = re.findall(r'<li>\s*<p class="file-name">.*?</ul>\s*</li>', downloads, re.S)
    assert len(blocks) == 2 and "<table" not in html
    first = blocks[0]
    assert (
        '<p class="file-name"><span class="visually-hidden">Name: </span>CT-<wbr>thorax_<wbr>2025-<wbr>12-<wbr>05<wbr>.zip</p>'
        in first
    )
    assert '<span class="file-size">123.5 MB</span>' in first
    # The date wraps, if a phone is too narrow for it, between the day and the time only.
    assert (
        '<span class="file-date"><span class="nowrap">Friday 5 December 2025</span> '
        '<span class="nowrap">at 13:00 (CET)</span></span>'
    ) in first
    actions = re.search(r'<ul class="actions">(.*?)</ul>', first, re.S)[1]
    assert re.findall(r"<li>(.*?)</li>", actions, re.S) == [
        '<a class="button secondary" href="/files/view/download/CT-thorax_2025-12-05.zip">View'
        '<span class="visually-hidden"> CT-thorax_2025-12-05.zip</span></a>',
        '<a class="button" href="/files/download/CT-thorax_2025-12-05.zip" download>Download'
        '<span class="visually-hidden"> CT-thorax_2025-12-05.zip</span></a>',
    ]
    # A zip may be a study package, to view before download; a checksum is none.
    checksum_actions = re.search(r'<ul class="actions">(.*?)</ul>', blocks[1], re.S)[1]
    assert "/files/view/" not in checksum_actions and "/files/download/" in checksum_actions
    # Escaped where it lands, <wbr> or not: an uploaded name is shown, never markup.
    uploads = re.search(r'<h2 id="uploads">.*?</section>', html, re.S)[0]
    assert "letter &lt;b&gt;&amp;&lt;/<wbr>b&gt;<wbr>.pdf" in uploads and "<b>" not in uploads
    assert 'class="actions"' not in uploads  # nothing to do with an upload on the web
    # The notice after an upload wraps the same way, escaped the same way.
    notice = rendered_files_page(tmp_path, downloads=[], uploaded=["scan_<1>.zip", "b.pdf"])
    assert "Received: scan_<wbr>&lt;1&gt;<wbr>.zip, b<wbr>.pdf</p>" in notice


def test_a_breakable_name_is_made_printable_before_it_is_escaped():
    from exchange.portal.pages import breakable

    assert str(breakable("report\u202efdp.exe")) == "report\\u202efdp<wbr>.exe"
    assert str(breakable("a&b-c")) == "a&amp;b-<wbr>c"
    assert str(breakable("https://x.example/login")) == "https:/<wbr>/<wbr>x<wbr>.example/<wbr>login"


def test_the_css_keeps_sizes_and_dates_whole_and_breaks_no_word():
    css = (TEMPLATES / "static" / "portal.css").read_text()
    assert ".file-size, .nowrap { white-space: nowrap; }" in css
    assert "break-all" not in css and "anywhere" not in css
    assert "var(--accent)" in css and not re.search(r"--accent\s*:", css)  # the colour is the site's, from /brand/


def test_every_page_shows_the_logo_named_for_the_institution_and_links_the_sites_colour(tmp_path):
    logo = tmp_path / "portal-logo"
    logo.write_bytes(logo_png(120))
    site = outbox_site() | {"accent_colour": ACCENT}
    with client_for(tmp_path, site=site, logo=str(logo)) as web:
        css = web.get("/brand/accent.css")
        version = __import__("hashlib").sha256(logo.read_bytes()).hexdigest()[:16]
        for path, lang, alt in [("/login", "nl", "het Testziekenhuis"), ("/help", "en", "Test Hospital"),
                                ("/l/" + "A" * 43, "en", "Test Hospital"), ("/files", "nl", "het Testziekenhuis")]:  # fmt: skip
            html = web.get(f"{path}?lang={lang}").text
            assert f'<img class="logo" src="/brand/logo?v={version}" alt="{alt}" width="120" height="120">' in html
            css_link = re.search(r'<link rel="stylesheet" href="(/brand/accent\.css\?v=[0-9a-f]{16})">', html)[1]
            assert web.get(css_link).text == css.text
            # No request leaves the page: every address it names is this site's own.
            for address in re.findall(r'(?:src|href|action)="([^"]*)"', html):
                assert address.startswith(("/", "?")), (path, address)
    assert css.text == ":root { --accent: #0b5394; }\n"
    assert css.headers["content-type"] == "text/css; charset=utf-8"
    assert css.headers["cache-control"] == BRAND_CACHE and css.headers["content-security-policy"] == BRAND_CSP


def test_the_logo_is_served_with_its_type_a_long_cache_and_headers_that_let_nothing_run(tmp_path):
    logo = tmp_path / "portal-logo"
    logo.write_bytes(logo_png(120))
    with client_for(tmp_path, logo=str(logo)) as web:
        response = web.get("/brand/logo?v=anything")
        page = web.get("/login")
    assert response.status_code == 200 and response.content == logo.read_bytes()
    assert response.headers["content-type"] == "image/png"
    assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert response.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'; sandbox"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cross-origin-resource-policy"] == "same-origin"
    assert len(response.headers.get_list("content-security-policy")) == 1
    # The pages keep their own policy, unchanged: no inline style, no other origin.
    assert page.headers["content-security-policy"] == PAGE_CSP and "unsafe-inline" not in PAGE_CSP
    assert page.headers["cache-control"] == "no-store"


def test_without_a_logo_the_pages_show_none_and_the_colour_is_the_default(tmp_path):
    with client_for(tmp_path) as web:
        missing = web.get("/brand/logo")
        assert missing.status_code == 404 and missing.headers["cache-control"] == "no-store"
        assert "<img" not in web.get("/login").text
        assert web.get("/brand/accent.css").text == ":root { --accent: #1a5fb4; }\n"


def test_portal_check_refuses_a_logo_that_is_not_an_image(tmp_path, monkeypatch):
    monkeypatch.setenv("EXCHANGE_POLICY", str(REPO / "policies.yaml"))
    logo = tmp_path / "portal-logo"
    logo.write_text("<svg onload='alert(1)'/>")
    config = tmp_path / "portal.yaml"
    config.write_text(portal_yaml(make_config(tmp_path, logo=str(logo))))
    result = CliRunner().invoke(cli, ["portal", "check", str(config)])
    assert result.exit_code == 1
    assert f"{logo}: an SVG image; a logo must be PNG or JPEG (an SVG can carry script)" in result.output
    logo.write_bytes(logo_png(32))
    assert CliRunner().invoke(cli, ["portal", "check", str(config)]).exit_code == 0


def test_an_account_takes_a_bounded_number_of_turns_at_once_over_its_sessions_and_is_then_forgotten():
    turns = sessions.AccountTurns(1)
    order = []

    async def job(account: str, name: str):
        async with turns.turn(account):
            order.append(f"{name} starts")
            await asyncio.sleep(0.05)
            order.append(f"{name} ends")

    async def main():
        await asyncio.gather(job("cardiology", "first"), job("cardiology", "second"), job("neurology", "other"))
        return len(turns)

    assert asyncio.run(main()) == 0  # nothing kept of an account that waits for nothing
    assert order.index("first ends") < order.index("second starts")
    assert order.index("other starts") < order.index("first ends")  # another account is not held back


def test_a_series_stack_is_made_of_escaped_figures_the_first_one_given():
    from exchange.portal.pages import stack_figures
    from exchange.portal.study_view import Picture

    pictures = [Picture("a", 512, 400), Picture("b", 0, 0)]
    made = str(stack_figures(pictures, '/p/"1/', "/x<y>.zip", "data:image/jpeg;base64,AB+/", "Pic & <b>", 'of"'))
    assert made == (
        '<figure><img src="data:image/jpeg;base64,AB+/" width="512" height="400" fetchpriority="high" '
        'alt="Pic &amp; &lt;b&gt; 1 of&#34; 2"><figcaption>1 / 2</figcaption></figure>\n'
        '<figure><img src="/p/&#34;1/2/x&lt;y&gt;.zip" loading="lazy" alt="Pic &amp; &lt;b&gt; 2 of&#34; 2">'
        "<figcaption>2 / 2</figcaption></figure>\n"
    )
