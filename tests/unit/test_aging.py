"""Password aging (exchange.aging): from shadow text as a host holds it to the `chage` commands
the hourly job and the deploy's roles run."""

import json
import shlex
import subprocess

import pytest
from pyinfra.context import ctx_host

from exchange import aging, paths
from exchange.accounts import password_aging_steps
from exchange.observe import shadow_entries
from exchange.policy import load_policy
from roles import REPO
from roles.ops import WITHOUT_HASHES
from roles.passwords import MembersShadow, no_aging_for_key_only
from roles.templating import render

POLICY = load_policy(REPO / "policies.yaml").policy
POLICY_CHAGE = "chage --mindays 1 --maxdays 90 --warndays 14 --inactive 30"
NO_AGING_CHAGE = "chage --mindays 0 --maxdays -1 --inactive -1"

SHADOW = """\
root:*:19000:0:99999:7:::
by-hand:$y$j9T$new:20100:0:::::
handed-out:$y$j9T$x:20090:1:90:14:30::
key-only:!:20000:0:::::
made-since:!:20100:1:90:14:30::
empty::20000:1:90:14:30::
staff-anna:!:20000:0:::::
auditor:!:20000:1:90:14:30::
"""
PARTNERS = ["by-hand", "handed-out", "key-only", "made-since", "empty", "gone"]


def audited(command: str) -> dict:
    """The audit record a command writes (audit_command: `logger ... -- 'JSON'`)."""
    words = shlex.shlex(command.split(" -- ", 1)[1], posix=True, punctuation_chars=True)
    return json.loads(next(iter(words))) | {"time": None}


def test_a_password_set_by_hand_gets_the_policys_aging_and_a_record():
    steps = password_aging_steps(POLICY, PARTNERS, shadow_entries(SHADOW.splitlines()))
    # `echo 'by-hand:...' | chpasswd` left it never expiring; a partner without a password keeps
    # none (useradd gave made-since login.defs' aging); staff and auditors are not partners.
    assert [(step.account, step.command.split(" && ")[0]) for step in steps[::2]] == [
        ("by-hand", f"{POLICY_CHAGE} by-hand"),
        ("empty", f"{NO_AGING_CHAGE} empty"),
        ("made-since", f"{NO_AGING_CHAGE} made-since"),
    ]
    assert audited(steps[1].command) == {
        "event": "password-aging-set",
        "account": "by-hand",
        "kind": "partner",
        "password_set": True,
        "by": "password-aging",
        "min_days": 1,
        "max_days": 90,
        "warn_days": 14,
        "inactive_days": 30,
        "time": None,
    }
    assert audited(steps[5].command)["max_days"] is None and audited(steps[5].command)["password_set"] is False


def test_aging_as_the_rule_wants_needs_nothing():
    converged = """\
by-hand:$y$j9T$new:20100:1:90:14:30::
handed-out:$y$j9T$x:20090:1:90:14:30::
key-only:!:20000:0:::::
made-since:!:20100:0::14:::
empty::20000:0:::::
"""
    assert password_aging_steps(POLICY, PARTNERS, shadow_entries(converged.splitlines())) == []


def test_the_rule_for_each_kind():
    policy_aging = {"min_days": 1, "max_days": 90, "warn_days": 14, "inactive_days": 30}
    assert aging.wanted("partner", password_set=True, policy=POLICY) == policy_aging
    for kind in ("partner", "staff", "auditor", "admin"):
        assert aging.wanted(kind, password_set=False) == aging.NO_AGING
    for kind in ("staff", "auditor", "admin"):  # their own password: not the exchange's to age
        assert aging.wanted(kind, password_set=True, policy=POLICY) is None
    with pytest.raises(ValueError, match="pass the policy"):
        aging.wanted("partner", password_set=True)
    assert shlex.join(aging.chage(aging.NO_AGING)) == NO_AGING_CHAGE


def test_warn_days_are_left_alone_without_aging():
    entry = shadow_entries(["key-only:!:20000:0::7:::"])["key-only"]
    assert aging.holds(entry, aging.NO_AGING)
    assert not aging.holds(None, aging.NO_AGING)  # no entry yet: set it


def test_facts_see_the_password_state_but_no_hash():
    result = subprocess.run(["sh", "-c", WITHOUT_HASHES], input=SHADOW, capture_output=True, text=True, check=True)
    assert "$y$" not in result.stdout
    raw = shadow_entries(SHADOW.splitlines())
    assert shadow_entries(result.stdout.splitlines()) == raw
    assert raw["empty"]["password_set"] is False and raw["empty"]["password_locked"] is False
    assert "hash" not in raw["by-hand"] and shadow_entries(SHADOW.splitlines(), with_hash=True)["by-hand"]["hash"]


class FakeHost:
    name = "web1"

    def __init__(self, fact):
        self.fact, self.noops = fact, []

    def get_fact(self, fact_class, **_arguments):
        assert fact_class is MembersShadow
        return self.fact

    def noop(self, text: str) -> None:
        self.noops.append(text)


def test_key_only_staff_and_admins_lose_aging_and_those_with_a_password_keep_theirs():
    members = """\
staff-anna:!:20000:1:90:14:30::
staff-bram:!:20000:0:::::
admin-kees:withheld:20000:1:90:14:30::
"""
    host = FakeHost(MembersShadow().process(members.splitlines()))
    with ctx_host.use(host):
        commands = [str(command) for command in no_aging_for_key_only._inner(groups=["exchange-staff", "sudo"])]
    assert commands == [f"{NO_AGING_CHAGE} staff-anna"] and host.noops == []
    host = FakeHost(MembersShadow().process(members.splitlines()[1:]))
    with ctx_host.use(host):
        assert list(no_aging_for_key_only._inner(groups=["exchange-staff"])) == []
    assert host.noops == ["no key-only member of exchange-staff has password aging"]


def test_the_hourly_job_ages_passwords_set_by_hand_before_the_expiry_notices():
    cron = render("retention/cron.j2", policy=POLICY, site_path=paths.SITE, exchange=paths.EXCHANGE)
    (job,) = [line for line in cron.splitlines() if line.startswith(POLICY.retention.purge_schedule)]
    commands = [command.strip() for command in job.split(" root ", 1)[1].split(";")]
    assert commands[:2] == [f"{paths.EXCHANGE} purge --quiet", f"{paths.EXCHANGE} password-aging --quiet"]
    assert job.index("password-aging") < job.index("notify-expiring")
