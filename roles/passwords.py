"""Password rules: quality (pam_pwquality), history (pam_pwhistory), lockout (pam_faillock)
and aging (login.defs, useradd defaults), all from policies.yaml passwords.

PAM stacks are changed only through pam-auth-update profiles, never by hand-editing
/etc/pam.d: hand-inserted lines shift the [success=N] jumps of the lines around them.
"""

from __future__ import annotations

import re
import shlex

from pyinfra import host
from pyinfra.api import FactBase, deploy, operation
from pyinfra.facts.files import FileContents
from pyinfra.operations import apt, files

from exchange import aging, paths
from exchange.observe import shadow_entries
from exchange.policy import Policy
from roles.ops import WITHOUT_HASHES, config_file, group_accounts
from roles.templating import render

PROFILES = {
    "imaging-exchange-faillock": "passwords/pam-faillock.j2",
    "imaging-exchange-faillock-notify": "passwords/pam-faillock-notify.j2",
    "imaging-exchange-pwhistory": "passwords/pam-pwhistory.j2",
}
STACKS = {
    "Auth": "/etc/pam.d/common-auth",
    "Account": "/etc/pam.d/common-account",
    "Password": "/etc/pam.d/common-password",
}


def _module_part(line: str) -> str | None:
    """`pam_x.so args` of a PAM line, whitespace folded; controls like [success=2 ...] vary."""
    found = re.search(r"\S+\.so\b.*$", line)
    return " ".join(found.group(0).split()) if found else None


def profile_lines(profile: str) -> dict[str, list[str]]:
    """Stack file -> the `module args` lines a pam-auth-update profile puts there."""
    wanted: dict[str, list[str]] = {}
    section = None
    for line in profile.splitlines():
        header = re.match(r"^(Auth|Account|Password):\s*$", line)
        if header:
            section = header.group(1)
        elif line.startswith("\t") and section:
            wanted.setdefault(STACKS[section], []).append(_module_part(line))
        elif line and not line.startswith("\t"):
            section = None
    return wanted


@operation()
def enable_pam_profiles(profiles: dict[str, str]):
    """Run pam-auth-update when a stack lacks a line of one of our profiles."""
    missing = []
    for text in profiles.values():
        for stack, lines in profile_lines(text).items():
            contents = host.get_fact(FileContents, path=stack) or []
            have = {_module_part(line) for line in contents if not line.lstrip().startswith("#")}
            missing += [f"{stack}: {line}" for line in lines if line not in have]
    if not missing:
        host.noop("PAM stacks hold every profile line")
        return
    # pam-auth-update leaves stacks edited by hand alone and still exits 0: fail instead, or
    # the lockout and the password rules would silently not apply.
    yield (
        f'out=$(pam-auth-update --package --enable {" ".join(profiles)} 2>&1); rc=$?; echo "$out"; '
        'case "$out" in *"Local modifications"*) echo "/etc/pam.d/common-* were changed by hand, so '
        "pam-auth-update did not apply the exchange profiles; review them, then run pam-auth-update "
        '--force" >&2; exit 1;; esac; exit $rc'
    )


class MembersShadow(FactBase):
    """The shadow entries (exchange.observe.shadow_entries, hashes withheld) of the members of
    `groups`, listed or by primary group."""

    def command(self, groups: list[str]) -> str:
        return f'{group_accounts(groups)} | while read -r u; do getent shadow "$u"; done | {WITHOUT_HASHES}'

    @staticmethod
    def default() -> dict[str, dict]:
        return {}  # no output: no such member

    def process(self, output: list[str]) -> dict[str, dict]:
        return shadow_entries(output)


@operation()
def no_aging_for_key_only(groups: list[str]):
    """login.defs gives every new account the partners' aging (CIS); staff and admins log in with
    keys, and those without a password keep none (exchange.aging)."""
    changes = []
    for user, entry in sorted(host.get_fact(MembersShadow, groups=groups).items()):
        want = aging.wanted("admin", entry["password_set"])
        if want is not None and not aging.holds(entry, want):
            changes.append(user)
            yield shlex.join([*aging.chage(want), user])
    if not changes:
        host.noop("no key-only member of " + ", ".join(groups) + " has password aging")


@deploy("Password rules")
def passwords(policy: Policy, key_login_groups: list[str]) -> None:
    # cracklib-runtime holds the dictionary dictcheck needs: without it every password is refused.
    apt.packages(
        name="Install pam_pwquality and its dictionary",
        packages=["libpam-pwquality", "libpam-modules", "cracklib-runtime", "libpwquality-tools"],
        no_recommends=True,
    )
    config_file(
        name="Password quality",
        dest="/etc/security/pwquality.conf.d/50-imaging-exchange.conf",
        content=render("passwords/pwquality.conf.j2", policy=policy),
    )
    files.directory(name="Lockout tally directory", path=paths.FAILLOCK_DIR, user="root", group="root", mode="700")
    config_file(
        name="Lockout",
        dest="/etc/security/faillock.conf",
        content=render("passwords/faillock.conf.j2", policy=policy, faillock_dir=paths.FAILLOCK_DIR),
    )
    profiles = {name: render(template, policy=policy) for name, template in PROFILES.items()}
    for name, text in profiles.items():
        config_file(name=f"PAM profile {name}", dest=f"/usr/share/pam-configs/{name}", content=text)
    enable_pam_profiles(name="Enable the PAM profiles", profiles=profiles)

    policy_aging = policy.passwords.aging
    for key, value in (
        ("PASS_MAX_DAYS", policy_aging.max_days),
        ("PASS_MIN_DAYS", policy_aging.min_days),
        ("PASS_WARN_AGE", policy_aging.warn_days),
    ):
        files.line(
            name=f"login.defs {key}", path="/etc/login.defs", line=rf"^{key}[[:space:]].*$", replace=f"{key}\t{value}"
        )
    files.line(
        name="New accounts go inactive after an expired password",
        path="/etc/default/useradd",
        line=r"^INACTIVE=.*$",
        replace=f"INACTIVE={policy_aging.inactive_days}",
    )
    no_aging_for_key_only(name="Key-only staff and admins keep no password aging", groups=key_login_groups)
