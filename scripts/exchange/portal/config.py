"""The web page's own file (written by roles/portal.py from the inventory); beside it the
portal reads the policy, the page templates and, through exchange.links, the link token index.

The portal's file holds only what recipients may see of the site (no transport
credentials: those stay in the root-only site.yaml) and where sshd listens.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import Field, ValidationError

from exchange import paths
from exchange.errors import ExchangeError
from exchange.invoker import Invoker
from exchange.site import Part, PublicSite
from exchange.validation import describe, read_yaml_file

PORTAL_CONFIG_ENV = "EXCHANGE_PORTAL_CONFIG"


class PortalConfigError(ExchangeError):
    pass


class PortalConfig(Part):
    site: PublicSite
    sshd_host: str = "127.0.0.1"
    sshd_port: int = Field(22, ge=1, le=65535)
    # The server's own host keys: the portal trusts nothing else on the other end.
    host_key_files: list[str] = Field(
        default_factory=lambda: [f"{key}.pub" for key in paths.SSH_HOST_KEYS.values()], min_length=1
    )
    templates_dir: str | None = None  # another folder of page templates (tests); default: the tools' own
    logo: str | None = None  # the site's logo on this host (roles/portal.py installs it at paths.PORTAL_LOGO)
    state_dir: str = paths.STATE_DIR


def portal_yaml(config: PortalConfig) -> str:
    return "# Managed by imaging-exchange (roles/portal.py).\n" + yaml.safe_dump(
        config.model_dump(mode="json", exclude_none=True), sort_keys=True, allow_unicode=True
    )


def load_portal_config(path: Path | str | None = None, who: Invoker | None = None) -> PortalConfig:
    """`who`: read the file with this person's rights (a file they named; None: the tool's own)."""
    path = Path(path or os.environ.get(PORTAL_CONFIG_ENV) or paths.PORTAL_CONFIG)
    data = read_yaml_file(path, "the portal's configuration", PortalConfigError, who=who)
    try:
        return PortalConfig.model_validate(data)
    except ValidationError as exc:
        raise PortalConfigError(describe(str(path), exc)) from None
