"""Password aging: the one rule for every account on the server, and the `chage` that applies it.

A partner's password ages by the policy (the source document: change every 3 months). An
account without a usable password keeps no aging, whatever its kind: a partner not handed one
yet or that logs in with its key only, staff, auditors and key-only admins. PAM's account check
(sshd UsePAM) would otherwise demand a new password once it "expired", which a key login cannot
give, and lock the account out. A staff member's or admin's own password is not the exchange's
to age. login.defs gives every new account the policy's aging (CIS), and a password can come
by hand (`chpasswd`): the deploy and the hourly job (`exchange password-aging`) both apply this.

Aging is given as shadow's fields (exchange.observe.shadow_entries), None for an unset one;
a field the rule leaves out is left as it is.
"""

from __future__ import annotations

from exchange.policy import Policy

# Shadow's aging fields in its order, with the chage option that sets each.
CHAGE_OPTIONS = {
    "min_days": "--mindays",
    "max_days": "--maxdays",
    "warn_days": "--warndays",
    "inactive_days": "--inactive",
}

# Never expires, never goes inactive (warn days mean nothing without a maximum: left alone).
NO_AGING: dict[str, int | None] = {"min_days": 0, "max_days": None, "inactive_days": None}


def wanted(kind: str, password_set: bool, policy: Policy | None = None) -> dict[str, int | None] | None:
    """The aging an account of `kind` (partner, staff, auditor or admin) should have, given
    whether it has a usable password; None where its aging is not the exchange's to set. The
    policy is read for a partner's password only."""
    if not password_set:
        return NO_AGING
    if kind != "partner":
        return None
    if policy is None:
        raise ValueError("a partner's password ages by the policy's passwords.aging: pass the policy")
    aging = policy.passwords.aging
    return {
        "min_days": aging.min_days,
        "max_days": aging.max_days,
        "warn_days": aging.warn_days,
        "inactive_days": aging.inactive_days,
    }


def holds(entry: dict | None, want: dict[str, int | None]) -> bool:
    """Whether a shadow entry (or its aging fields) already has the aging `want`."""
    return all((entry or {}).get(field) == value for field, value in want.items())


def chage(want: dict[str, int | None]) -> list[str]:
    """The `chage` arguments that set `want`; the account (and any other option) goes after."""
    command = ["chage"]
    for field, option in CHAGE_OPTIONS.items():
        if field in want:
            command += [option, "-1" if want[field] is None else str(want[field])]
    return command
