"""Key-login accounts: the members of one group (staff, auditors) exactly as an inventory lists them.

Each listed member is an account with a shell in the group whose only way in is its listed
keys: no usable password, no password aging, no account expiry. An account of the group that
the list does not name is locked and its sessions ended, then removed; each step is a line in
the audit log. One bulk fact for the group, one lookup per listed account: pyinfra's
server.user reads every passwd entry on each call, which grows with the partner accounts.
"""

from __future__ import annotations

import hashlib
import shlex

from pyinfra import host, logger
from pyinfra.api import FactBase, operation

from exchange import aging
from exchange.accounts import authorized_keys, close_account
from exchange.auditlog import audit_command as audit
from exchange.observe import shadow_entries
from roles.ops import WITHOUT_HASHES, deploying_admin, group_accounts
from roles.settings import HostSettings, KeyLoginMember

LOGIN_SHELL = "/bin/bash"


class KeyLoginAccount(FactBase):
    """One account's home, shell and groups, whether its password is usable (an empty one asks
    for none), its shadow aging fields and expiry day, and the SHA-256 of its authorized_keys;
    or None."""

    def command(self, user: str) -> str:
        q = shlex.quote(user)
        return (
            f'entry=$(getent passwd {q}) || exit 0; echo "$entry"; id -nG {q}; '
            f"getent shadow {q} | {WITHOUT_HASHES}; "
            # Read as the member (its home is its own: root would follow a symlink planted there).
            f'runuser -u {q} -- sh -c \'f="$HOME/.ssh/authorized_keys"; [ ! -f "$f" ] || sha256sum < "$f"\' '
            "2>/dev/null | cut -d' ' -f1"
        )

    def process(self, output: list[str]) -> dict | None:
        if not output:
            return None
        fields = output[0].split(":")
        (shadow,) = shadow_entries(output[2:3]).values()
        return {
            "home": fields[5],
            "shell": fields[6],
            "groups": output[1].split(),
            "password_usable": not shadow["password_locked"],
            "aging": {field: shadow[field] for field in aging.CHAGE_OPTIONS},
            "expire": shadow["expire"],
            "keys_sha256": output[3] if len(output) > 3 else None,
        }


class GroupAccounts(FactBase):
    """Account -> uid and groups, for every account of `group` (listed, or by primary group)."""

    def command(self, group: str) -> str:
        return (
            f"{group_accounts([group])} | while read -r u; do "
            'if uid=$(id -u "$u" 2>/dev/null); then echo "$u $uid $(id -nG "$u" | tr " " ,)"; fi; done'
        )

    @staticmethod
    def default() -> dict:
        return {}  # no output: no such group, or nobody in it

    def process(self, output: list[str]) -> dict[str, dict]:
        accounts = {}
        for line in output:
            name, uid, groups = line.split()
            accounts[name] = {"uid": int(uid), "groups": groups.split(",")}
        return accounts


@operation()
def key_login_account(user: str, group: str, kind: str, public_keys: list[str]):
    """An account with a shell, in `group`, whose only way in is the given keys."""
    seen = host.get_fact(KeyLoginAccount, user=user)
    keys = authorized_keys(tuple(key.strip() for key in public_keys))
    q = shlex.quote(user)
    commands = []
    if seen is None:
        commands.append(f"useradd --create-home --shell {LOGIN_SHELL} --groups {shlex.quote(group)} {q}")
        seen = {"home": f"/home/{user}", "shell": LOGIN_SHELL, "groups": [group], "password_usable": False}
        seen |= {"aging": {}, "expire": None, "keys_sha256": None}
    elif group not in seen["groups"]:
        commands.append(f"usermod --append --groups {shlex.quote(group)} {q}")
    if seen["shell"] != LOGIN_SHELL:
        commands.append(f"usermod --shell {LOGIN_SHELL} {q}")
    if seen["password_usable"]:
        # sshd takes only keys from these accounts, but a password still opens su and the console.
        commands.append(f"usermod --password '!' {q}")
    # Its password locked (above), nothing may age: login.defs gave a new account the partners' aging.
    want = aging.wanted(kind, password_set=False)
    if not aging.holds(seen["aging"], want):
        commands.append(shlex.join([*aging.chage(want), user]))
    if seen["expire"] is not None:
        # Locked when dropped from the list (a removal that failed) or by hand: listed, it opens.
        commands.append(f"usermod --expiredate '' {q} && {audit('account-unlocked', account=user, kind=kind)}")
    if seen["keys_sha256"] != hashlib.sha256(keys.encode()).hexdigest():
        # Written as the member, never as root: the home and its .ssh are the member's, and a
        # symlink there (to /etc/passwd, say) would have root write and chown whatever it names.
        write = (
            'umask 077 && mkdir -p "$HOME/.ssh" && cat > "$HOME/.ssh/authorized_keys.new" && '
            'mv -f "$HOME/.ssh/authorized_keys.new" "$HOME/.ssh/authorized_keys"'
        )
        commands.append(f"printf %s {shlex.quote(keys)} | runuser -u {q} -- sh -c {shlex.quote(write)}")
    if not commands:
        host.noop(f"{kind} {user} is as the inventory wants")
    yield from commands


def kept_because(name: str, seen: dict, admin: str, admin_groups: list[str]) -> str | None:
    """Why an account of the group that the list does not name is never removed, or None.

    The list says who may work as staff (or audit), not who runs the server: removing root or
    the admin running this deploy would end the deploy and lock the site out of its own server,
    and an admin of ssh_admin_groups (full sudo already) is the site's to remove, not a list's
    that forgot to name them. They stay in the group, which gives them nothing they lack."""
    if name == "root" or seen["uid"] == 0:
        return "root"
    if name == admin:
        return "the admin running this deploy"
    if admins := sorted(set(seen["groups"]) & set(admin_groups)):
        return f"an admin ({', '.join(admins)})"
    return None


@operation()
def remove_unlisted_members(group: str, kind: str, listed: list[str], admin: str, admin_groups: list[str]):
    """Lock every account of `group` that is not `listed` and end its sessions, then remove it
    with its home. Every lock comes first: a removal that fails stops the run, and must not
    leave another one open."""
    unlisted = []
    for name, seen in sorted(host.get_fact(GroupAccounts, group=group).items()):
        if name in listed:
            continue
        if reason := kept_because(name, seen, admin, admin_groups):
            logger.warning(f"{host.name}: {name} is in {group} but not listed as {kind}; kept: {reason}")
        else:
            unlisted.append(name)
    if not unlisted:
        host.noop(f"no account of {group} to remove")
    reason = f"not in the inventory's {kind} list"
    for name in unlisted:
        yield " && ".join(
            f"{{ {command}; }}"
            for command in [*close_account(name), audit("account-locked", account=name, kind=kind, reason=reason)]
        )
    for name in unlisted:
        yield f"userdel --remove {shlex.quote(name)} && {audit('account-removed', account=name, kind=kind, reason=reason)}"


def key_login_members(group: str, kind: str, members: list[KeyLoginMember], settings: HostSettings) -> None:
    """The accounts of `group` are exactly `members`: the others go before anyone is added."""
    remove_unlisted_members(
        name=f"Accounts of {group} not in the inventory: locked, then removed",
        group=group,
        kind=kind,
        listed=[member.name for member in members],
        admin=deploying_admin(),
        admin_groups=settings.ssh_admin_groups,
    )
    for member in members:
        key_login_account(
            name=f"{kind.capitalize()} {member.name}",
            user=member.name,
            group=group,
            kind=kind,
            public_keys=member.public_keys,
        )
