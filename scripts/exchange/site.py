"""Site data: who the institution is, how recipients reach it, and how messages leave the server.

Not policy (policies.yaml holds rules that are the same everywhere); this is the part that
differs per hospital. Admins set it as the `site` host data key in the inventory; the
deploy validates it with this model and installs it as /etc/imaging-exchange/site.yaml
(root only: it holds the transports' credentials), where the staff tools read it.
"""

from __future__ import annotations

import ipaddress
import os
import re
import zoneinfo
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from exchange import branding, paths
from exchange.errors import REFUSED, ExchangeError
from exchange.invoker import Invoker
from exchange.validation import describe, read_yaml_file

SITE_ENV = "EXCHANGE_SITE"
LANGUAGES = ("nl", "en")
Language = Literal["nl", "en"]
E164 = r"^\+[1-9]\d{6,14}$"
Text = Annotated[str, StringConstraints(min_length=1, max_length=300, strip_whitespace=True)]


class SiteError(ExchangeError):
    """Site data that cannot be used; the message names the file or host and the key."""

    status = REFUSED


class Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _both_languages(value: dict[str, str]) -> dict[str, str]:
    missing = [lang for lang in LANGUAGES if lang not in value]
    if missing:
        raise ValueError(f"needs a text for every language ({', '.join(LANGUAGES)}); missing {', '.join(missing)}")
    return value


Localised = Annotated[dict[Language, Text], Field(description="one text per language: {nl: ..., en: ...}")]


def _is_loopback(host: str | None) -> bool:
    if host in ("localhost", None):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Contact(Part):
    """Shown to recipients in every message and on every page."""

    email: EmailStr
    phone: Text  # as people dial it, e.g. "071-526 3497"
    hours: Localised  # when the phone is answered, e.g. {nl: "op werkdagen 8:30-17:00", en: ...}
    # Only for urgent cases outside office hours: the hospital switchboard, which puts callers
    # through to the radiographer on duty (the source document's 071-5269111). Unset: not shown.
    urgent_phone: Text | None = None

    _languages = field_validator("hours")(_both_languages)


class SmtpTransport(Part):
    """E-mail through the hospital's mail relay: STARTTLS (port 587) or TLS (465), with AUTH."""

    transport: Literal["smtp"]
    sender: EmailStr  # From:
    host: Text
    port: int = Field(587, ge=1, le=65535)
    security: Literal["starttls", "tls"] = "starttls"
    username: Text | None = None
    password: str | None = Field(None, repr=False)
    ca_file: str | None = None  # a private CA for the relay's certificate; else the system's
    timeout: float = Field(30, gt=0, le=300)


class HttpSmsTransport(Part):
    """SMS through a provider's HTTP API: one JSON POST per message, 2xx is success.

    The body is {fields.to: "+316...", fields.text: "...", fields.sender: sender}; rename
    the fields and add headers (an API key or "Authorization: Bearer ...") to match the
    provider. Anything else a provider needs is one small class beside this one.
    """

    transport: Literal["http"]
    url: str
    headers: dict[str, str] = Field(default_factory=dict, repr=False)
    sender: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9 ]{1,11}$|^\+[1-9]\d{6,14}$")] | None = None
    fields: dict[Literal["to", "text", "sender"], Annotated[str, StringConstraints(min_length=1)]] = Field(
        default_factory=lambda: {"to": "to", "text": "text", "sender": "from"}
    )
    ca_file: str | None = None
    timeout: float = Field(30, gt=0, le=300)

    @field_validator("url")
    @classmethod
    def _https(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme == "https" and parts.hostname:
            return value
        if parts.scheme == "http" and _is_loopback(parts.hostname):
            return value  # a gateway relay on the server itself
        raise ValueError("must be an https:// URL (plain http only to a gateway on the server's loopback)")


class OutboxTransport(Part):
    """Writes each message to a spool directory instead of sending it: for demos and tests.
    An SMS in the outbox holds a password; never use it for real recipients."""

    transport: Literal["outbox"]
    sender: EmailStr | None = None


EmailTransport = Annotated[SmtpTransport | OutboxTransport, Field(discriminator="transport")]
SmsTransport = Annotated[HttpSmsTransport | OutboxTransport, Field(discriminator="transport")]


_AE_TITLE = re.compile(r"^[!-\[\]-~](?:[ -\[\]-~]{0,14}[!-\[\]-~])?$")
_NODE_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$")


def _ae_title(value: str) -> str:
    # DICOM PS3.5: 1-16 characters of the default repertoire, no backslash or control
    # characters; leading and trailing spaces do not count, so none are allowed here.
    if not _AE_TITLE.match(value):
        raise ValueError("must be a DICOM AE title: 1-16 letters, digits or signs, no backslash, no outer spaces")
    return value


def _node_name(value: str) -> str:
    if not _NODE_NAME.match(value):
        raise ValueError("must be a short name for the command line: a-z, 0-9 and -, 2-32 characters, e.g. main-pacs")
    return value


AeTitle = Annotated[str, AfterValidator(_ae_title)]
NodeName = Annotated[str, AfterValidator(_node_name)]

# `exchange import --patient-id` (site.dicom.issuer_of_patient_id)
_LONG_STRING = re.compile(r"^[^\\\x00-\x1f\x7f]{1,64}$")


def _long_string(value: str) -> str:
    # LO (PS3.5): at most 64 characters, no backslash (a value separator) or control characters.
    if not _LONG_STRING.match(value) or value != value.strip():
        raise ValueError("must be a DICOM LO value: 1-64 characters, no backslash, no outer spaces")
    return value


IssuerOfPatientId = Annotated[str, AfterValidator(_long_string)]


class PacsNode(Part):
    """One PACS the exchange talks DICOM to: it queries it (C-FIND), has studies sent to it
    (C-MOVE to the exchange's own AE, or C-GET on the same association) and stores received
    studies into it (C-STORE). The PACS must know the exchange's AE title (`Dicom.ae_title`),
    and for C-MOVE its host and `Dicom.retrieve_port`, as a modality."""

    ae_title: AeTitle
    host: Text
    port: int = Field(104, ge=1, le=65535)
    # DICOM over TLS (PS3.15 Annex B): the PACS's certificate is verified against the system's
    # CAs or `ca_file`, and its host name checked, as the e-mail transport does.
    tls: bool = False
    ca_file: str | None = None
    # C-MOVE (the PACS connects back to the exchange's retrieve port) or C-GET (the images
    # come back on the exchange's own association: no inbound connection at all).
    retrieve: Literal["move", "get"] = "move"
    timeout: float = Field(30, gt=0, le=600)  # per network step: connect, each response

    @field_validator("ca_file")
    @classmethod
    def _ca_needs_tls(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and not info.data.get("tls"):
            raise ValueError("is only used with tls: true (the PACS's certificate is verified against it)")
        if value is not None and not PurePosixPath(value).is_absolute():
            raise ValueError("must be an absolute path on the server")
        return value


class Dicom(Part):
    """The exchange's own side of the DICOM network, and the PACS nodes it knows by name."""

    ae_title: AeTitle = "IMAGINGEXCHANGE"
    # Where a PACS delivers a C-MOVE: the exchange listens here only while it retrieves, and
    # accepts only the PACS it asked and the study it asked for.
    retrieve_port: int = Field(11112, ge=1, le=65535)
    pacs: dict[NodeName, PacsNode] = Field(default_factory=dict)
    default_pacs: NodeName | None = None  # for --pacs left out; a single node is the default anyway
    # DICOM over TLS: the exchange shows this certificate to a PACS with `tls: true` (as its
    # client, and as the C-MOVE destination the PACS connects to); default: the server's own,
    # which the web page uses too (roles/portal.py).
    certificate: str = paths.TLS_CERTIFICATE
    certificate_key: str = paths.TLS_CERTIFICATE_KEY
    # `exchange import --patient-id`: the issuer (assigning authority) of the hospital's own patient
    # IDs, written as IssuerOfPatientID with the local ID; unset: the received issuer is removed.
    issuer_of_patient_id: IssuerOfPatientId | None = None

    @field_validator("default_pacs")
    @classmethod
    def _known_default(cls, value: str | None, info: ValidationInfo) -> str | None:
        nodes = info.data.get("pacs") or {}
        if value is not None and value not in nodes:
            raise ValueError(f"names no PACS node; known: {', '.join(sorted(nodes)) or 'none'}")
        return value

    def node(self, name: str | None) -> tuple[str, PacsNode]:
        """The node named (or the default one) with its name; SiteError says which exist."""
        known = ", ".join(sorted(self.pacs)) or "none (set site.dicom.pacs in the inventory and deploy)"
        if name is None:
            name = self.default_pacs or (next(iter(self.pacs)) if len(self.pacs) == 1 else None)
            if name is None:
                raise SiteError(f"which PACS? name one with --pacs; known: {known}")
        if name not in self.pacs:
            raise SiteError(f"--pacs {name}: no PACS node of that name in the site data; known: {known}")
        return name, self.pacs[name]


class PublicSite(Part):
    """What recipients see of the site: the web page shows it too (scripts/exchange/portal)."""

    institution: Localised  # as it reads in a sentence: {nl: "het LUMC", en: "LUMC"}
    department: Localised  # {nl: "afdeling Radiologie", en: "Department of Radiology"}
    portal_url: str  # the secure web page, https://<name>; links are <portal_url>/l/<token>
    sftp_host: Text | None = None  # what partners put in their SFTP client; default: the portal's host name
    # The port partners put in their SFTP client. The deploy fills in the host's sshd_port when
    # the inventory leaves it out (roles/settings.py); set it where a NAT maps another port.
    sftp_port: int = Field(22, ge=1, le=65535)
    contact: Contact
    # What recipients start on Windows, e.g. run_cdviewer.exe (the CD viewer): a file at the root of
    # viewer_dir (Site), which must then be set. Unset: the packages carry no viewer, and say so.
    windows_viewer: Text | None = None
    # The times in e-mails, SMS, packages and on the web page are shown in this zone (IANA name),
    # whatever the server's own clock zone is.
    timezone: Text = "Europe/Amsterdam"
    # The web page's links, buttons and header rule, so recipients recognise their hospital.
    accent_colour: Text = "#1a5fb4"

    _languages = field_validator("institution", "department")(_both_languages)

    @field_validator("accent_colour")
    @classmethod
    def _readable_colour(cls, value: str) -> str:
        return branding.accent_colour(value)

    @field_validator("windows_viewer")
    @classmethod
    def _file_name(cls, value: str | None) -> str | None:
        if value is not None and ("/" in value or "\\" in value or value in (".", "..")):
            raise ValueError("must be a file name at the root of viewer_dir, e.g. run_cdviewer.exe (no folders)")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError("must be an IANA time zone name such as Europe/Amsterdam") from None
        return value

    @field_validator("portal_url")
    @classmethod
    def _portal(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme != "https" or not parts.hostname or parts.path not in ("", "/") or parts.query:
            raise ValueError("must be https://<host name>[:port] with no path")
        return value.rstrip("/")

    @property
    def portal_host(self) -> str:
        return urlsplit(self.portal_url).hostname

    @property
    def sftp_server(self) -> str:
        return self.sftp_host or self.portal_host

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)

    def public(self) -> PublicSite:
        return PublicSite.model_validate(self.model_dump(include=set(PublicSite.model_fields)))


class Site(PublicSite):
    # On the server: the viewer bundle put beside DICOMDIR in every study package, with
    # windows_viewer at its root. Required when windows_viewer is set (the messages name it).
    viewer_dir: str | None = Field(None, validate_default=True)
    staff_mailbox: EmailStr  # upload notices go here
    staff_language: Language = "nl"
    email: EmailTransport
    sms: SmsTransport
    outbox_dir: str = paths.OUTBOX_DIR
    # The web page's logo: a PNG or JPEG on the admin's machine (relative to the repository, or
    # absolute), checked by roles/settings.py and installed by roles/portal.py for the portal.
    logo: Text | None = None
    dicom: Dicom = Field(default_factory=Dicom)  # the PACS nodes; none: `exchange pacs` says so

    @field_validator("viewer_dir")
    @classmethod
    def _viewer_named_in_messages(cls, value: str | None, info: ValidationInfo) -> str | None:
        if "windows_viewer" not in info.data:
            return value  # windows_viewer itself is wrong, and said so
        viewer = info.data["windows_viewer"]
        if viewer and not value:
            raise ValueError(
                f"required when windows_viewer is set ({viewer}): the folder on the server that holds {viewer} "
                "at its root and goes into every package; without a viewer folder, leave windows_viewer out"
            )
        if value and not viewer:
            raise ValueError(
                "needs windows_viewer, the program at its root that recipients start on Windows (e.g. "
                "run_cdviewer.exe): without it the messages tell recipients the package holds no viewer"
            )
        return value

    @field_validator("outbox_dir", "viewer_dir")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        # The staff tools run from any folder: a relative path would depend on it.
        if value is not None and (not PurePosixPath(value).is_absolute() or ".." in PurePosixPath(value).parts):
            raise ValueError("must be an absolute path")
        return value


def parse_site(data: object, where: str, prefix: str = "", show_values: bool = True) -> Site:
    """`prefix`: the key the site data sits under where it came from ("site." in an inventory);
    `show_values`: whether the message may quote values (no: the root-only file read for staff)."""
    if not isinstance(data, dict):
        raise SiteError(
            f"{where}: {prefix or '(top level)'}: must be a mapping (institution, department, portal_url, contact, ...)"
        )
    try:
        return Site.model_validate(data)
    except ValidationError as exc:
        raise SiteError(describe(where, exc, prefix=prefix, show_values=show_values)) from None


def site_yaml(site: Site) -> str:
    # Not the logo: a path on the admin's machine; the portal's file names the installed copy.
    return "# Managed by imaging-exchange (roles/site.py) from the inventory's `site` data.\n" + yaml.safe_dump(
        site.model_dump(mode="json", exclude_none=True, exclude={"logo"}), sort_keys=True, allow_unicode=True
    )


def load_site(path: Path | str | None = None, who: Invoker | None = None, show_values: bool = True) -> Site:
    """`who`: read the file with this person's rights (a file they named; None: the tool's own)."""
    path = Path(path or os.environ.get(SITE_ENV) or paths.SITE)
    missing = "no site data on this server; set `site` in the inventory and deploy (see inventory/example.py)"
    return parse_site(read_yaml_file(path, "site data", SiteError, missing, who), str(path), show_values=show_values)
