"""Every host data key the deploy reads, with its default, in one place.

Inventories (inventory/example.py) set these per host or group. Keys that pyinfra's
connectors read (`ssh_*`) and pyinfra's own (`_*`) pass through; any other key that
is not declared here is an error, so a typo never silently falls back to a default.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from exchange.site import Site
from exchange.validation import describe

PASS_THROUGH_PREFIXES = ("ssh_", "_")


class HostSettingsError(Exception):
    pass


class Auditor(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z_][a-z0-9_-]{0,31}$")
    public_keys: list[str] = Field(min_length=1)


class HostSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    apt_cache_time: int = Field(
        3600,
        ge=0,
        description="Seconds an `apt-get update` stays fresh; within it a re-run does not refresh the index.",
    )
    automatic_security_updates: bool = Field(
        True,
        description="Install Debian security updates daily with unattended-upgrades.",
    )
    automatic_reboot_time: str | None = Field(
        None,
        pattern=r"^([01]\d|2[0-3]):[0-5]\d$",
        description="If set (HH:MM), reboot at that time when an update needs it; otherwise never reboot by itself.",
    )
    sshd_port: int = Field(22, ge=1, le=65535, description="Port the OpenSSH server listens on.")
    sshd_listen_addresses: list[str] = Field(
        default_factory=list,
        description="Addresses sshd binds to; empty means all.",
    )
    ssh_admin_groups: list[str] = Field(
        default_factory=lambda: ["sudo"],
        description="Groups whose members may log in with a key besides staff and SFTP accounts (sshd AllowGroups).",
    )
    partners_file: str | None = Field(
        None,
        description="YAML file of fixed partners (relative to the repository, e.g. inventory/partners.yaml). "
        "Unset: partner accounts are not managed on this host.",
    )
    auditors: list[Auditor] = Field(
        default_factory=list,
        description="Auditor accounts: {name, public_keys}. Key login only; sudo limited to the audit suite's "
        "read-only commands (roles/auditor.py).",
    )
    site: Site | None = Field(
        None,
        description="Site data for the staff tools and messages: institution, department, portal_url, contact, "
        "staff_mailbox, and the e-mail and SMS transports (scripts/exchange/site.py; inventory/example.py). "
        "Unset: link accounts and credentials cannot be issued on this host.",
    )
    admin_connects_as_root: bool = Field(
        False,
        description="The deploying admin logs in as root (key only); otherwise root login is refused.",
    )


def host_settings(name: str, data: dict) -> HostSettings:
    ours = {k: v for k, v in data.items() if not k.startswith(PASS_THROUGH_PREFIXES)}
    try:
        return HostSettings.model_validate(ours)
    except ValidationError as exc:
        raise HostSettingsError(describe(f"inventory host {name}", exc, unknown="unknown host data key")) from None
