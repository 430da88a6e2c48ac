"""Auditors: an account per auditor (key login only), sudo for `exchange audit-read` only."""

from pyinfra.api import deploy
from pyinfra.operations import server

from exchange.policy import Policy
from roles.ops import sudo_rule
from roles.settings import HostSettings

AUDIT_READ = "/usr/local/bin/exchange audit-read"


@deploy("Auditors")
def auditor(policy: Policy, settings: HostSettings) -> None:
    group = policy.accounts.auditor_group
    server.group(name=f"Group {group}", group=group, system=True)
    for person in settings.auditors:
        server.user(
            name=f"Auditor {person.name}",
            user=person.name,
            groups=[group],
            shell="/bin/bash",
            create_home=True,
            public_keys=person.public_keys,
            delete_keys=True,
        )
    # Any arguments: `exchange audit-read` itself refuses all but its read-only reads.
    sudo_rule(
        name="Auditors' sudo rule",
        dest="/etc/sudoers.d/imaging-exchange-auditor",
        group=group,
        command=f"{AUDIT_READ} *",
    )
