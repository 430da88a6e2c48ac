"""Exchange accounts: the groups, the /srv/exchange tree, and one chrooted SFTP account per
partner, converged by one operation from one bulk fact (exchange.observe) however many
partners there are."""

from __future__ import annotations

import json
import shlex
from itertools import groupby

from pyinfra import host
from pyinfra.api import OperationError, deploy, operation

from exchange.accounts import AccountConflict, Layout, WantedAccount, plan
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


@deploy("Exchange accounts")
def accounts(policy: Policy, partners: tuple[Partner, ...] | None) -> None:
    exchange_accounts(name="Partner accounts, chroots and keys", policy=policy, partners=partners)
