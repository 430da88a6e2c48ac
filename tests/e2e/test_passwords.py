"""Password rules, enforced by PAM through sshd: quality, history, lockout and aging."""

import time

import paramiko
import pytest

from exchange import paths
from tests.e2e.clients import paramiko_sftp
from tests.e2e.conftest import PARTNERS, audit_events

pytestmark = pytest.mark.e2e


def shadow_hash(exchange, name: str) -> str:
    return exchange.host.ssh(f"getent shadow {name} | cut -d: -f2").stdout.strip()


def login_works(exchange, name: str, password: str) -> bool:
    try:
        paramiko_sftp(exchange.host, name, password=password).close()
        return True
    except paramiko.AuthenticationException:
        return False


@pytest.fixture
def partner(exchange):
    """A partner with a known password and a clean lockout tally; restored afterwards."""
    name = PARTNERS[1]
    login = exchange.logins[name]
    exchange.set_password(name, login.password)
    yield name, login.password
    exchange.host.ssh(f"faillock --dir {paths.FAILLOCK_DIR} --user {name} --reset")
    exchange.set_password(name, login.password)
    exchange.host.ssh(f"chage --lastday $(( $(date +%s) / 86400 )) {name}")


def test_aging_is_applied_to_every_partner(exchange):
    for name in PARTNERS:
        fields = exchange.host.ssh(f"getent shadow {name}").stdout.strip().split(":")
        assert fields[3:7] == ["1", "90", "14", "30"], f"{name}: min/max/warn/inactive are {fields[3:7]}"
    defs = exchange.host.ssh("grep -E '^PASS_(MAX_DAYS|MIN_DAYS|WARN_AGE)' /etc/login.defs").stdout.split()
    assert defs == ["PASS_MAX_DAYS", "90", "PASS_MIN_DAYS", "1", "PASS_WARN_AGE", "14"]


def test_new_partner_accounts_have_no_usable_password_and_no_aging(exchange):
    # As the deploy left them, before the tests set passwords: "!" matches no password.
    assert exchange.initial_password_fields == {name: "!" for name in PARTNERS}
    # Nothing to renew, so nothing ages (useradd gave them login.defs' 90 days; the deploy removed it).
    assert exchange.initial_aging == {name: "0::" for name in PARTNERS}
    created = exchange.host.ssh(f"zcat -f {paths.AUDIT_LOG}* | grep account-created").stdout
    assert all(f'"account": "{name}"' in created for name in PARTNERS)


def test_a_partner_without_a_password_keeps_its_key_login_however_long(exchange):
    """A key-only partner (a PACS) with the partners' aging would be locked out by PAM after
    max_days: its key login cannot renew a password. Without aging it keeps working."""
    name = PARTNERS[0]
    key = exchange.logins[name].key
    long_ago = "$(( $(date +%s) / 86400 - 200 ))"
    try:
        exchange.host.ssh(
            f"usermod -p '!' {name} && chage --mindays 0 --maxdays -1 --inactive -1 --lastday {long_ago} {name}"
        )
        paramiko_sftp(exchange.host, name, key=key).close()
        # What the deploy used to leave: the same account with aging is refused.
        exchange.host.ssh(f"chage --maxdays 90 --inactive 30 {name}")
        with pytest.raises((paramiko.SSHException, EOFError)):
            paramiko_sftp(exchange.host, name, key=key).close()
    finally:
        exchange.set_password(name, exchange.logins[name].password)


def password_status(exchange, name: str) -> tuple[str, list[str]]:
    """`passwd -S`: P (usable password) or L (locked), and min, max, warn and inactive days."""
    fields = exchange.host.ssh(f"passwd -S {name}").stdout.split()
    return fields[1], fields[3:7]


def test_a_password_set_by_hand_ages_by_the_policy_from_the_next_hourly_run(exchange):
    """As a new admin would: `chpasswd` leaves the partner's password never expiring (it keeps
    the no-aging of a partner without a password); the hourly job gives it the policy's."""
    name = PARTNERS[0]
    host = exchange.host
    (job,) = host.ssh(f"grep -o '{paths.EXCHANGE} password-aging[^;]*' {paths.PURGE_CRON}").stdout.splitlines()

    def records() -> list[dict]:
        return [e for e in audit_events(host, "password-aging-set") if e["account"] == name]

    try:
        # As the deploy leaves a new partner: no password, no aging; the job leaves it so.
        host.ssh(f"usermod -p '!' {name} && chage --mindays 0 --maxdays -1 --inactive -1 {name}")
        before = records()
        host.ssh(job)
        assert password_status(exchange, name) == ("L", ["0", "-1", "14", "-1"])
        host.ssh(f"echo '{name}:Harbour-Quartz-Violet-63' | chpasswd")
        assert password_status(exchange, name) == ("P", ["0", "-1", "14", "-1"])

        host.ssh(job)
        assert password_status(exchange, name) == ("P", ["1", "90", "14", "30"])
        limits = host.ssh(f"LC_ALL=C chage -l {name}").stdout
        assert "Maximum number of days between password change\t\t: 90" in limits, limits
        time.sleep(1)  # rsyslog writes the record
        (record,) = records()[len(before) :]
        assert {key: record[key] for key in ("kind", "password_set", "by")} == {
            "kind": "partner",
            "password_set": True,
            "by": "password-aging",
        }
        assert [record[key] for key in ("min_days", "max_days", "warn_days", "inactive_days")] == [1, 90, 14, 30]

        # Converged: a second run changes nothing and writes nothing.
        shadow = host.ssh(f"getent shadow {name}").stdout
        assert host.ssh(job.replace(" --quiet", "")).stdout == ""
        time.sleep(1)
        assert host.ssh(f"getent shadow {name}").stdout == shadow and len(records()) == len(before) + 1
        # Staff and auditors log in with keys: still no password and no aging.
        for member in (host.staff_user, "auditor"):
            status, days = password_status(exchange, member)
            assert (status, days[0], days[1], days[3]) == ("L", "0", "-1", "-1"), member
    finally:
        exchange.set_password(name, exchange.logins[name].password)


@pytest.mark.parametrize(
    "weak, reason",
    [
        ("Sh0rt-pass!", "shorter than 14 characters"),
        ("lowercaseonlyletterspass", "less than 3 character classes"),
        ("Xq7-vvvvvv-Lk2-Wm9", "more than 3 same characters consecutively"),
        ("Xq7-abcdefg-Lk2-Wm9", "monotonic sequence longer than 3 characters"),
        ("Characterization7", "based on a dictionary word"),
    ],
    ids=["too-short", "one-class", "repeats", "sequence", "dictionary"],
)
def test_expired_password_must_change_and_weak_ones_are_refused(exchange, partner, weak, reason):
    name, password = partner
    exchange.host.ssh(f"chage --lastday 0 {name}")
    before = shadow_hash(exchange, name)
    messages: list[str] = []
    with pytest.raises(paramiko.AuthenticationException):
        paramiko_sftp(exchange.host, name, password=password, new_password=weak, messages=messages)
    assert shadow_hash(exchange, name) == before, "PAM accepted a weak password"
    assert any(reason in message for message in messages), messages


def test_expired_password_is_changed_during_sftp_login(exchange, partner):
    name, password = partner
    exchange.host.ssh(f"chage --lastday 0 {name}")
    new = "Lantern-Orchid-Basalt-71"
    sftp = paramiko_sftp(exchange.host, name, password=password, new_password=new)
    assert sorted(sftp.listdir("/")) == ["dev", "download", "upload"]
    sftp.close()
    assert login_works(exchange, name, new)
    assert not login_works(exchange, name, password)
    # The old password is remembered: changing back to it is refused.
    exchange.host.ssh(f"chage --lastday 0 {name}")
    with pytest.raises(paramiko.AuthenticationException):
        paramiko_sftp(exchange.host, name, password=new, new_password=password)


def test_lockout_after_repeated_failures(exchange, partner):
    name, password = partner
    for _ in range(5):
        assert not login_works(exchange, name, "Wrong-Password-123456")
    assert not login_works(exchange, name, password), "the right password worked during the lockout"
    tally = exchange.host.ssh(f"faillock --dir {paths.FAILLOCK_DIR} --user {name}").stdout
    assert sum(1 for line in tally.splitlines() if line.rstrip().endswith(" V")) >= 5, tally
    # The tally is on disk, so it survives a reboot.
    assert exchange.host.ssh(f"test -s {paths.FAILLOCK_DIR}/{name}", check=False).returncode == 0
    exchange.host.ssh(f"faillock --dir {paths.FAILLOCK_DIR} --user {name} --reset")
    assert login_works(exchange, name, password)


def test_admins_and_staff_cannot_use_passwords(exchange):
    sock = paramiko.Transport((exchange.host.hostname, exchange.host.port))
    sock.start_client(timeout=15)
    try:
        with pytest.raises(paramiko.BadAuthenticationType) as refused:
            sock.auth_password("root", "anything")
        assert refused.value.allowed_types == ["publickey"]
    finally:
        sock.close()
