"""Retention: `exchange purge` from cron, on the policy's schedule, with the jobs that follow it."""

from pyinfra.api import deploy

from exchange import paths
from exchange.policy import Policy
from roles.ops import config_file
from roles.templating import render


@deploy("Retention")
def retention(policy: Policy) -> None:
    config_file(
        name="Purge schedule",
        dest=paths.PURGE_CRON,
        content=render("retention/cron.j2", policy=policy, site_path=paths.SITE, exchange=paths.EXCHANGE),
        mode="644",
    )
