"""Retention: `exchange purge` from cron, on the policy's schedule."""

from pyinfra.api import deploy

from exchange.policy import Policy
from roles.ops import config_file
from roles.templating import render

CRON_FILE = "/etc/cron.d/imaging-exchange-purge"


@deploy("Retention")
def retention(policy: Policy) -> None:
    config_file(name="Purge schedule", dest=CRON_FILE, content=render("retention/cron.j2", policy=policy), mode="644")
