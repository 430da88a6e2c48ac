"""Retention: `exchange purge` from cron, on the policy's schedule."""

from pyinfra.api import deploy

from exchange.policy import Policy
from exchange.site import HOST_SITE_PATH
from roles.ops import config_file
from roles.templating import render

CRON_FILE = "/etc/cron.d/imaging-exchange-purge"


@deploy("Retention")
def retention(policy: Policy) -> None:
    config_file(
        name="Purge schedule",
        dest=CRON_FILE,
        content=render("retention/cron.j2", policy=policy, site_path=HOST_SITE_PATH),
        mode="644",
    )
