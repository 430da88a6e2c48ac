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
from roles.tools import tools

loaded_policy = deploy_policy()  # config.py has already refused a bad one
policy = loaded_policy.policy
try:
    settings = host_settings(host.name, host.data.dict())
    partners = load_partners(REPO / settings.partners_file) if settings.partners_file else None
except (HostSettingsError, PartnerDataError) as error:
    sys.exit(f"inventory error, nothing was deployed:\n{error}")
# One account cannot be a chrooted partner and an auditor with a shell: each role would undo the other.
if both := sorted({a.name for a in settings.auditors} & {p.name for p in partners or ()}):
    sys.exit(f"inventory error, nothing was deployed: {', '.join(both)}: both an auditor and a partner; rename one")
# sshd refuses RSA keys below the policy's size (RequiredRSASize): say so now, not at login.
keys = {f"auditor {a.name}": a.public_keys for a in settings.auditors} | {
    f"partner {p.name}": p.public_keys for p in partners or ()
}
if short := short_rsa_keys(keys, policy.sshd.rsa_min_key_bits):
    sys.exit(
        "inventory error, nothing was deployed: sshd would refuse these keys "
        "(policies.yaml sshd.rsa_min_key_bits):\n" + "\n".join(short)
    )

base(settings)
tools(loaded_policy)
site(settings, partners)
logging()
passwords(policy, [policy.accounts.staff_group, *settings.ssh_admin_groups])
accounts(policy, partners)
auditor(policy, settings)
sshd(policy, settings)
bans(policy, settings)
if settings.portal is not None:
    portal(loaded_policy, settings)
retention(policy)
