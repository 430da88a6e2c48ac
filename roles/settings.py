"""Every host data key the deploy reads, with its default, in one place.

Inventories (inventory/example.py) set these per host or group. Keys that pyinfra's
connectors read (`ssh_*`) and pyinfra's own (`_*`) pass through; any other key that
is not declared here is an error, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from exchange import paths
from exchange.branding import Logo, LogoError, read_logo
from exchange.site import Site
from exchange.validation import describe
from roles import REPO

PASS_THROUGH_PREFIXES = ("ssh_", "_")


class HostSettingsError(Exception):
    pass


class KeyLoginMember(BaseModel):
    """A staff member or an auditor: an account that logs in with these keys only."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z_][a-z0-9_-]{0,31}$")
    public_keys: list[str] = Field(min_length=1)


def _names_once(members: list[KeyLoginMember]) -> list[KeyLoginMember]:
    # Two entries of one account would each set its keys: the deploy would never converge.
    names = [member.name for member in members]
    if twice := sorted({name for name in names if names.count(name) > 1}):
        raise ValueError(f"listed more than once: {', '.join(twice)}")
    return members


KeyLoginMembers = Annotated[list[KeyLoginMember], AfterValidator(_names_once)]


def _ip_address(value: str) -> str:
    ipaddress.ip_address(value)  # ValueError names the value
    return value


IPAddress = Annotated[str, AfterValidator(_ip_address)]


class PortalSettings(BaseModel):
    """The secure web page on this host (roles/portal.py): nginx with TLS in front of the portal."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    server_name: str = Field(
        pattern=r"^[A-Za-z0-9.-]+$", description="The name in the site's portal_url (nginx server_name)."
    )
    listen_port: int = Field(443, ge=1, le=65535, description="HTTPS port.")
    listen_addresses: list[IPAddress] = Field(
        default_factory=list, description="IP addresses nginx binds to (IPv4 or IPv6); empty: all."
    )
    http_redirect_port: int | None = Field(
        80, ge=1, le=65535, description="Plain HTTP port that only redirects to HTTPS; null: none."
    )
    tls_certificate: str = Field(
        f"{paths.TLS_CERTIFICATE}", description="PEM certificate chain for server_name (the site's own)."
    )
    tls_certificate_key: str = Field(f"{paths.TLS_CERTIFICATE_KEY}", description="Its private key.")
    self_signed: bool = Field(
        False,
        description="Make a self-signed certificate at those paths if none is there: test hosts only; browsers "
        "warn about it and recipients must never be asked to accept that.",
    )


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
    auditors: KeyLoginMembers = Field(
        default_factory=list,
        description="Auditor accounts: {name, public_keys}. Key login only; sudo limited to the audit suite's "
        "read-only commands (roles/auditor.py). An account of the auditor group not listed is locked, then removed.",
    )
    staff: KeyLoginMembers | None = Field(
        None,
        description="Staff accounts: {name, public_keys}. Key login only; sudo for `exchange` only (roles/staff.py). "
        "A list is the whole staff group: a member not listed is locked, then removed. Unset: staff are managed "
        "by hand and the deploy leaves them alone.",
    )
    site: Site | None = Field(
        None,
        description="Site data for the staff tools and messages: institution, department, portal_url, contact, "
        "staff_mailbox, and the e-mail and SMS transports (scripts/exchange/site.py; inventory/example.py). "
        "Unset: link accounts and credentials cannot be issued on this host.",
    )
    portal: PortalSettings | None = Field(
        None,
        description="The secure web page (nginx, TLS, the portal service); needs `site`. Unset: SFTP only.",
    )
    admin_connects_as_root: bool = Field(
        False,
        description="The deploying admin logs in as root (key only); otherwise root login is refused.",
    )
    source_bans: bool = Field(
        True,
        description="Ban addresses that fail logins (fail2ban, nftables: policies.yaml source_bans), so nobody can "
        "lock a partner out by failing logins against it. false only on a host that cannot set firewall rules "
        "(a container sharing its host's network): the deploy then says so, installs nothing and leaves a marker "
        "for the audit (BAN-01 not applicable).",
    )

    @model_validator(mode="before")
    @classmethod
    def _sftp_port_is_sshd_port(cls, data: object) -> object:
        """Partners' SFTP clients connect to sshd_port unless the site data names another port
        (`site.sftp_port`, e.g. behind a NAT): the messages and the web page name that port."""
        if isinstance(data, dict) and isinstance(data.get("site"), dict) and "sftp_port" not in data["site"]:
            port = data.get("sshd_port", 22)
            if isinstance(port, int):
                data = {**data, "site": {**data["site"], "sftp_port": port}}
        return data

    @model_validator(mode="after")
    def _portal_needs_site(self) -> HostSettings:
        if self.portal is not None and self.site is None:
            raise ValueError("portal needs site data (institution, contact, portal_url): set `site` as well")
        if self.portal is not None and self.sshd_loopback_address is None:
            raise ValueError("portal logs users in through sshd on loopback: sshd_listen_addresses must include one")
        return self

    @property
    def sshd_loopback_address(self) -> str | None:
        """Where the web page reaches sshd on this host: a loopback address sshd listens on."""
        if not self.sshd_listen_addresses:
            return "127.0.0.1"  # sshd listens on all addresses
        loopback = [a for a in self.sshd_listen_addresses if ipaddress.ip_address(a).is_loopback]
        return loopback[0] if loopback else None


def host_settings(name: str, data: dict) -> HostSettings:
    ours = {k: v for k, v in data.items() if not k.startswith(PASS_THROUGH_PREFIXES)}
    try:
        settings = HostSettings.model_validate(ours)
    except ValidationError as exc:
        raise HostSettingsError(describe(f"inventory host {name}", exc, unknown="unknown host data key")) from None
    try:
        site_logo(settings.site)  # the file itself, before anything is deployed
    except LogoError as exc:
        raise HostSettingsError(f"inventory host {name}: site.logo: {exc}") from None
    return settings


def site_logo(site: Site | None) -> Logo | None:
    """The site's logo from the admin's machine (`site.logo`, relative to the repository), checked."""
    if site is None or site.logo is None:
        return None
    return read_logo(REPO / site.logo)
