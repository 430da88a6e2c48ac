"""`exchange audit-read` refuses every argument it does not know to be a read-only one."""

import grp
import pwd
from pathlib import Path

import pytest

from exchange import auditread, paths
from exchange.auditread import AuditReadError, command
from exchange.links import LinkStore
from exchange.policy import load_policy
from roles import REPO

POLICY = load_policy(REPO / "policies.yaml").policy


def test_the_reads_are_the_systems_own_tools():
    assert command(POLICY, "sshd", None) == ["/usr/sbin/sshd", "-T"]
    assert command(POLICY, "old-files", "30") == [
        "/usr/bin/find",
        "/srv/exchange",
        "-xdev",
        "!",
        "-type",
        "d",
        "-mmin",
        f"+{30 * 24 * 60}",  # the audited policy's days, whatever the installed one says
    ]
    assert command(POLICY, "stat", "/srv/exchange/partners/alice/upload")[-1] == "/srv/exchange/partners/alice/upload"
    assert command(POLICY, "stat", "/")[-1] == "/"
    assert (
        command(POLICY, "stat", "/var/lib/imaging-exchange/link-tokens")[-1] == "/var/lib/imaging-exchange/link-tokens"
    )
    assert command(POLICY, "nginx", None) == ["/usr/sbin/nginx", "-q", "-T"]
    assert command(POLICY, "token-files", None)[:2] == ["/usr/bin/find", "/var/lib/imaging-exchange/link-tokens"]
    assert command(POLICY, "fail2ban", "sshd") == ["/usr/bin/fail2ban-client", "status", "sshd"]
    assert command(POLICY, "trail-files", None)[:4] == ["/usr/bin/find", paths.TRAIL_DIR, "-maxdepth", "1"]
    assert command(POLICY, "trail-attributes", None) == ["/usr/bin/lsattr", paths.TRAIL_DIR]
    assert command(POLICY, "trail-verify", None) == ["/usr/local/bin/exchange", "trail", "verify"]
    assert command(POLICY, "fail2ban", "imaging-exchange-portal:ignoreip") == [
        "/usr/bin/fail2ban-client",
        "get",
        "imaging-exchange-portal",
        "ignoreip",
    ]


def test_the_token_folder_is_the_link_tools():
    assert Path(paths.LINK_TOKENS_DIR) == LinkStore().tokens
    assert paths.STATE_DIR == "/var/lib/imaging-exchange"


@pytest.fixture
def accounts(monkeypatch):
    """A host whose groups hold: staff jdoe (primary group), auditor ann, partner alice."""
    groups = {
        "exchange-staff": grp.struct_group(("exchange-staff", "x", 990, [])),
        "exchange-auditors": grp.struct_group(("exchange-auditors", "x", 991, ["ann"])),
        "exchange-partners": grp.struct_group(("exchange-partners", "x", 992, ["alice"])),
    }
    users = {
        name: pwd.struct_passwd((name, "x", 1000 + n, gid, "", f"/home/{name}", "/bin/sh"))
        for n, (name, gid) in enumerate([("jdoe", 990), ("ann", 1001), ("alice", 1002), ("root", 0)])
    }
    monkeypatch.setattr(grp, "getgrnam", lambda name: groups[name])
    monkeypatch.setattr(pwd, "getpwnam", lambda name: users[name])


@pytest.mark.parametrize("account", ["jdoe", "ann", "alice"])
def test_sudo_rights_and_password_status_of_the_exchange_groups_accounts(accounts, account):
    assert command(POLICY, "sudo-rights", account) == ["/usr/bin/sudo", "-n", "-l", "-U", account]
    assert command(POLICY, "password-status", account) == ["/usr/bin/passwd", "-S", account]


@pytest.mark.parametrize(
    "account, words",
    [
        ("root", "'root' is in none of the groups"),
        ("nobody-known", "is in none of the groups"),
        ("alice -l", "is not an account name"),
        ("", "is not an account name"),
    ],
)
def test_sudo_rights_and_password_status_of_no_one_else(accounts, account, words):
    for what in ("sudo-rights", "password-status"):
        with pytest.raises(AuditReadError, match=words):
            command(POLICY, what, account)


@pytest.mark.parametrize(
    "what, argument, words",
    [
        ("sshd", "root", "'root' is not an exchange account"),
        ("sshd", "x,host=evil -f /etc/shadow", "is not an account name"),
        ("chage", "", "is not an account name"),
        ("stat", "/etc/shadow", "is outside /srv/exchange"),
        ("stat", "/srv/exchange/../../etc/shadow", "not a normalised absolute path"),
        ("stat", "srv/exchange", "not a normalised absolute path"),
        ("stat", "/var/lib/imaging-exchange/links", "is outside /srv/exchange"),
        ("stat", "/var/lib/imaging-exchange/link-tokens/../links", "not a normalised absolute path"),
        ("nginx", "-c /tmp/evil.conf", "nginx takes no argument"),
        ("token-files", "/etc", "token-files takes no argument"),
        ("trail-files", "/etc", "trail-files takes no argument"),
        ("trail-attributes", "/etc", "trail-attributes takes no argument"),
        ("trail-verify", "--help", "trail-verify takes no argument"),
        ("sudoers", None, "unknown read 'sudoers'"),
        ("shell", None, "unknown read 'shell'"),
        ("old-files", None, "not a number of days"),
        ("old-files", "-1 -delete", "not a number of days"),
        ("fail2ban", None, "'' is not one of the exchange's jails"),
        ("fail2ban", "recidive", "'recidive' is not one of the exchange's jails"),
        ("fail2ban", "sshd:banip", "'banip' is not one of"),  # a setting, not a change
        ("fail2ban", "sshd:maxretry:5", "'maxretry:5' is not one of"),
        ("fail2ban", "sshd unban --all", "is not one of the exchange's jails"),
    ],
)
def test_anything_else_is_refused(what, argument, words):
    with pytest.raises(AuditReadError, match=words):
        command(POLICY, what, argument)


def test_a_path_through_a_symlink_is_refused(tmp_path):
    # Staff may put a symlink in a download folder: root's stat must not follow it to /root.
    root = tmp_path / "srv"
    (root / "partners" / "acme" / "download").mkdir(parents=True)
    (root / "partners" / "acme" / "download" / "r").symlink_to("/root")
    policy = POLICY.model_copy(update={"accounts": POLICY.accounts.model_copy(update={"root": str(root)})})
    assert command(policy, "stat", f"{root}/partners/acme/download")[-1] == f"{root}/partners/acme/download"
    with pytest.raises(AuditReadError, match="passes through a symlink"):
        command(policy, "stat", f"{root}/partners/acme/download/r/.bashrc")


def test_staff_may_sudo_exchange_but_not_its_auditors_reads(monkeypatch):
    groups = {POLICY.accounts.staff_group: ["staff-anna"], POLICY.accounts.auditor_group: ["audit-bo"]}
    monkeypatch.setattr(auditread, "_member", lambda name, group: name in groups.get(group, []))
    assert "for auditors" in auditread.refused_for(POLICY, "staff-anna")
    assert auditread.refused_for(POLICY, "audit-bo") is None
    assert auditread.refused_for(POLICY, "deploy-admin") is None  # an admin with full sudo reads anything anyway


def test_stat_takes_several_paths_and_refuses_all_for_one_bad():
    """One sudo and one start for every folder of every chroot; each path checked as alone."""
    assert command(POLICY, "stat", "/", "/srv/exchange", "/srv/exchange/partners")[-4:] == [
        "--",
        "/",
        "/srv/exchange",
        "/srv/exchange/partners",
    ]
    with pytest.raises(AuditReadError, match="is outside /srv/exchange"):
        command(POLICY, "stat", "/srv/exchange", "/etc/shadow")
    with pytest.raises(AuditReadError, match="sshd takes one argument at most"):
        command(POLICY, "sshd", "root", "bob")


def test_several_accounts_are_all_checked_before_any_read_runs():
    with pytest.raises(AuditReadError, match="'root' is not an exchange account"):
        auditread.run(POLICY, "sshd", "root", "nobody-here")
    assert "sshd" in auditread.EACH_ACCOUNT and "stat" not in auditread.EACH_ACCOUNT
