"""Auditors: an account per auditor (key login only), sudo for `exchange audit-read` and the
access trail's reports and verify only."""

from __future__ import annotations

from pyinfra.api import deploy
from pyinfra.operations import server

from exchange import paths
from exchange.policy import Policy
from roles.key_login import key_login_members
from roles.ops import sudo_rule
from roles.settings import HostSettings

# What auditors may run as root, and nothing else of exchange (tests/audit/baseline.yaml says the
# same, for SUDO-01 and SUDO-02). Any arguments to audit-read: it refuses all but its read-only
# reads. Any to the trail's reports: they only read (and record the read), print to stdout, and
# write no file anyone names. Verify takes none (sudo: exactly these arguments).
AUDITOR_COMMANDS = (
    f"{paths.AUDIT_READ} *",
    f"{paths.EXCHANGE} trail patient *",
    f"{paths.EXCHANGE} trail account *",
    f"{paths.EXCHANGE} trail staff *",
    f"{paths.EXCHANGE} trail verify",
)


@deploy("Auditors")
def auditor(policy: Policy, settings: HostSettings) -> None:
    group = policy.accounts.auditor_group
    server.group(name=f"Group {group}", group=group, system=True)
    key_login_members(group, "auditor", settings.auditors, settings)
    sudo_rule(
        name="Auditors' sudo rule",
        dest=paths.AUDITOR_SUDOERS,
        group=group,
        command=", ".join(AUDITOR_COMMANDS),
    )
