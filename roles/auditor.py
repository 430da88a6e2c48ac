"""Auditors: an account per auditor (key login only), sudo for `exchange audit-read` only."""

from __future__ import annotations

import hashlib
import shlex

from pyinfra import host
from pyinfra.api import FactBase, deploy, operation
from pyinfra.operations import server

from exchange.accounts import NO_AGING, NO_AGING_IN_SHADOW, authorized_keys
from exchange.policy import Policy
from roles.ops import sudo_rule
from roles.settings import HostSettings

AUDIT_READ = "/usr/local/bin/exchange audit-read"


class KeyLoginAccount(FactBase):
    """passwd entry, groups, shadow aging (min:max:warn:inactive) and the SHA-256 of
    authorized_keys of one account, or None.

    One account, one lookup: pyinfra's server.user reads every passwd entry on each call,
    which grows with the number of partner accounts on the host."""

    def command(self, user: str) -> str:
        q = shlex.quote(user)
        return (
            f'entry=$(getent passwd {q}) || exit 0; echo "$entry"; id -nG {q}; '
            f"getent shadow {q} | cut -d: -f4-7; "
            'keys="$(echo "$entry" | cut -d: -f6)/.ssh/authorized_keys"; '
            'if [ -f "$keys" ]; then sha256sum < "$keys" | cut -d" " -f1; fi'
        )

    def process(self, output: list[str]) -> dict | None:
        if not output:
            return None
        fields = output[0].split(":")
        return {
            "home": fields[5],
            "shell": fields[6],
            "groups": output[1].split(),
            "aging": output[2],
            "keys_sha256": output[3] if len(output) > 3 else None,
        }


@operation()
def key_login_account(user: str, group: str, public_keys: list[str]):
    """An account with a shell, in `group`, whose only way in is the given keys."""
    seen = host.get_fact(KeyLoginAccount, user=user)
    keys = authorized_keys(tuple(key.strip() for key in public_keys))
    q = shlex.quote(user)
    changed = False
    if seen is None:
        changed = True
        yield f"useradd --create-home --shell /bin/bash --groups {shlex.quote(group)} {q}"
        seen = {"home": f"/home/{user}", "shell": "/bin/bash", "groups": [group], "aging": "", "keys_sha256": None}
    elif group not in seen["groups"]:
        changed = True
        yield f"usermod --append --groups {shlex.quote(group)} {q}"
    min_days, max_days, _warn, inactive = (seen["aging"].split(":") + ["", "", "", ""])[:4]
    if f"{min_days}:{max_days}:{inactive}" != NO_AGING_IN_SHADOW:
        # login.defs gives new accounts the partners' 90-day aging; a key-only account without a
        # password could never renew it, and PAM's account check would lock it out (sshd UsePAM).
        changed = True
        yield shlex.join([*NO_AGING, user])
    if seen["keys_sha256"] != hashlib.sha256(keys.encode()).hexdigest():
        changed = True
        ssh_dir = shlex.quote(f"{seen['home']}/.ssh")
        target = shlex.quote(f"{seen['home']}/.ssh/authorized_keys")
        yield (
            f"install -d -o {q} -g {q} -m 0700 {ssh_dir} && printf %s {shlex.quote(keys)} > {target} "
            f"&& chown {q}:{q} {target} && chmod 0600 {target}"
        )
    if not changed:
        host.noop(f"auditor {user} is as the inventory wants")


@deploy("Auditors")
def auditor(policy: Policy, settings: HostSettings) -> None:
    group = policy.accounts.auditor_group
    server.group(name=f"Group {group}", group=group, system=True)
    for person in settings.auditors:
        key_login_account(name=f"Auditor {person.name}", user=person.name, group=group, public_keys=person.public_keys)
    # Any arguments: `exchange audit-read` itself refuses all but its read-only reads.
    sudo_rule(
        name="Auditors' sudo rule",
        dest="/etc/sudoers.d/imaging-exchange-auditor",
        group=group,
        command=f"{AUDIT_READ} *",
    )
