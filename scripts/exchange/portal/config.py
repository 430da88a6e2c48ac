"""What the web page reads at start: its own file (written by roles/portal.py from the
inventory), the policy, the page templates and the link token index.

The portal's file holds only what recipients may see of the site (no transport
credentials: those stay in the root-only site.yaml) and where sshd listens.
"""

from __future__ import annotations

import datetime
import json
import os
import re
from pathlib import Path, PurePosixPath

import yaml
from pydantic import Field, ValidationError

from exchange.links import STATE_DIR, token_hash
from exchange.site import Part, PublicSite
from exchange.validation import describe, read_yaml_file

HOST_PORTAL_CONFIG = PurePosixPath("/etc/imaging-exchange/portal.yaml")
HOST_PORTAL_TEMPLATES = PurePosixPath("/etc/imaging-exchange/portal")
PORTAL_CONFIG_ENV = "EXCHANGE_PORTAL_CONFIG"
TOKEN = re.compile(r"^[A-Za-z0-9_-]{43}$")  # secrets.token_urlsafe(32), as `exchange link issue` makes them


class PortalConfigError(Exception):
    pass


class PortalConfig(Part):
    site: PublicSite
    sshd_host: str = "127.0.0.1"
    sshd_port: int = Field(22, ge=1, le=65535)
    # The server's own host keys: the portal trusts nothing else on the other end.
    host_key_files: list[str] = Field(
        default_factory=lambda: ["/etc/ssh/ssh_host_ed25519_key.pub", "/etc/ssh/ssh_host_rsa_key.pub"], min_length=1
    )
    templates_dir: str = str(HOST_PORTAL_TEMPLATES)
    state_dir: str = str(STATE_DIR)


def portal_yaml(config: PortalConfig) -> str:
    return "# Managed by imaging-exchange (roles/portal.py).\n" + yaml.safe_dump(
        config.model_dump(mode="json", exclude_none=True), sort_keys=True, allow_unicode=True
    )


def load_portal_config(path: Path | str | None = None) -> PortalConfig:
    path = Path(path or os.environ.get(PORTAL_CONFIG_ENV) or HOST_PORTAL_CONFIG)
    data = read_yaml_file(path, "the portal's configuration", PortalConfigError)
    try:
        return PortalConfig.model_validate(data)
    except ValidationError as exc:
        raise PortalConfigError(describe(str(path), exc)) from None


class LinkTokens:
    """The token index `exchange link issue` keeps: link-tokens/<sha256 of token> holds the
    account and expiry. The portal may open these files by name, not list the directory."""

    def __init__(self, state_dir: Path) -> None:
        self.directory = state_dir / "link-tokens"

    def account(self, token: str, now: datetime.datetime) -> tuple[str, datetime.datetime] | None:
        """The link account and its expiry, or None: unknown, revoked or expired are all None."""
        if not TOKEN.match(token):
            return None
        try:
            entry = json.loads((self.directory / token_hash(token)).read_text())
            expires = datetime.datetime.fromisoformat(entry["expires"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return (entry["account"], expires) if expires > now else None
