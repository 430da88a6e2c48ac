"""OpenSSH: hardened crypto, key-only admins, chrooted SFTP-only exchange accounts.

The config is rendered from policies.yaml and host data, checked with `sshd -t` before it
replaces the live one, and sshd is reloaded only when it changed. Before that, the deploy
refuses a config under which the connecting admin could no longer log in.
"""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import FactBase, OperationError, deploy, operation
from pyinfra.operations import apt, files

from exchange import paths
from exchange.policy import Policy
from roles.ops import config_file, deploying_admin
from roles.settings import HostSettings
from roles.templating import render

UNUSED_HOST_KEYS = ["/etc/ssh/ssh_host_ecdsa_key", "/etc/ssh/ssh_host_dsa_key"]
# Requests an exchange account may not make (internal-sftp -P).
SFTP_DENIED_REQUESTS = ["setstat", "fsetstat", "lsetstat", "symlink", "hardlink"]


class HostKeyBits(FactBase):
    """Key type -> bits of the host keys sshd is configured with."""

    def command(self) -> str:
        public = " ".join(f"{path}.pub" for path in paths.SSH_HOST_KEYS.values())
        return f"for key in {public}; do [ -f $key ] && ssh-keygen -lf $key; done; true"

    def process(self, output: list[str]) -> dict[str, int]:
        bits = {}
        for line in output:
            fields = line.split()
            bits[fields[-1].strip("()").lower()] = int(fields[0])
        return bits


class WeakModuli(FactBase):
    """How many DH group-exchange moduli in /etc/ssh/moduli are below `min_bits`."""

    def command(self, min_bits: int) -> str:
        return f"awk '$1 !~ /^#/ && NF >= 7 && $5 < {int(min_bits)}' /etc/ssh/moduli | wc -l"

    def process(self, output: list[str]) -> int:
        return int(output[0])


class UserGroups(FactBase):
    def command(self, user: str) -> str:
        return f"id -Gn {shlex.quote(user)} 2>/dev/null || true"

    def process(self, output: list[str]) -> list[str]:
        return output[0].split() if output else []


@operation()
def host_keys(rsa_bits: int):
    """An Ed25519 key and an RSA key of exactly `rsa_bits`; no others."""
    bits = host.get_fact(HostKeyBits)
    changed = False
    if "ed25519" not in bits:
        changed = True
        yield f"rm -f {paths.SSH_HOST_KEYS['ed25519']} {paths.SSH_HOST_KEYS['ed25519']}.pub"
        yield f"ssh-keygen -q -t ed25519 -N '' -f {paths.SSH_HOST_KEYS['ed25519']}"
    if bits.get("rsa") != rsa_bits:
        changed = True
        yield f"rm -f {paths.SSH_HOST_KEYS['rsa']} {paths.SSH_HOST_KEYS['rsa']}.pub"
        yield f"ssh-keygen -q -t rsa -b {int(rsa_bits)} -N '' -f {paths.SSH_HOST_KEYS['rsa']}"
    if not changed:
        host.noop("host keys are as the policy wants")


@operation()
def strong_moduli(min_bits: int):
    if host.get_fact(WeakModuli, min_bits=min_bits) == 0:
        host.noop(f"no DH modulus below {min_bits} bits")
        return
    yield (
        f"awk '$1 ~ /^#/ || NF < 7 || $5 >= {int(min_bits)}' /etc/ssh/moduli > /etc/ssh/moduli.new"
        " && mv -f /etc/ssh/moduli.new /etc/ssh/moduli"
    )


def allow_groups(policy: Policy, settings: HostSettings) -> list[str]:
    accounts = policy.accounts
    groups = [
        *settings.ssh_admin_groups,
        accounts.staff_group,
        accounts.auditor_group,
        accounts.partner_group,
        accounts.link_group,
    ]
    if settings.admin_connects_as_root:
        groups.insert(0, "root")
    return list(dict.fromkeys(groups))


@operation()
def admin_keeps_access(admin: str, allowed: list[str]):
    """Refuse to go on if the config would lock out the admin running this deploy."""
    groups = host.get_fact(UserGroups, user=admin)
    if not set(groups) & set(allowed):
        raise OperationError(
            f"the admin {admin!r} (groups: {' '.join(groups) or 'none'}) is in none of AllowGroups "
            f"({' '.join(allowed)}); add it to one of ssh_admin_groups in the inventory, or it is locked out"
        )
    host.noop(f"admin {admin} stays allowed ({' '.join(sorted(set(groups) & set(allowed)))})")
    yield from ()  # an operation is a generator, even one that only checks


def sshd_config(policy: Policy, settings: HostSettings) -> str:
    """The whole sshd_config for this policy and host."""
    return render(
        "sshd/sshd_config.j2",
        policy=policy,
        settings=settings,
        allow_groups=allow_groups(policy, settings),
        keys_dir=paths.AUTHORIZED_KEYS_DIR,
        host_keys=paths.SSH_HOST_KEYS.values(),
        sftp_denied_requests=SFTP_DENIED_REQUESTS,
    )


@deploy("OpenSSH server")
def sshd(policy: Policy, settings: HostSettings) -> None:
    apt.packages(name="Install OpenSSH server", packages=["openssh-server"], no_recommends=True)
    host_keys(name="Host keys: Ed25519 and RSA of the policy's size", rsa_bits=policy.sshd.rsa_host_key_bits)
    for path in UNUSED_HOST_KEYS:
        files.file(name=f"Remove unused host key {path}", path=path, present=False)
        files.file(name=f"Remove unused host key {path}.pub", path=f"{path}.pub", present=False)
    strong_moduli(name="DH moduli of the policy's minimum size", min_bits=policy.sshd.moduli_min_bits)
    files.directory(
        name="Exchange accounts' public keys", path=paths.AUTHORIZED_KEYS_DIR, user="root", group="root", mode="755"
    )

    admin_keeps_access(
        name="The deploying admin keeps access", admin=deploying_admin(), allowed=allow_groups(policy, settings)
    )
    config_file(
        name="sshd_config (validated with sshd -t)",
        dest=paths.SSHD_CONFIG,
        content=sshd_config(policy, settings),
        mode="600",
        validate="sshd -t -f {path}",
        apply="systemctl reload ssh",
    )
