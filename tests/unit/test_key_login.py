"""roles.key_login: from fake facts to the commands its operations yield, as pyinfra's own
operation tests do (the operation's `_inner` generator, with a host that answers facts)."""

import hashlib
import json
import logging
import shlex
import subprocess

import pytest

from exchange.accounts import authorized_keys
from roles.key_login import GroupAccounts, KeyLoginAccount, key_login_account, remove_unlisted_members
from tests.unit.fakehost import run

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKoy anna@ws"
KEYS_SHA256 = hashlib.sha256(authorized_keys((KEY,)).encode()).hexdigest()
POLICY_AGING = {"min_days": 1, "max_days": 90, "warn_days": 14, "inactive_days": 30}  # what login.defs gives


def account(**changes) -> dict:
    """A staff account as key_login_account leaves it."""
    return {
        "home": "/home/staff-anna",
        "shell": "/bin/bash",
        "groups": ["staff-anna", "exchange-staff"],
        "password_usable": False,
        "aging": {"min_days": 0, "max_days": None, "warn_days": None, "inactive_days": None},
        "expire": None,
        "keys_sha256": KEYS_SHA256,
    } | changes


def audited(command: str) -> dict:
    """The audit record a command writes (audit_command: `logger ... -- 'JSON'`)."""
    words = shlex.shlex(command.split(" -- ", 1)[1], posix=True, punctuation_chars=True)
    return json.loads(next(iter(words)))


def staff_account(fact):
    return run(
        key_login_account,
        KeyLoginAccount,
        fact,
        user="staff-anna",
        group="exchange-staff",
        kind="staff",
        public_keys=[KEY],
    )


def test_a_new_member_gets_an_account_without_password_or_aging_and_exactly_its_keys():
    commands, noops = staff_account(None)
    assert commands[:2] == [
        "useradd --create-home --shell /bin/bash --groups exchange-staff staff-anna",
        "chage --mindays 0 --maxdays -1 --inactive -1 staff-anna",
    ]
    # As the member: a symlink planted in its own home leads nowhere root could reach.
    assert commands[2].startswith(f"printf %s {shlex.quote(KEY + chr(10))} | runuser -u staff-anna -- sh -c ")
    assert "umask 077" in commands[2] and 'mv -f "$HOME/.ssh/authorized_keys.new"' in commands[2]
    assert len(commands) == 3 and noops == []


def test_a_member_as_listed_needs_nothing():
    assert staff_account(account()) == ([], ["staff staff-anna is as the inventory wants"])


def test_an_account_made_by_hand_is_taken_over_and_opens_by_its_keys_only():
    drifted = account(
        groups=["staff-anna"], shell="/usr/sbin/nologin", password_usable=True, aging=POLICY_AGING, expire=1
    )
    commands, _ = staff_account(drifted | {"keys_sha256": "0" * 64})
    assert commands[:4] == [
        "usermod --append --groups exchange-staff staff-anna",
        "usermod --shell /bin/bash staff-anna",
        "usermod --password '!' staff-anna",
        "chage --mindays 0 --maxdays -1 --inactive -1 staff-anna",
    ]
    assert commands[4].startswith("usermod --expiredate '' staff-anna && ")
    assert audited(commands[4]) | {"time": None} == {
        "event": "account-unlocked",
        "account": "staff-anna",
        "kind": "staff",
        "time": None,
    }
    assert "runuser -u staff-anna -- " in commands[5] and len(commands) == 6


def members(**accounts) -> dict:
    return {
        name.replace("_", "-"): {"uid": 1000, "groups": ["exchange-staff"]} | value for name, value in accounts.items()
    }


def unlisted(fact, listed=("staff-anna",)):
    return run(
        remove_unlisted_members,
        GroupAccounts,
        fact,
        group="exchange-staff",
        kind="staff",
        listed=list(listed),
        admin="deploy-admin",
        admin_groups=["sudo"],
    )


def test_unlisted_members_are_all_locked_before_any_is_removed():
    commands, noops = unlisted(members(staff_anna={}, staff_bram={}, staff_cees={}))
    assert [command.split(" && ")[0] for command in commands] == [
        "{ usermod --lock --expiredate 1 staff-bram; }",
        "{ usermod --lock --expiredate 1 staff-cees; }",
        "userdel --remove staff-bram",
        "userdel --remove staff-cees",
    ]
    assert "{ pkill -KILL -u staff-bram; for i in" in commands[0]
    assert audited(commands[0]) | {"time": None} == {
        "event": "account-locked",
        "account": "staff-bram",
        "kind": "staff",
        "reason": "not in the inventory's staff list",
        "time": None,
    }
    assert audited(commands[2])["event"] == "account-removed" and audited(commands[2])["account"] == "staff-bram"
    assert noops == []


def test_root_the_deploying_admin_and_admins_are_never_removed(caplog):
    fact = members(
        root={"uid": 0}, toor={"uid": 0}, deploy_admin={}, kees={"groups": ["exchange-staff", "sudo"]}, staff_anna={}
    )
    with caplog.at_level(logging.WARNING):
        assert unlisted(fact) == ([], ["no account of exchange-staff to remove"])
    kept = "\n".join(record.getMessage() for record in caplog.records)
    assert "deploy-admin is in exchange-staff but not listed as staff; kept: the admin running this deploy" in kept
    assert "kees is in exchange-staff but not listed as staff; kept: an admin (sudo)" in kept
    assert "root is in" in kept and "toor is in" in kept


def test_an_empty_or_missing_group_needs_nothing():
    assert unlisted({}, listed=()) == ([], ["no account of exchange-staff to remove"])


def test_the_facts_read_what_the_host_prints():
    entry = "staff-anna:x:1001:1001::/home/staff-anna:/bin/bash"
    assert (
        KeyLoginAccount().process([entry, "staff-anna exchange-staff", "staff-anna:!:19000:0:::::", KEYS_SHA256])
        == account()
    )
    assert (
        KeyLoginAccount().process([entry, "staff-anna", "staff-anna:withheld:19000:1:90:14:30:1:"])["keys_sha256"]
        is None
    )
    assert GroupAccounts().process(["root 0 root,exchange-staff", "staff-anna 1001 staff-anna,exchange-staff"]) == {
        "root": {"uid": 0, "groups": ["root", "exchange-staff"]},
        "staff-anna": {"uid": 1001, "groups": ["staff-anna", "exchange-staff"]},
    }


@pytest.mark.parametrize("group", ["root", "no-such-group"])
def test_the_group_fact_runs_in_a_posix_shell(group):
    """Listed members and those by primary group (root's primary group is root)."""
    result = subprocess.run(["sh", "-c", GroupAccounts().command(group)], capture_output=True, text=True, check=True)
    found = GroupAccounts().process(result.stdout.splitlines()) if result.stdout else GroupAccounts.default()
    assert (found.get("root", {}).get("uid") == 0) is (group == "root")
