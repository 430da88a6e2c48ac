"""Converge exchange servers to policies.yaml: `pyinfra inventory/<site>.py deploy.py`.

The roles run in this order on every host; each is one concern.
"""

import sys

from pyinfra import host

from exchange.partners import PartnerDataError, load_partners, short_rsa_keys
from roles import REPO, deploy_policy
from roles.accounts import accounts
from roles.auditor import auditor
from roles.bans import bans
from roles.base import base
from roles.logging import logging
from roles.passwords import passwords
from roles.portal import portal
from roles.retention import retention
from roles.settings import HostSettingsError, host_settings
from roles.site import site
from roles.sshd import sshd
from roles.staff import staff
from roles.tools import tools

loaded_policy = deploy_policy()  # config.py has already refused a bad one
policy = loaded_policy.policy
try:
    settings = host_settings(host.name, host.data.dict())
    partners = load_partners(REPO / settings.partners_file) if settings.partners_file else None
except (HostSettingsError, PartnerDataError) as error:
    sys.exit(f"inventory error, nothing was deployed:\n{error}")
# Everyone who logs in with a key, by role: name -> keys.
people = {
    "an auditor": {a.name: a.public_keys for a in settings.auditors},
    "a staff member": {s.name: s.public_keys for s in settings.staff or ()},
    "a partner": {p.name: p.public_keys for p in partners or ()},
}
# One account, one role: a chrooted partner, a staff member and an auditor (each with a shell, its
# group and sudo rule) are each made and kept by their own role, which would undo the other's.
roles_of: dict[str, list[str]] = {}
for role, named in people.items():
    for name in named:
        roles_of.setdefault(name, []).append(role)
if both := [f"{name}: both {' and '.join(roles)}; rename one" for name, roles in roles_of.items() if len(roles) > 1]:
    sys.exit("inventory error, nothing was deployed:\n" + "\n".join(sorted(both)))
# sshd refuses RSA keys below the policy's size (RequiredRSASize): say so now, not at login.
keys = {
    f"{role.split(maxsplit=1)[1]} {name}": public_keys
    for role, named in people.items()
    for name, public_keys in named.items()
}
if short := short_rsa_keys(keys, policy.sshd.rsa_min_key_bits):
    sys.exit(
        "inventory error, nothing was deployed: sshd would refuse these keys "
        "(policies.yaml sshd.rsa_min_key_bits):\n" + "\n".join(short)
    )

base(settings)
tools(loaded_policy)
site(settings, partners)
logging(policy.portal.service_user if settings.portal is not None else None)
# People dropped from the inventory are locked before the roles that may fail for other reasons.
staff(policy, settings)
auditor(policy, settings)
passwords(policy, [policy.accounts.staff_group, *settings.ssh_admin_groups])
accounts(policy, partners)
sshd(policy, settings)
bans(policy, settings)
if settings.portal is not None:
    portal(loaded_policy, settings)
retention(policy)
