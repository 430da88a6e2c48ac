"""Exchange accounts: the groups, the /srv/exchange tree, and one chrooted SFTP account per
partner, converged by one operation from one bulk fact (exchange.observe) however many
partners there are."""

from __future__ import annotations

import json
import shlex
from itertools import groupby

from pyinfra import host, logger
from pyinfra.api import FactBase, OperationError, deploy, operation

from exchange.accounts import AccountConflict, WantedAccount, plan
from exchange.layout import Layout
from exchange.partners import Partner
from exchange.policy import Policy
from roles.ops import ExchangeAccounts


@operation()
def exchange_accounts(policy: Policy, partners: tuple[Partner, ...] | None):
    """Partners present in the data get their account; those marked absent or dropped are locked.
    With `partners` None only the groups and the tree are converged."""
    layout = Layout(policy)
    wanted = [
        WantedAccount(name=p.name, kind="partner", public_keys=tuple(p.public_keys), active=p.present)
        for p in partners or ()
    ]
    observed = host.get_fact(ExchangeAccounts, params_json=json.dumps(layout.observe_params([w.name for w in wanted])))
    conflict = None
    try:
        steps = plan(layout, wanted, observed, manage_kinds={"partner"} if partners is not None else set())
    except AccountConflict as found:
        if not found.steps:
            raise OperationError(str(found)) from None
        conflict, steps = found, found.steps  # the other accounts (locks first), then fail with the reason
    if not steps:
        host.noop(f"{len(wanted)} partner accounts are as the data wants")
        return
    # One remote command per account (its steps chained, stopping at the first failure):
    # a first converge of hundreds of partners is bounded by round trips, not by work.
    for _account, group in groupby(steps, key=lambda step: step.account):
        yield " && ".join(f"{{ {step.command}; }}" for step in group)
    if conflict is not None:
        yield f"echo {shlex.quote(f'partner data conflict, not applied: {conflict}')} >&2; exit 1"


class UserQuotas(FactBase):
    """The filesystem holding `path` (mount point, type) and whether it enforces user quotas."""

    def command(self, path: str) -> str:
        q = shlex.quote(path)
        return (
            f"findmnt -n -o TARGET,FSTYPE --target {q}; "
            f"quotaon -p -u \"$(findmnt -n -o TARGET --target {q})\" 2>/dev/null | grep -q ' is on' && echo on || echo off"
        )

    def process(self, output: list[str]) -> dict:
        target, fstype = (output[0].split() + ["?", "?"])[:2]
        return {"mount": target, "type": fstype, "on": output[-1] == "on"}


@operation()
def disk_limits_said(root: str):
    """One account can fill a shared filesystem for all: say so when nothing limits it."""
    found = host.get_fact(UserQuotas, path=root)
    if found["on"]:
        host.noop(f"user quotas are on for {found['mount']}; set each account's limit there (setquota -u)")
    else:
        logger.warning(
            f"{host.name}: {root} is on {found['mount']} ({found['type']}) without user quotas, so no per-account "
            "disk limit holds: one account's uploads can fill it for every other. Put it on a filesystem of its "
            "own (docs/admins.md: Disk space per account)"
        )
        host.noop(f"no user quotas on {found['mount']}")
    yield from ()


@deploy("Exchange accounts")
def accounts(policy: Policy, partners: tuple[Partner, ...] | None) -> None:
    exchange_accounts(name="Partner accounts, chroots and keys", policy=policy, partners=partners)
    disk_limits_said(name="Per-account disk limits", root=policy.accounts.root)
