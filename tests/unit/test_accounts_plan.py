"""exchange.accounts.plan: what the deploy and the tools would do, from an observation."""

import json
import pwd
import shlex

import pytest

from exchange.accounts import AccountConflict, WantedAccount, plan, removal_steps
from exchange.layout import Layout
from exchange.policy import load_policy
from roles import REPO

POLICY = load_policy(REPO / "policies.yaml").policy
LAYOUT = Layout(POLICY)
TODAY = 20_000


def converged_account(name: str, kind: str = "partner", keys: str | None = None, expire=None) -> dict:
    """A partner (or link) account as the deploy leaves it, after staff handed out a password."""
    skeleton = {
        rel: {"kind": "dir", "owner": o, "group": g, "mode": m} for rel, (o, g, m) in LAYOUT.skeleton(name).items()
    }
    aging = POLICY.passwords.aging
    return {
        "uid": 1001,
        "primary_group": name,
        "exchange_groups": [LAYOUT.group(kind)],
        "home": LAYOUT.chroot(kind, name),
        "shell": "/usr/sbin/nologin",
        "shadow": {
            "password_set": True,
            "lastchg": TODAY,
            "min_days": aging.min_days,
            "max_days": aging.max_days,
            "warn_days": aging.warn_days,
            "inactive_days": aging.inactive_days,
            "expire": expire,
        },
        "paths": skeleton,
        "authorized_keys": keys,
        "log_socket": f'input(type="imuxsock" Socket="{LAYOUT.chroot(kind, name)}/dev/log" CreatePath="on" '
        f'HostName="{name}" UseSysTimeStamp="on" RateLimit.Interval="0" Annotate="on" ParseTrusted="on")\n',
    }


def observation(**accounts) -> dict:
    return {
        "today": TODAY,
        "groups": {g: {"gid": 900, "members": []} for g in ("exchange-partners", "exchange-links", "exchange-staff")},
        "dirs": {p: {"kind": "dir", "owner": o, "group": g, "mode": m} for p, (o, g, m) in LAYOUT.tree_dirs().items()},
        "accounts": {name.replace("_", "-"): value for name, value in accounts.items()},
        "stray_log_sockets": [],
    }


def commands(steps) -> str:
    return "\n".join(step.command for step in steps)


def test_a_converged_host_needs_nothing():
    observed = observation(alice=converged_account("alice"))
    assert plan(LAYOUT, [WantedAccount("alice", "partner")], observed, {"partner"}) == []


def test_a_new_partner_gets_account_chroot_aging_and_log_socket():
    steps = plan(
        LAYOUT, [WantedAccount("alice", "partner", public_keys=("ssh-ed25519 AAAA alice",))], observation(), {"partner"}
    )
    text = commands(steps)
    assert (
        "useradd --user-group --no-create-home --home-dir /srv/exchange/partners/alice --shell /usr/sbin/nologin --groups exchange-partners alice"
        in text
    )
    assert "install -d -o root -g root -m 0755 /srv/exchange/partners/alice\n" in text
    assert "install -d -o root -g exchange-staff -m 2775 /srv/exchange/partners/alice/download" in text
    assert "install -d -o alice -g exchange-staff -m 2770 /srv/exchange/partners/alice/upload" in text
    # No password yet, so nothing ages (a key-only partner would be locked out at 90 days).
    assert "chage --mindays 0 --maxdays -1 --inactive -1 alice" in text
    assert "/etc/ssh/authorized_keys/alice" in text and "systemctl restart rsyslog" in text
    assert '"event": "account-created"' in text
    assert "passwd" not in text and "chpasswd" not in text  # no password is ever set by the deploy


def test_a_password_ages_by_policy_and_an_account_without_one_does_not_age():
    key_only = converged_account("pacs")
    key_only["shadow"]["password_set"] = False  # logs in with its key; useradd gave it login.defs aging
    assert commands(plan(LAYOUT, [WantedAccount("pacs", "partner")], observation(pacs=key_only), {"partner"})) == (
        "chage --mindays 0 --maxdays -1 --inactive -1 pacs"
    )
    key_only["shadow"] |= {"min_days": 0, "max_days": None, "inactive_days": None}
    assert plan(LAYOUT, [WantedAccount("pacs", "partner")], observation(pacs=key_only), {"partner"}) == []
    with_password = converged_account("alice")
    with_password["shadow"] |= {"max_days": None, "inactive_days": None}
    assert commands(
        plan(LAYOUT, [WantedAccount("alice", "partner")], observation(alice=with_password), {"partner"})
    ) == ("chage --mindays 1 --maxdays 90 --warndays 14 --inactive 30 alice")


def test_missing_groups_and_tree_come_first():
    observed = observation()
    observed["groups"]["exchange-staff"] = None
    observed["dirs"]["/srv/exchange/partners"] = None
    steps = plan(LAYOUT, [], observed, {"partner"})
    assert [s.command for s in steps][:2][0] == "groupadd --system exchange-staff"
    assert any("install -d -o root -g exchange-staff -m 0750 /srv/exchange/partners" == s.command for s in steps)


def test_a_dropped_partner_is_locked_with_its_sessions_ended():
    observed = observation(bob=converged_account("bob"))
    text = commands(plan(LAYOUT, [], observed, {"partner"}))
    assert "usermod --expiredate 2024-10-04 bob" in text  # day 20000 since 1970
    assert "pkill -KILL -u bob" in text and '"event": "account-locked"' in text
    assert "userdel" not in text and "rm -rf" not in text  # files stay for retention


def test_a_locked_partner_stays_locked_without_new_steps():
    observed = observation(bob=converged_account("bob", expire=TODAY - 2))
    assert plan(LAYOUT, [WantedAccount("bob", "partner", active=False)], observed, {"partner"}) == []


def test_a_returning_partner_is_unlocked():
    observed = observation(bob=converged_account("bob", expire=TODAY - 2))
    assert "usermod --expiredate '' bob" in commands(
        plan(LAYOUT, [WantedAccount("bob", "partner")], observed, {"partner"})
    )


def test_link_accounts_are_not_the_deploys_to_lock():
    observed = observation(lnk=converged_account("lnk", kind="link"))
    assert plan(LAYOUT, [], observed, {"partner"}) == []


def test_an_existing_non_exchange_user_is_never_taken_over():
    seen = converged_account("postgres")
    seen["exchange_groups"] = []
    with pytest.raises(AccountConflict, match="'postgres' exists but is not in exchange-partners"):
        plan(LAYOUT, [WantedAccount("postgres", "partner")], observation(postgres=seen), {"partner"})


def test_a_symlink_in_the_skeleton_is_refused_not_followed():
    seen = converged_account("alice")
    seen["paths"]["upload"] = {"kind": "link", "owner": "alice", "group": "alice", "mode": "0777"}
    with pytest.raises(AccountConflict, match="/srv/exchange/partners/alice/upload is a link"):
        plan(LAYOUT, [WantedAccount("alice", "partner")], observation(alice=seen), {"partner"})


def test_drift_in_modes_and_aging_is_corrected():
    seen = converged_account("alice")
    seen["paths"]["download"]["mode"] = "2777"
    seen["shadow"]["max_days"] = 9999
    text = commands(plan(LAYOUT, [WantedAccount("alice", "partner")], observation(alice=seen), {"partner"}))
    assert "install -d -o root -g exchange-staff -m 2775 /srv/exchange/partners/alice/download" in text
    assert "chage --mindays 1 --maxdays 90" in text


def test_a_stray_log_socket_is_removed_unless_its_account_comes_back():
    observed = observation()
    observed["stray_log_sockets"] = ["gone", "back"]
    text = commands(plan(LAYOUT, [WantedAccount("back", "partner")], observed, {"partner"}))
    assert "rm -f /etc/imaging-exchange/log-sockets/gone.conf" in text
    assert "log-sockets/back.conf" in text and "rm -f /etc/imaging-exchange/log-sockets/back.conf" not in text


def test_steps_run_in_one_shell_and_the_failing_one_is_named(tmp_path):
    from exchange.accounts import Step, StepFailed, run_steps

    marker = tmp_path / "ran"
    steps = [
        Step("link-abc", "first", f"echo first >> {marker}"),
        Step("link-abc", "folder", "echo 'install: cannot create directory' >&2; false"),
        Step("link-abc", "never", f"echo never >> {marker}"),
    ]
    with pytest.raises(StepFailed, match="^link-abc: folder failed: install: cannot create directory$"):
        run_steps(steps)
    assert marker.read_text() == "first\n"
    run_steps(steps[:1] + steps[2:])
    assert marker.read_text() == "first\nfirst\nnever\n"


def test_a_name_taken_by_a_group_is_refused_before_any_step():
    observed = observation(zz_old=converged_account("zz-old"))
    observed["groups_without_user"] = ["users"]
    wanted = [WantedAccount("alice", "partner"), WantedAccount("users", "partner")]
    with pytest.raises(AccountConflict, match="users: a group of that name exists") as conflict:
        plan(LAYOUT, wanted, observed, {"partner"})
    # Nothing for the name in conflict; the rest still goes (the dropped partner's lock first),
    # then the deploy fails with the reason (roles/accounts.py).
    done = commands(conflict.value.steps)
    assert "users" not in done and "useradd" in done and "alice" in done
    assert conflict.value.steps[0].account == "zz-old" and "usermod --expiredate" in conflict.value.steps[0].command


def test_locks_come_before_other_accounts_and_before_the_accounts_own_repairs():
    dropped = converged_account("zz-old")
    dropped["shadow"]["max_days"], dropped["log_socket"], dropped["shell"] = None, None, "/bin/sh"  # drifted
    steps = plan(LAYOUT, [WantedAccount("alice", "partner")], observation(zz_old=dropped), {"partner"})
    assert [step.summary for step in steps if step.account == "zz-old"][0] == "lock and end sessions"
    assert steps[0].account == "zz-old" and "usermod --expiredate" in steps[0].command


def test_an_account_removal_puts_its_uid_on_record():
    """The access trail weighs the SFTP lines of an account removed before they were read by it."""
    (record,) = [
        step.command for step in removal_steps(LAYOUT, "daemon", "partner") if "account-removed" in step.command
    ]
    line = record.split(" -- ", 1)[1].split("; ")[0]
    assert json.loads(shlex.split(line)[0])["uid"] == pwd.getpwnam("daemon").pw_uid
