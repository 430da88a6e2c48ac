"""Fixed partners, declared in data (a YAML file the inventory names, e.g. inventory/partners.yaml)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field, StringConstraints, ValidationError, field_validator

from exchange.validation import describe, read_yaml_file

# A Debian username that is also safe as a path component and a syslog hostname.
PARTNER_NAME = r"^[a-z][a-z0-9-]{1,30}[a-z0-9]$"
# Names that must never become an exchange account.
RESERVED = frozenset(
    {
        "root",
        "daemon",
        "bin",
        "sys",
        "sync",
        "games",
        "man",
        "lp",
        "mail",
        "news",
        "uucp",
        "proxy",
        "www-data",
        "backup",
        "list",
        "irc",
        "nobody",
        "sshd",
        "systemd-network",
        "messagebus",
        "admin",
        "staff",
        "auditor",
        "exchange",
    }
)
SSH_PUBLIC_KEY = re.compile(
    r"^(ssh-ed25519|sk-ssh-ed25519@openssh\.com|rsa-sha2-512|rsa-sha2-256|ssh-rsa) [A-Za-z0-9+/]+={0,3}( [^\n\r]*)?$"
)


# The deploy installs the validated partner data here, for the staff tools (contacts).
HOST_PARTNERS_PATH = "/etc/imaging-exchange/partners.yaml"


class PartnerDataError(Exception):
    pass


class Partner(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: Annotated[str, StringConstraints(pattern=PARTNER_NAME)]
    organisation: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    email: EmailStr
    phone: Annotated[str, StringConstraints(pattern=r"^\+[1-9]\d{6,14}$")] = Field(description="E.164")
    language: Literal["nl", "en"] = "nl"  # of the messages the partner's contact receives
    public_keys: list[str] = []
    present: bool = True

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value in RESERVED or value.startswith(("exchange", "link-")):  # link- names are link accounts
            raise ValueError(f"{value!r} is reserved")
        return value

    @field_validator("public_keys")
    @classmethod
    def _keys(cls, value: list[str]) -> list[str]:
        for index, key in enumerate(value):
            if not SSH_PUBLIC_KEY.match(key.strip()):
                raise ValueError(f"key {index} is not an OpenSSH public key line (type base64 [comment])")
        return [key.strip() for key in value]


class PartnerList(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    partners: list[Partner] = []

    @field_validator("partners")
    @classmethod
    def _unique(cls, value: list[Partner]) -> list[Partner]:
        seen: set[str] = set()
        for partner in value:
            if partner.name in seen:
                raise ValueError(f"partner name {partner.name!r} appears twice")
            seen.add(partner.name)
        return value


def load_partners(path: Path | str) -> tuple[Partner, ...]:
    path = Path(path)
    data = read_yaml_file(path, "partner file", PartnerDataError)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PartnerDataError(f"{path}: (top level): must be a mapping with a `partners` list")
    try:
        return tuple(PartnerList.model_validate(data).partners)
    except ValidationError as exc:
        raise PartnerDataError(describe(str(path), exc)) from None
