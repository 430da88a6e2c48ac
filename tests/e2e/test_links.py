"""One-time link accounts and partner credentials on a real host, with real message servers:
aiosmtpd (STARTTLS and AUTH under a test CA) and an HTTP SMS gateway on the outer loopback."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import re
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import paramiko
import pytest
from paramiko.sftp import CMD_HANDLE, CMD_OPEN, SFTP_FLAG_CREATE, SFTP_FLAG_TRUNC, SFTP_FLAG_WRITE
from pydicom.data import get_testdata_file

from exchange import paths
from exchange.messaging.messages import when
from tests import testhost
from tests.dicom_synth import clone, ct_study
from tests.e2e.clients import ISSUED, issued_account, openssh_sftp, paramiko_sftp
from tests.e2e.conftest import CA_ON_HOST, PARTNERS, make_exchange
from tests.pyinfra_run import REPO
from tests.sites import relay_site

pytestmark = pytest.mark.e2e

J2K = Path(get_testdata_file("JPEG2000.dcm", download=False))

LINK_URL = re.compile(r"https://exchange\.test\.example/l/([A-Za-z0-9_-]{43})\b")
PASSWORD = re.compile(r"\b([A-Za-z2-9]{4}(?:-[A-Za-z2-9]{4}){3,})\b")


@pytest.fixture(scope="module")
def linked(shared_hosts, tmp_path_factory, relay):
    """A deployed host whose site sends through `relay`."""
    host = testhost.boot("links", log=lambda message: print(message, flush=True), directory=shared_hosts)
    try:
        ca = base64.b64encode(relay.ca.read_bytes()).decode()
        host.ssh(f"install -d {paths.CONFIG_DIR} && echo {ca} | base64 -d > {CA_ON_HOST}")
        yield make_exchange(
            host,
            tmp_path_factory.mktemp("links"),
            site=relay_site(relay.smtp.port, relay.sms.url, CA_ON_HOST),
        )
    finally:
        testhost.shutdown(host)


_counter = iter(range(10_000))


def recipient() -> tuple[str, str]:
    n = next(_counter)
    return f"patient{n}@example.org", f"+3161234{n:04d}"


def run(exchange, *args: str):
    return exchange.host.ssh(shlex.join(["exchange", *args]), check=False)


@dataclass
class IssuedLink:
    account: str
    email: str
    phone: str
    mail: str
    token: str
    sms: str
    password: str
    output: str


def issue(exchange, relay, *extra: str) -> IssuedLink:
    email, phone = recipient()
    result = run(exchange, "link", "issue", "--email", email, "--phone", phone, *extra)
    assert result.returncode == 0, result.stderr
    account = issued_account(result.stdout)
    (mail,) = relay.smtp.to(email)
    (sms,) = relay.sms.to(phone)
    text = sms.body["text"]
    return IssuedLink(
        account, email, phone, mail.body, LINK_URL.search(mail.body)[1], text, PASSWORD.search(text)[1], result.stdout
    )


def can_login(exchange, account: str, password: str) -> bool:
    try:
        paramiko_sftp(exchange.host, account, password=password).close()
        return True
    except paramiko.AuthenticationException:
        return False


def audit_events(exchange, event: str, until=None) -> list[dict]:
    """Audit lines whose event is `event`, or starts with it if it ends in "-". With `until`,
    read again (for up to 10 s) until `until(lines)` holds: a tool's record is taken by rsyslog
    before the tool ends, but written to the file a moment later."""
    pattern = f'"event": "{event}' + ("" if event.endswith("-") else '"')
    deadline = time.monotonic() + 10
    while True:
        text = exchange.host.ssh(f"grep -hF {shlex.quote(pattern)} {paths.AUDIT_LOG} || true").stdout
        found = [json.loads(line) for line in text.splitlines()]
        if until is None or until(found) or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def link_state(exchange) -> str:
    """Everything an issue creates: accounts, chroots, records, tokens, keys and log sockets."""
    return exchange.host.ssh(
        f"getent group exchange-links; ls /srv/exchange/links {paths.STATE_DIR}/links {paths.STATE_DIR}/link-tokens "
        f"{paths.LOG_SOCKETS_DIR}; grep -c '^link-' /etc/passwd || true"
    ).stdout


def test_link_by_mail_password_by_sms_and_the_password_opens_sftp(linked, relay):
    link = issue(linked, relay, "--lang", "en", "--note", "CT thorax")
    assert re.search(r"e-mail +link sent to p\*\*\*@example\.org", link.output)
    assert re.search(r"SMS +password sent to \+31\*+\d\d", link.output)
    assert link.password not in link.output  # printed only with --show-password
    # Two channels: the mail has the link and no password, the SMS the password and no link.
    assert link.password not in link.mail and "Through the image exchange website" in " ".join(link.mail.split())
    assert link.token not in link.sms and "/l/" not in link.sms
    # The token is stored only as its hash; the password nowhere.
    digest = hashlib.sha256(link.token.encode()).hexdigest()
    assert json.loads(linked.host.ssh(f"cat {paths.STATE_DIR}/link-tokens/{digest}").stdout)["account"] == link.account
    for secret in (link.token, link.password):
        found = linked.host.ssh(
            f"grep -rlF -- {shlex.quote(secret)} {paths.STATE_DIR} /var/log /etc /srv /var/spool || true"
        )
        assert found.stdout == "", f"a secret was written to {found.stdout}"
    # The password opens the account's own chroot over SFTP (keyboard-interactive).
    session = paramiko_sftp(linked.host, link.account, password=link.password)
    try:
        assert {"download", "upload"} <= set(session.listdir("/"))
        with session.open("/upload/from-patient.txt", "w") as handle:
            handle.write("images from elsewhere")
    finally:
        session.close()
    assert linked.host.ssh(f"cat /srv/exchange/links/{link.account}/upload/from-patient.txt").stdout == (
        "images from elsewhere"
    )
    (event,) = [e for e in audit_events(linked, "link-issued") if e["account"] == link.account]
    assert event["by"] == "root" and event["recipient"] == "p***@example.org +31*******" + link.phone[-2:]
    assert link.email not in json.dumps(event) and link.phone not in json.dumps(event)


def test_generated_passwords_are_checked_with_the_servers_libpwquality(linked):
    # Rarely cracklib finds a random password "too simplistic/systematic" and PAM would refuse
    # the hand-out: the generator asks libpwquality first, as PAM will.
    verdicts = linked.host.ssh(
        f"{paths.TOOLS_VENV}/bin/python -c 'from exchange.credentials import pwquality_refusal as no; "
        'print(bool(no("Password1234567")), bool(no("Hq7t-Mw3k-Pz9x-Ne4r")))\''
    ).stdout.split()
    assert verdicts == ["True", "False"]


def test_show_password_prints_it_once_for_the_phone(linked, relay):
    link = issue(linked, relay, "--show-password")
    assert f"password {link.password}" in link.output


def test_revoke_ends_access_and_removes_everything(linked, relay):
    link = issue(linked, relay)
    session = paramiko_sftp(linked.host, link.account, password=link.password)
    result = run(linked, "link", "revoke", link.account)
    assert result.returncode == 0, result.stderr
    with pytest.raises((EOFError, OSError, paramiko.SSHException)):
        session.listdir("/")  # the open session was ended
    assert not can_login(linked, link.account, link.password)
    digest = hashlib.sha256(link.token.encode()).hexdigest()
    gone = linked.host.ssh(
        f"test -e /srv/exchange/links/{link.account} || test -e {paths.STATE_DIR}/links/{link.account}.json || "
        f"test -e {paths.STATE_DIR}/link-tokens/{digest} || getent passwd {link.account}",
        check=False,
    )
    assert gone.returncode != 0
    assert [e["by"] for e in audit_events(linked, "link-revoked") if e["account"] == link.account] == ["root"]
    again = run(linked, "link", "revoke", link.account)
    assert again.returncode == 2 and f"{link.account}: no such link account" in again.stderr


def test_an_expired_link_opens_nothing_and_the_purge_removes_it(linked, relay):
    by_account = issue(linked, relay)  # the account's expiry date set into the past
    by_record = issue(linked, relay)  # the record's validity over (the hourly purge's usual case)
    linked.host.ssh(f"usermod --expiredate 2020-01-01 {by_account.account}")
    assert not can_login(linked, by_account.account, by_account.password)
    record = f"{paths.STATE_DIR}/links/{by_record.account}.json"
    linked.host.ssh(
        f'python3 -c \'import json,sys; r=json.load(open(sys.argv[1])); r["expires"]="2020-01-01T00:00:00Z"; '
        f'json.dump(r, open(sys.argv[1], "w"))\' {record}'
    )
    # Uploaded in the link's last minutes, not yet announced: kept for staff, and announced.
    linked.host.ssh(
        f"cd /srv/exchange/links/{by_record.account}/upload && echo letter > 'referral letter.pdf' && "
        f"chown {by_record.account} 'referral letter.pdf' && touch -d '-10 minutes' 'referral letter.pdf' && "
        "echo half > .upload-1234.partial"
    )
    purge = linked.host.ssh("exchange purge")
    for link in (by_account, by_record):
        assert f'"account": "{link.account}", "by": "purge", "event": "link-expired"' in purge.stdout
        assert linked.host.ssh(f"getent passwd {link.account}", check=False).returncode == 2
        assert not can_login(linked, link.account, link.password)
    expired = {e["account"]: e for e in audit_events(linked, "link-expired")}
    assert expired[by_record.account]["recipient"].startswith("p***@example.org")
    held = f"/srv/exchange/ended-links/{by_record.account}"
    # Hidden files too (a cut-off upload, or a name a client chose): retention deletes them as well.
    assert linked.host.ssh(f"ls -A {held}").stdout.split() == [".upload-1234.partial", "referral", "letter.pdf"]
    assert linked.host.ssh(f"stat -c '%U %G %a' '{held}/referral letter.pdf'").stdout.strip() == (
        "root exchange-staff 640"
    )
    (event,) = [e for e in audit_events(linked, "link-uploads-held") if e["account"] == by_record.account]
    assert event["files"] == 2 and event["folder"] == held
    linked.host.ssh("exchange notify-uploads")
    (notice,) = [r for r in relay.smtp.to("desk@hospital.example") if by_record.account in r.message["Subject"]]
    assert "referral letter.pdf" in notice.body and held in " ".join(notice.body.split())
    # Then retention applies as to any file: gone after it, with its folder.
    linked.host.ssh(f"touch -d '-8 days' '{held}/referral letter.pdf' {held}/.upload-1234.partial {held}")
    linked.host.ssh("exchange purge")
    assert linked.host.ssh(f"test -e {held}", check=False).returncode == 1


def test_resend_replaces_the_password_by_sms(linked, relay):
    link = issue(linked, relay)
    result = run(linked, "link", "resend", link.account)
    assert result.returncode == 0, result.stderr
    new_sms = relay.sms.to(link.phone)[-1].body["text"]
    new_password = PASSWORD.search(new_sms)[1]
    assert new_password != link.password and ("new password" in new_sms or "nieuwe wachtwoord" in new_sms)
    assert not can_login(linked, link.account, link.password)
    assert can_login(linked, link.account, new_password)
    assert [e["account"] for e in audit_events(linked, "link-password-resent")].count(link.account) == 1


def test_failed_resend_keeps_the_old_password(linked, relay):
    link = issue(linked, relay)
    relay.sms.status = 503
    try:
        result = run(linked, "link", "resend", link.account)
    finally:
        relay.sms.status = 200
    assert (
        result.returncode == 1 and "SMS not sent" in result.stderr and "previous password still works" in result.stderr
    )
    assert can_login(linked, link.account, link.password)


def test_twenty_issues_in_parallel_all_succeed_distinctly(linked, relay):
    # Started together on the server (twenty ssh logins at once would meet sshd's MaxStartups).
    recipients = [recipient() for _ in range(20)]
    script = " ".join(
        f"( exchange link issue --email {email} --phone {phone} > /tmp/parallel.{n}.out 2>&1; "
        f"echo $? > /tmp/parallel.{n}.rc ) &"
        for n, (email, phone) in enumerate(recipients)
    )
    linked.host.ssh(f"{script} wait", timeout=300)
    for n in range(20):
        rc = linked.host.ssh(f"cat /tmp/parallel.{n}.rc /tmp/parallel.{n}.out").stdout
        assert rc.startswith("0\n"), rc
    accounts = set(ISSUED.findall(linked.host.ssh("cat /tmp/parallel.*.out").stdout))
    tokens = {LINK_URL.search(relay.smtp.to(email)[0].body)[1] for email, _ in recipients}
    passwords = {PASSWORD.search(relay.sms.to(phone)[0].body["text"])[1] for _, phone in recipients}
    assert len(accounts) == len(tokens) == len(passwords) == 20
    members = linked.host.ssh("getent group exchange-links").stdout.strip().rsplit(":", 1)[1].split(",")
    assert accounts <= set(members)
    email, phone = recipients[0]
    account = next(
        a
        for a in accounts
        if json.loads(linked.host.ssh(f"cat {paths.STATE_DIR}/links/{a}.json").stdout)["email"] == email
    )
    assert can_login(linked, account, PASSWORD.search(relay.sms.to(phone)[0].body["text"])[1])


def test_mail_relay_down_rolls_the_issue_back(linked, relay):
    before = link_state(linked)
    relay.smtp.stop()
    try:
        email, phone = recipient()
        result = run(linked, "link", "issue", "--email", email, "--phone", phone)
    finally:
        relay.smtp.start()
    assert result.returncode == 1
    assert re.search(r"e-mail not sent: smtp 127\.0\.0\.1:\d+: Connection refused", result.stderr)
    assert "nothing was issued" in result.stderr
    assert link_state(linked) == before
    assert relay.sms.to(phone) == []  # the password never left


def test_sms_gateway_refusal_rolls_the_issue_back(linked, relay):
    before = link_state(linked)
    relay.sms.status = 401
    try:
        email, phone = recipient()
        result = run(linked, "link", "issue", "--email", email, "--phone", phone)
    finally:
        relay.sms.status = 200
    assert result.returncode == 1 and "SMS not sent" in result.stderr and "401" in result.stderr
    assert link_state(linked) == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--email", "patient-at-example.org", "--phone", "+31612345678"],
            "--email: value is not a valid email address",
        ),
        (["--email", "p@example.org", "--phone", "06-12345678"], "E.164"),
        (["--email", "p@example.org", "--phone", "+31612345678", "--days", "30"], "--days: at most 7"),
    ],
)
def test_bad_input_is_refused_before_anything_is_created(linked, relay, args, message):
    before, mails = link_state(linked), len(relay.smtp.received)
    result = run(linked, "link", "issue", *args)
    assert result.returncode == 2 and message in result.stderr
    assert link_state(linked) == before and len(relay.smtp.received) == mails


def test_list_shows_masked_recipients_files_and_last_login(linked, relay):
    link = issue(linked, relay, "--note", "MRI knee")
    linked.host.ssh(f"printf study > /srv/exchange/links/{link.account}/download/study.zip")
    paramiko_sftp(linked.host, link.account, password=link.password).close()
    rows = {
        json.loads(line)["account"]: json.loads(line)
        for line in run(linked, "link", "list", "--json").stdout.splitlines()
    }
    row = rows[link.account]
    assert row["email"] == "p***@example.org" and row["note"] == "MRI knee"
    assert (row["download_files"], row["upload_files"]) == (1, 0)
    assert row["last_login"] is not None
    table = run(linked, "link", "list").stdout
    assert link.account in table and link.email not in table


def test_partner_credentials_notice_by_mail_password_by_sms_change_forced(linked, relay):
    name = PARTNERS[0]
    mails = len(relay.smtp.to(f"{name}@partner.example"))
    result = run(linked, "partner", "credentials", name)
    assert result.returncode == 0, result.stderr
    mail = relay.smtp.to(f"{name}@partner.example")[mails:][0].body
    password = PASSWORD.search(relay.sms.calls[-1].body["text"])[1]
    assert name in mail and password not in mail
    # Expired by age from the start (not `chage -d 0`, under which PAM never lets it die), so
    # the first login must change it, and left unused past the inactive days it opens nothing.
    today = int(linked.host.ssh("echo $(( $(date +%s) / 86400 ))").stdout)
    assert linked.host.ssh(f"getent shadow {name} | cut -d: -f3-7").stdout.strip() == f"{today - 91}:1:90:14:30"
    # Expired from the start, yet no expiry notice: the hand-out mail says to change it.
    assert "0 password expiry notices sent" in run(linked, "notify-expiring").stderr
    linked.host.ssh(f"chage --lastday {today - 91 - 31} {name}")
    with pytest.raises(paramiko.AuthenticationException):
        paramiko_sftp(linked.host, name, password=password, new_password="Quiet-Harbour-Lantern-2741").close()
    result = run(linked, "partner", "credentials", name)
    assert result.returncode == 0, result.stderr
    password = PASSWORD.search(relay.sms.calls[-1].body["text"])[1]
    messages: list[str] = []
    own = "Quiet-Harbour-Lantern-2741"
    paramiko_sftp(linked.host, name, password=password, new_password=own, messages=messages).close()
    assert any("change your password" in m.lower() or "password expired" in m.lower() for m in messages), messages
    assert can_login(linked, name, own) and not can_login(linked, name, password)
    event = [e for e in audit_events(linked, "partner-credentials-issued") if e["account"] == name][-1]
    assert event["recipient"].startswith(f"{name[0]}***@partner.example")
    unknown = run(linked, "partner", "credentials", "nobody-here")
    assert unknown.returncode == 2 and "nobody-here: not in the partner data" in unknown.stderr


def test_a_partner_is_told_once_before_its_password_expires(linked, relay):
    name = PARTNERS[1]
    today = int(linked.host.ssh("echo $(( $(date +%s) / 86400 ))").stdout)
    inbox = f"{name}@partner.example"
    before = len(relay.smtp.to(inbox))
    try:
        linked.host.ssh(f"chage --lastday {today - 80} {name}")  # 90-day aging: due in 11 days
        first = run(linked, "notify-expiring")
        assert first.returncode == 0 and "1 password expiry notices sent" in first.stderr, first.stderr
        (notice,) = relay.smtp.to(inbox)[before:]
        assert notice.message["Subject"] == f"Het wachtwoord van uw account {name} verloopt binnenkort"
        text = " ".join(notice.body.split())
        assert "vraagt de eerste aanmelding om een nieuw wachtwoord" in text and "gaat het account dicht" in text
        assert run(linked, "notify-expiring").returncode == 0
        assert len(relay.smtp.to(inbox)) == before + 1  # once a password
        assert [e["account"] for e in audit_events(linked, "password-expiry-notice-sent")] == [name]
    finally:
        linked.host.ssh(f"chage --lastday {today} {name}")


def test_uploads_are_announced_to_staff_once_per_account_and_run(linked, relay):
    link = issue(linked, relay, "--note", "second opinion")
    session = paramiko_sftp(linked.host, link.account, password=link.password)
    try:
        for name in ("scan-1.dcm", "scan-2.dcm"):
            with session.open(f"/upload/{name}", "w") as handle:
                handle.write("DICM")
    finally:
        session.close()
    # Settled: unchanged for longer than an upload in progress would be.
    linked.host.ssh(f"touch -d '-10 minutes' /srv/exchange/links/{link.account}/upload/*")
    first = linked.host.ssh("exchange notify-uploads")
    notices = [r for r in relay.smtp.to("desk@hospital.example") if link.account in r.message["Subject"]]
    assert len(notices) == 1, first.stderr
    text = " ".join(notices[0].body.split())
    assert "scan-1.dcm" in text and "scan-2.dcm" in text and "second opinion" in text
    linked.host.ssh("exchange notify-uploads")
    assert len([r for r in relay.smtp.to("desk@hospital.example") if link.account in r.message["Subject"]]) == 1


@dataclass
class Workstation:
    """A staff member's workstation: a home with an ssh config, a key and known_hosts."""

    home: Path

    def fab(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(REPO / ".venv" / "bin" / "fab"), "-H", "exchange01", *args],
            cwd=REPO,
            env={**os.environ, "HOME": str(self.home)},
            capture_output=True,
            text=True,
            timeout=300,
        )


@pytest.fixture(scope="module")
def workstation(linked, tmp_path_factory) -> Workstation:
    home = tmp_path_factory.mktemp("staff-home")
    key = home / "staff_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    linked.host.ssh(
        "useradd --create-home --shell /bin/bash --groups exchange-staff staff-jdoe && "
        "install -d -m 700 -o staff-jdoe -g staff-jdoe ~staff-jdoe/.ssh && "
        f"echo {shlex.quote(key.with_suffix('.pub').read_text().strip())} > ~staff-jdoe/.ssh/authorized_keys"
    )
    (home / ".ssh").mkdir()
    (home / ".ssh" / "config").write_text(
        f"Host exchange01\n  HostName {linked.host.hostname}\n  Port {linked.host.port}\n"
        f"  User staff-jdoe\n  IdentityFile {key}\n"
    )
    (home / ".ssh" / "known_hosts").write_text(linked.host.known_hosts.read_text())
    return Workstation(home)


def test_staff_run_the_tools_from_their_workstation_with_fabric(linked, relay, workstation):
    fab = workstation.fab
    email, phone = recipient()
    issued = fab("link-issue", "--email", email, "--phone", phone, "--lang", "en")
    assert issued.returncode == 0, issued.stderr
    account = issued_account(issued.stdout)
    assert relay.smtp.to(email) and relay.sms.to(phone)
    listed = fab("link-list", "--json")
    assert listed.returncode == 0 and account in listed.stdout and email not in listed.stdout
    revoked = fab("link-revoke", account)
    assert revoked.returncode == 0, revoked.stderr
    revoked_here = lambda found: any(e["event"] == "link-revoked" and e["account"] == account for e in found)  # noqa: E731
    events = audit_events(linked, "link-", until=revoked_here)
    by = {e["event"]: e["by"] for e in events if e["account"] == account}
    assert by == {"link-issued": "staff-jdoe", "link-revoked": "staff-jdoe"}
    # Staff may run `exchange` as root and nothing else.
    other = fab("link-revoke", "link-nosuch1")
    assert other.returncode != 0 and "no such link account" in other.stderr
    assert linked.host.ssh("su staff-jdoe -c 'sudo -n /usr/bin/id'", check=False).returncode != 0


def test_an_unknown_server_key_is_refused_not_added(workstation, tmp_path):
    refusing = Workstation(tmp_path / "home")
    (refusing.home / ".ssh").mkdir(parents=True)
    (refusing.home / ".ssh" / "config").write_text((workstation.home / ".ssh" / "config").read_text())
    (refusing.home / ".ssh" / "known_hosts").write_text("")
    refused = refusing.fab("link-list")
    assert refused.returncode != 0 and "not found in known_hosts" in refused.stderr
    assert (refusing.home / ".ssh" / "known_hosts").read_text() == ""


def sftp_create(session: paramiko.SFTPClient, path: str, data: bytes, mode: int) -> None:
    """Create a file with the mode the client asks for in its SFTP open, as OpenSSH `put` does
    with the local file's mode (paramiko's own open() asks for none)."""
    attributes = paramiko.SFTPAttributes()
    attributes.st_mode = mode
    kind, message = session._request(CMD_OPEN, path, SFTP_FLAG_WRITE | SFTP_FLAG_CREATE | SFTP_FLAG_TRUNC, attributes)
    assert kind == CMD_HANDLE
    with paramiko.SFTPFile(session, message.get_binary(), "w") as handle:
        handle.write(data)


def test_uploads_a_client_made_private_are_opened_to_staff(linked, workstation, tmp_path):
    """internal-sftp's umask only removes bits (and OpenSSH 9.2 has no -m): a 0600 file put with
    OpenSSH sftp and folders paramiko makes with mode 0 or 0700 hide uploads from staff until the
    upload notice job opens them to the group."""
    name = PARTNERS[1]
    key = linked.logins[name].key
    upload = f"/srv/exchange/partners/{name}/upload"
    local = tmp_path / "private.dcm"
    local.write_bytes(b"DICM put 0600")
    local.chmod(0o600)
    put = openssh_sftp(linked.host, name, key, f"put {local} /upload/private.dcm\n")
    assert put.returncode == 0, put.stderr
    session = paramiko_sftp(linked.host, name, key=key)
    try:
        session.mkdir("/upload/closed", mode=0)
        session.mkdir("/upload/series", mode=0o700)
        sftp_create(session, "/upload/series/im1.dcm", b"DICM im1 0600", 0o600)
    finally:
        session.close()

    def modes() -> list[str]:
        return linked.host.ssh(f"cd {upload} && stat -c '%n %U:%G %a' private.dcm closed series series/im1.dcm").stdout

    def as_staff(command: str) -> subprocess.CompletedProcess:
        return linked.host.ssh(f"su staff-jdoe -c {shlex.quote(command)}", check=False)

    assert modes().splitlines() == [
        f"private.dcm {name}:exchange-staff 600",
        f"closed {name}:exchange-staff 2000",
        f"series {name}:exchange-staff 2700",
        f"series/im1.dcm {name}:exchange-staff 600",
    ]
    assert as_staff("id -nG").stdout.split() == ["staff-jdoe", "exchange-staff"]  # staff, not root
    assert as_staff(f"cat {upload}/private.dcm").returncode != 0  # as the client left it
    linked.host.ssh("exchange notify-uploads")
    assert as_staff(f"cat {upload}/private.dcm").stdout == "DICM put 0600"
    assert as_staff(f"ls -A {upload}/closed").returncode == 0
    assert as_staff(f"cat {upload}/series/im1.dcm").stdout == "DICM im1 0600"
    assert modes().splitlines() == [
        f"private.dcm {name}:exchange-staff 640",
        f"closed {name}:exchange-staff 2050",
        f"series {name}:exchange-staff 2750",
        f"series/im1.dcm {name}:exchange-staff 640",
    ]


def test_no_package_for_a_locked_partner(linked, tmp_path):
    """A partner dropped from the partner data is locked by its account expiry (the deploy's
    `usermod --expiredate <today>`) until the purge removes it: a package for it would reach
    nobody, so staff are told, and nothing is written."""
    name = "gone-partner"
    chroot = f"/srv/exchange/partners/{name}"
    linked.host.ssh(
        f"useradd --user-group --no-create-home --home-dir {chroot} --shell /usr/sbin/nologin "
        f"--groups exchange-partners {name} && install -d -o root -g root -m 0755 {chroot} && "
        f"install -d -o root -g exchange-staff -m 2775 {chroot}/download"
    )
    try:
        clone(J2K, tmp_path / "study", 1)
        tar = subprocess.run(["tar", "-C", str(tmp_path / "study"), "-c", "."], capture_output=True, check=True).stdout
        subprocess.run(
            [*linked.host.ssh_args(), "rm -rf /tmp/for-gone && mkdir /tmp/for-gone && tar -C /tmp/for-gone -x"],
            input=tar,
            check=True,
        )
        linked.host.ssh(f"usermod --expiredate $(date -u +%F) {name}")
        refused = run(linked, "package", "--to", name, "/tmp/for-gone")
        assert refused.returncode == 2, refused.stderr
        assert f"partner {name} is locked" in refused.stderr and "cannot log in; nothing was written" in refused.stderr
        assert "Traceback" not in refused.stderr
        assert linked.host.ssh(f"ls -A {chroot}/download").stdout == ""
        linked.host.ssh(f"usermod --expiredate '' {name}")  # back in the partner data: unlocked
        packed = run(linked, "package", "--to", name, "/tmp/for-gone")
        assert packed.returncode == 0, packed.stderr
    finally:
        linked.host.ssh(f"userdel {name}; rm -rf {chroot} /tmp/for-gone", check=False)


def test_staff_package_a_study_that_the_recipient_downloads_intact(linked, relay, workstation, tmp_path):
    link = issue(linked, relay, "--note", "CT for second opinion")
    # Two folders, one named as people name folders: with a comma and spaces. Each --paths is
    # taken as given (fab once split on commas and stripped spaces).
    files = ct_study(tmp_path / "study" / "CT thorax, contrast", 4) + clone(J2K, tmp_path / "study" / "j2k", 2)
    tar = subprocess.run(["tar", "-C", str(tmp_path / "study"), "-c", "."], check=True, capture_output=True).stdout
    subprocess.run(
        [*linked.host.ssh_args(), "rm -rf /tmp/incoming && mkdir /tmp/incoming && tar -C /tmp/incoming -x"],
        input=tar,
        check=True,
    )
    packed = workstation.fab(
        "package", "--to", link.account, "--paths", "/tmp/incoming/CT thorax, contrast", "--paths", "/tmp/incoming/j2k",
        "--label", "CT thorax",
    )  # fmt: skip
    assert packed.returncode == 0, packed.stderr
    session = paramiko_sftp(linked.host, link.account, password=link.password)
    try:
        names = sorted(session.listdir("/download"))
        (package,) = [n for n in names if n.endswith(".zip")]
        assert names == [package, f"{package}.sha256"]
        local = tmp_path / package
        session.get(f"/download/{package}", str(local))
        with session.open(f"/download/{package}.sha256") as handle:
            expected = handle.read().decode().split()[0]
        with pytest.raises(OSError):
            session.remove(f"/download/{package}")  # the recipient reads it, cannot change it
    finally:
        session.close()
    assert hashlib.sha256(local.read_bytes()).hexdigest() == expected
    out = tmp_path / "unpacked"
    subprocess.run(["unzip", "-q", str(local), "-d", str(out)], check=True)
    unpacked = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (out / "DICOM").rglob("IM*")}
    assert unpacked == {hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    (event,) = [e for e in audit_events(linked, "study-packaged") if e["account"] == link.account]
    assert event["by"] == "staff-jdoe" and event["files"] == 6 and event["patient_ids"] == ["SYN0001"]
    assert event["accession_numbers"] == ["ACC0001"] and event["package"] == package
    listed = {
        json.loads(line)["account"]: json.loads(line)
        for line in run(linked, "link", "list", "--json").stdout.splitlines()
    }
    assert listed[link.account]["download_files"] == 2
    # The package says, in both languages, that it goes when the link ends, in the site's zone
    # (the host's clock runs in UTC); the test site has no viewer, and the package says so.
    readme = (out / "README.TXT").read_text(encoding="utf-8")
    ends = datetime.datetime.fromisoformat(listed[link.account]["expires"])
    assert f"when the link expires, on {when(ends, 'en', 'Europe/Amsterdam')}." in readme
    assert f"als de link verloopt, op {when(ends, 'nl', 'Europe/Amsterdam')}." in readme
    assert "Windows: this folder holds no viewer." in readme and "Patiënt / Patient: " in readme
