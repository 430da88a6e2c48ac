"""Auditors: an account per auditor (key login only), sudo for `exchange audit-read` only."""

from __future__ import annotations

from pyinfra.api import deploy
from pyinfra.operations import server

from exchange import paths
from exchange.policy import Policy
from roles.key_login import key_login_members
from roles.ops import sudo_rule
from roles.settings import HostSettings


@deploy("Auditors")
def auditor(policy: Policy, settings: HostSettings) -> None:
    group = policy.accounts.auditor_group
    server.group(name=f"Group {group}", group=group, system=True)
    key_login_members(group, "auditor", settings.auditors, settings)
    # Any arguments: `exchange audit-read` itself refuses all but its read-only reads.
    sudo_rule(
        name="Auditors' sudo rule",
        dest=paths.AUDITOR_SUDOERS,
        group=group,
        command=f"{paths.AUDIT_READ} *",
    )
