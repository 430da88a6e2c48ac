"""Staff: with host data `staff`, an account per staff member (key login only) and nobody else
in the staff group, which may sudo `exchange` and nothing else (roles/tools.py)."""

from __future__ import annotations

from pyinfra.api import deploy

from exchange.policy import Policy
from roles.key_login import key_login_members
from roles.settings import HostSettings


@deploy("Staff")
def staff(policy: Policy, settings: HostSettings) -> None:
    if settings.staff is None:
        return  # the site manages its staff by hand
    key_login_members(policy.accounts.staff_group, "staff", settings.staff, settings)
