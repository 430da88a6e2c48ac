"""What the staff tools read on the server besides the policy: the site data (institution,
contacts, message transports with their credentials), the partners' contacts, and the
message templates; and where they keep their state."""

from __future__ import annotations

import yaml
from pyinfra.api import deploy
from pyinfra.operations import files

from exchange import paths
from exchange.partners import Partner
from exchange.site import site_yaml
from roles.ops import config_file
from roles.settings import HostSettings


@deploy("Site data for the staff tools")
def site(settings: HostSettings, partners: tuple[Partner, ...] | None) -> None:
    if settings.portal is None:
        # Recipients' addresses and numbers, token hashes, notice state: root only.
        # (With a web page, roles/portal.py lets its group pass to the token index.)
        files.directory(name="Tool state", path=paths.STATE_DIR, user="root", group="root", mode="700")
    if settings.site is not None:
        config_file(
            name="Site data (holds the transports' credentials: root only)",
            dest=paths.SITE,
            content=site_yaml(settings.site),
            mode="600",
            validate=f"{paths.EXCHANGE} site check {{path}} >/dev/null",
        )
    else:
        files.file(name="No site data on this host", path=paths.SITE, present=False)
    # The texts ship with the tools now; an earlier version installed them here.
    files.directory(
        name="No message templates of an earlier version", path=f"{paths.CONFIG_DIR}/messages", present=False
    )
    if partners is not None:
        data = {"partners": [partner.model_dump() for partner in partners]}
        config_file(
            name="Partner contacts (for credentials and notices: root only)",
            dest=paths.PARTNERS,
            content="# Managed by imaging-exchange (roles/site.py) from the inventory's partners_file.\n"
            + yaml.safe_dump(data, sort_keys=False, allow_unicode=True),
            mode="600",
        )
