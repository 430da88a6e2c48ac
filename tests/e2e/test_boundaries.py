"""The privilege boundaries of the threat model (docs/security.md), attacked on a real host.

Actors: a staff member (key login, `sudo exchange` and nothing else), a plain local account,
a partner and a link recipient (SFTP and the web page only). Each test is one attack that
worked before the boundary was built; each checks that the target is unchanged (content, mode,
owner), that nothing was read into an output or a package, and that the job itself still works.
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import re
import shlex
import subprocess
import tarfile
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from exchange import paths
from tests import testhost
from tests.dicom_synth import ct_study
from tests.e2e.clients import issued_account, openssh, paramiko_sftp, ssh_options
from tests.e2e.conftest import PARTNERS, make_exchange
from tests.sites import outbox_site

pytestmark = pytest.mark.e2e

STAFF = testhost.STAFF_USER  # the staff account the deploy makes on every test host, key login only
LOCAL = "mallory"
# A root-only file no command of ours has any business with: its content, mode and owner must never change.
TARGET = "/etc/imaging-exchange-target"
TARGET_TEXT = "root only: must never change\n"


class Fort:
    """The deployed host and its actors."""

    def __init__(self, exchange, staff_key: Path, work: Path) -> None:
        self.exchange, self.host, self.staff_key, self.work = exchange, exchange.host, staff_key, work

    def root(self, command: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        return self.host.ssh(command, check=check, timeout=timeout)

    def staff(self, command: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """A command as the staff member, logged in with the key over real SSH."""
        return openssh(self.host, STAFF, self.staff_key, command, timeout=timeout)

    def staff_in_background(self, command: str) -> subprocess.Popen:
        return subprocess.Popen(
            ["ssh", *ssh_options(self.host, self.staff_key), "-p", str(self.host.port), f"{STAFF}@{self.host.hostname}",
             command],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def local(self, command: str, check: bool = False) -> subprocess.CompletedProcess:
        """A command as a plain local account (no exchange group, no sudo)."""
        return self.host.ssh(f"runuser -u {LOCAL} -- sh -c {shlex.quote(command)}", check=check)

    def target_state(self, path: str = TARGET) -> str:
        return self.root(f"stat -c '%U:%G:%a:%s' {path} && sha256sum {path}").stdout

    def audit_lines(self) -> list[str]:
        return self.root(f"cat {paths.AUDIT_LOG}").stdout.splitlines()

    def issue_link(self) -> str:
        out = self.root("exchange link issue --email eve-patient@example.org --phone +31612345670").stdout
        return issued_account(out)

    def download_folder(self, account: str) -> str:
        kind = "links" if account.startswith("link-") else "partners"
        return f"/srv/exchange/{kind}/{account}/download"

    def put_study(self, local: Path, remote: str, owner: str) -> None:
        """Copy a local folder to the host as `owner`'s files."""
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w:gz") as tar:
            tar.add(local, arcname=".")
        subprocess.run(
            [*self.host.ssh_args(), f"mkdir -p {remote} && tar -xzf - -C {remote} && chown -R {owner}: {remote}"],
            input=archive.getvalue(),
            check=True,
            capture_output=True,
            timeout=120,
        )


@pytest.fixture(scope="module")
def fort(shared_hosts, tmp_path_factory) -> Fort:
    work = tmp_path_factory.mktemp("boundaries")
    host = testhost.boot("boundaries", log=lambda message: print(message, flush=True), directory=shared_hosts)
    try:
        exchange = make_exchange(
            host, work, site=outbox_site() | {"portal_url": host.portal_url}, portal=host.portal_data()
        )
        host.ssh(
            f"useradd --create-home --shell /bin/sh {LOCAL} && "
            f"printf %s {shlex.quote(TARGET_TEXT)} > {TARGET} && chmod 0600 {TARGET} && "
            # The site's CD viewer, so that `--viewer DIR` is allowed at all.
            "mkdir -p /opt/cdviewer && touch /opt/cdviewer/run_cdviewer.exe && "
            f"printf 'windows_viewer: run_cdviewer.exe\\nviewer_dir: /opt/cdviewer\\n' >> {paths.SITE} && "
            "exchange site check"
        )
        yield Fort(exchange, host.staff_key, work)
    finally:
        testhost.shutdown(host)


def test_the_staff_member_is_staff_and_not_root(fort):
    assert fort.staff("id -nG").stdout.split() == [STAFF, "exchange-staff"]
    assert fort.staff("sudo -n id -u").returncode != 0
    assert fort.staff("sudo -n exchange --version").returncode == 0


# Rule 1: a path staff name is opened with staff's rights.


def test_checking_a_file_shows_nothing_staff_could_not_read(fort):
    fort.root("usermod -p '$6$boundaries$SecretHashNobodyMaySee' mallory")
    secrets = ["SecretHashNobodyMaySee", "PRIVATE KEY"] + [
        line for line in fort.root(f"cat {paths.TLS_CERTIFICATE_KEY}").stdout.splitlines()[1:4]
    ]
    for command in (
        "policy check /etc/shadow",
        "site check /etc/shadow",
        "portal check /etc/shadow",
        f"policy check {paths.TLS_CERTIFICATE_KEY}",
        f"site check {paths.TLS_CERTIFICATE_KEY}",
    ):
        result = fort.staff(f"sudo -n exchange {command}")
        shown = result.stdout + result.stderr
        assert result.returncode != 0, command
        assert not [secret for secret in secrets if secret in shown], f"{command} showed: {shown}"
        assert "Permission denied" in shown, f"{command}: {shown}"
    # Files staff may read are checked as before.
    assert fort.staff(f"sudo -n exchange policy check {paths.POLICY}").returncode == 0


def test_package_and_inspect_read_only_what_staff_can_read(fort):
    account = fort.issue_link()
    folder = fort.download_folder(account)
    ct_study(fort.work / "secret-study", 2, patient_id="ROOTONLY")
    fort.put_study(fort.work / "secret-study", "/root/secret-study", "root")
    fort.root("chmod -R go-rwx /root/secret-study && cd /root && python3 -m zipfile -c secret.zip secret-study")
    for command in (
        f"package --to {account} /root/secret-study",
        f"package --to {account} /root/secret.zip",
        "inspect /root/secret.zip",
        "inspect /root/secret-study",
    ):
        result = fort.staff(f"sudo -n exchange {command}")
        assert result.returncode != 0, f"{command}: {result.stdout}"
        assert "Permission denied" in result.stdout + result.stderr, f"{command}: {result.stdout}{result.stderr}"
    assert fort.root(f"ls -A {folder}").stdout == ""

    # A viewer folder staff name is read as staff: /tmp holds files only root may read.
    ct_study(fort.work / "staff-study", 2, patient_id="STAFFOWN")
    fort.put_study(fort.work / "staff-study", f"/home/{STAFF}/study", STAFF)
    fort.root("printf 'root secret in tmp' > /tmp/root-secret && chmod 0600 /tmp/root-secret")
    fort.staff("touch /tmp/run_cdviewer.exe")
    result = fort.staff(f"sudo -n exchange package --to {account} --viewer /tmp /home/{STAFF}/study")
    packages = fort.root(f"ls {folder}/*.zip 2>/dev/null || true").stdout.split()
    for package in packages:
        names = fort.root(f"unzip -Z1 {package}").stdout.split()
        assert "root-secret" not in names, result.stdout + result.stderr
    assert result.returncode != 0 and "root-secret" in result.stderr and "Permission denied" in result.stderr

    # What staff can read packs as before.
    made = fort.staff(f"sudo -n exchange package --to {account} /home/{STAFF}/study")
    assert made.returncode == 0, made.stderr
    assert re.search(r"packed 2 files of 1 studies", made.stdout)


# Rule 2: root writes into folders others can change only through directory descriptors.

SWAPPER = r"""
import os, sys, time
folder, target, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
end = time.monotonic() + seconds
swapped = set()
while time.monotonic() < end:
    for name in os.listdir(folder):
        if name.endswith(".partial") and name not in swapped and not os.path.islink(os.path.join(folder, name)):
            path = os.path.join(folder, name)
            try:
                os.rename(path, os.path.expanduser("~/moved-" + name))
                os.symlink(target, path)
                checksum = path[: -len(".partial")] + ".sha256.partial"
                os.symlink(target, checksum)
                swapped.add(name)
                print("swapped", name, flush=True)
            except OSError as error:
                print("missed", name, error, flush=True)
"""


def test_swapping_the_package_being_written_changes_no_other_file(fort):
    account = fort.issue_link()
    folder = fort.download_folder(account)
    ct_study(fort.work / "big-study", 60, patient_id="RACE")  # ~30 MB: the package takes a moment
    fort.put_study(fort.work / "big-study", f"/home/{STAFF}/big-study", STAFF)
    subprocess.run([*fort.host.ssh_args(), f"cat > /home/{STAFF}/swapper.py"], input=SWAPPER, text=True, check=True)
    before = fort.target_state()
    attack = fort.staff_in_background(f"python3 swapper.py {folder} {TARGET} 20")
    time.sleep(1)
    made = fort.staff(f"sudo -n exchange package --to {account} /home/{STAFF}/big-study")
    attack.terminate()  # the package is done (or refused): nothing left to swap
    out, err = attack.communicate(timeout=60)
    assert fort.target_state() == before, f"package: {made.stdout}{made.stderr}\nattacker: {out}{err}"
    # The package itself is whole, or there is none: never a symlink, never a wrong checksum.
    listing = fort.root(f"cd {folder} && for f in *; do [ -L \"$f\" ] && echo link $f; done; sha256sum -c *.sha256",
                        check=False)  # fmt: skip
    assert "link" not in listing.stdout, listing.stdout
    if made.returncode == 0:
        assert ": OK" in listing.stdout, listing.stdout + listing.stderr


# Rule 4: locks and tool state in root-only places.


def test_a_local_user_cannot_hold_or_redirect_the_tools_locks(fort):
    before = fort.target_state()
    for lock in ("/run/lock/imaging-exchange-purge.lock", "/run/lock/imaging-exchange-accounts.lock"):
        fort.local(f"[ -e {lock} ] || ln -s {TARGET} {lock}")
    holder = fort.host.ssh(
        f"runuser -u {LOCAL} -- sh -c 'for l in /run/lock/imaging-exchange-*.lock; do "
        'flock -n "$l" sleep 40 & done; sleep 1; echo holding\'',
        check=False,
    )
    del holder
    purge = fort.root("exchange purge", check=False)
    assert "skipped" not in purge.stderr, purge.stderr
    issued = fort.root("exchange link issue --email lock@example.org --phone +31612345671", check=False, timeout=30)
    assert issued.returncode == 0, issued.stderr
    assert fort.target_state() == before


# Rule 5: the audit trail cannot be forged.


def test_a_local_user_cannot_write_into_the_audit_log(fort):
    forged = '{"event": "study-packaged", "by": "forged-by-mallory"}'
    fort.local(f"logger -t imaging-exchange -p authpriv.notice -- {shlex.quote(forged)}")
    sockets = fort.root(f"ls {paths.AUDIT_SOCKET_DIR} 2>/dev/null || true").stdout.split()
    for socket in sockets:
        fort.local(f"logger -u {paths.AUDIT_SOCKET_DIR}/{socket} -t imaging-exchange -- {shlex.quote(forged)}")
    account = fort.issue_link()  # root's own records still arrive
    time.sleep(1)
    lines = fort.audit_lines()
    assert not [line for line in lines if "forged-by-mallory" in line]
    issued = [json.loads(line) for line in lines if '"link-issued"' in line and account in line]
    assert issued and issued[-1]["writer_uid"] == 0


# Rule 6: secrets never in logs.


def test_a_link_token_never_lands_in_a_log(fort):
    out = fort.root("exchange link issue --email token@example.org --phone +31612345672").stdout
    account = issued_account(out)
    mail = fort.root(f"grep -l -F token@example.org {paths.OUTBOX_DIR}/*.eml | xargs cat").stdout
    url = re.search(re.escape(fort.host.portal_url) + r"/l/([A-Za-z0-9_-]{43})", mail)
    token = url[1]
    with httpx.Client(verify=False, timeout=30) as client:
        assert client.get(url[0]).status_code == 200
        csrf = client.cookies["exchange_csrf"]

        def wrong_password(_: int) -> int:
            return client.post(url[0], data={"csrf": csrf, "password": "wrong-Password-1"}).status_code

        # At once, past nginx's login rate: the portal refuses the first (401), nginx the rest
        # (429), and nginx logs each refusal with the address asked for.
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(wrong_password, range(16)))
        assert 429 in answers and 401 in answers, answers
        client.get(f"{fort.host.portal_url}/l/{token}/../{token}?x={token}")
    found = fort.root(f"grep -rlF {token} /var/log /run/log 2>/dev/null; journalctl --no-pager | grep -cF {token}",
                      check=False).stdout.split()  # fmt: skip
    assert found == ["0"], f"{account}'s token in: {found}"


def test_a_contact_sheet_is_written_with_the_staff_members_rights(fort):
    """`inspect --contact-sheet OUT` (run as root by sudo) creates OUT as the staff member, where
    the staff member may write, and never over a file that is there."""
    ct_study(fort.work / "sheet-study", 3, patient_id="SHEET001")
    fort.put_study(fort.work / "sheet-study", f"/home/{STAFF}/received", STAFF)
    made = fort.staff(f"sudo -n exchange inspect /home/{STAFF}/received --contact-sheet /home/{STAFF}/sheet.jpg")
    assert made.returncode == 0, made.stdout + made.stderr
    owner = fort.root(f"stat -c %U /home/{STAFF}/sheet.jpg && head -c 3 /home/{STAFF}/sheet.jpg | od -An -tx1").stdout
    assert owner.split() == [STAFF, "ff", "d8", "ff"], owner
    for out in ("/root/sheet.jpg", "/etc/sheet.jpg", f"/home/{STAFF}/sheet.jpg"):
        refused = fort.staff(f"sudo -n exchange inspect /home/{STAFF}/received --contact-sheet {out}")
        assert refused.returncode != 0, (out, refused.stdout)
    assert fort.root("ls /root/sheet.jpg /etc/sheet.jpg 2>&1 || true").stdout.count("No such file") == 2


# Rule 7: untrusted text is neutralised where it lands.


def test_hostile_names_reach_staff_escaped(fort):
    name = PARTNERS[1]
    hostile = ["evil\x1b[2K\x1b[1Aok.dcm", "two\nlines: forged.txt", "bidi\u202egpj.exe"]
    sftp = paramiko_sftp(fort.host, name, password=fort.exchange.logins[name].password)
    try:
        for entry in hostile:
            sftp.putfo(io.BytesIO(b"not dicom"), f"/upload/{entry}")
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w") as zipped:
            for entry in hostile:
                zipped.writestr(entry, b"not dicom")
        sftp.putfo(io.BytesIO(archive.getvalue()), "/upload/received.zip")
    finally:
        sftp.close()
    upload = f"/srv/exchange/partners/{name}/upload"
    fort.root(f"touch -d '-5 minutes' {upload}/*")
    inspect = fort.staff(f"sudo -n exchange inspect {upload}/received.zip")
    shown = inspect.stdout + inspect.stderr
    assert "\x1b" not in shown and "\u202e" not in shown and "two\nlines" not in shown, repr(shown)
    assert "evil\\x1b[2K\\x1b[1Aok.dcm" in shown and "bidi\\u202egpj.exe" in shown, repr(shown)
    fort.root(f"rm -f {paths.OUTBOX_DIR}/*.eml && exchange notify-uploads")
    mail = fort.root(f"cat {paths.OUTBOX_DIR}/*.eml").stdout
    assert "\x1b" not in mail and "\u202e" not in mail, repr(mail)
    assert not [line for line in mail.splitlines() if line.startswith("lines: forged")], mail
    assert "two\\nlines: forged.txt" in mail, mail


# Rule 8: nothing uploaded is lost unannounced.


def test_revoking_a_link_keeps_its_uploads_for_staff(fort):
    account = fort.issue_link()
    upload = f"/srv/exchange/links/{account}/upload"
    fort.root(f"printf report > {upload}/report.pdf && printf hidden > {upload}/.hidden-scan.dcm && "
              f"chown {account} {upload}/* {upload}/.hidden-scan.dcm && touch -d '-5 minutes' {upload}/* {upload}/.h*")  # fmt: skip
    revoked = fort.staff(f"sudo -n exchange link revoke {account}")
    assert revoked.returncode == 0, revoked.stderr
    held = f"/srv/exchange/ended-links/{account}"
    assert fort.root(f"cat {held}/report.pdf {held}/.hidden-scan.dcm", check=False).stdout == "reporthidden"
    fort.root(f"rm -f {paths.OUTBOX_DIR}/*.eml && exchange notify-uploads")
    mail = fort.root(f"grep -l -F {account} {paths.OUTBOX_DIR}/*.eml | xargs cat").stdout
    assert "report.pdf" in mail and ".hidden-scan.dcm" in mail, mail


# Rule 3: no recursion on a depth a user controls.


def test_a_deep_folder_of_a_recipient_stops_no_retention(fort):
    name = PARTNERS[0]
    sftp = paramiko_sftp(fort.host, name, password=fort.exchange.logins[name].password)
    try:
        path = "/upload"
        for _ in range(600):
            path += "/d"
            sftp.mkdir(path)
    finally:
        sftp.close()
    chroot = f"/srv/exchange/partners/{PARTNERS[1]}"
    fort.root(f"printf old > {chroot}/upload/old.dcm && chown {PARTNERS[1]} {chroot}/upload/old.dcm && "
              f"touch -d '-8 days' {chroot}/upload/old.dcm")  # fmt: skip
    purge = fort.root("exchange purge", check=False)
    assert "Traceback" not in purge.stderr and "RecursionError" not in purge.stderr, purge.stderr[-2000:]
    assert fort.root(f"test -e {chroot}/upload/old.dcm", check=False).returncode != 0, "retention stopped"
    assert purge.returncode == 1 and "/d/d/d: more than 32 folders deep" in purge.stderr, purge.stderr
    for command in ("exchange notify-uploads", "exchange link list", "exchange purge --dry-run"):
        result = fort.root(command, check=False)
        assert "Traceback" not in result.stderr, f"{command}: {result.stderr[-2000:]}"
