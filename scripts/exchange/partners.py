"""Fixed partners, declared in data (a YAML file the inventory names, e.g. inventory/partners.yaml)."""

from __future__ import annotations

import base64
import re
import struct
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field, StringConstraints, ValidationError, field_validator

from exchange import paths
from exchange.errors import REFUSED, ExchangeError
from exchange.validation import describe, read_yaml_file

# A Debian username that is also safe as a path component and a syslog hostname.
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


def rsa_key_bits(line: str) -> int | None:
    """The modulus size of an OpenSSH RSA public key line; None for other key types."""
    kind, _, rest = line.strip().partition(" ")
    if kind not in ("ssh-rsa", "rsa-sha2-256", "rsa-sha2-512"):
        return None
    try:
        blob = base64.b64decode(rest.split()[0], validate=True)
        fields, at = [], 0
        while at < len(blob) and len(fields) < 3:  # string type, mpint e, mpint n
            (length,) = struct.unpack(">I", blob[at : at + 4])
            fields.append(blob[at + 4 : at + 4 + length])
            at += 4 + length
        return int.from_bytes(fields[2], "big").bit_length()
    except (ValueError, IndexError, struct.error):
        return 0  # not a readable RSA key: below any minimum


def short_rsa_keys(owners: dict[str, list[str]], min_bits: int) -> list[str]:
    """Each key sshd would refuse (RequiredRSASize), named by its owner and index."""
    short = []
    for owner, keys in owners.items():
        for index, key in enumerate(keys):
            bits = rsa_key_bits(key)
            if bits is not None and bits < min_bits:
                short.append(f"{owner}: key {index} is an RSA key of {bits} bits, below {min_bits}")
    return short


# The deploy installs the validated partner data here, for the staff tools (contacts).


class PartnerDataError(ExchangeError):
    status = REFUSED


class Partner(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: Annotated[str, StringConstraints(pattern=paths.PARTNER_NAME)]
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
        raise PartnerDataError(f"{path}: the file is empty (or comments only); write `partners: []` for no partners")
    if not isinstance(data, dict):
        raise PartnerDataError(f"{path}: (top level): must be a mapping with a `partners` list")
    if "partners" not in data:
        # An empty or cut-off file must not read as "no partners": that would lock them all.
        raise PartnerDataError(f"{path}: partners: missing; write `partners: []` to mean no partners at all")
    try:
        return tuple(PartnerList.model_validate(data).partners)
    except ValidationError as exc:
        raise PartnerDataError(describe(str(path), exc)) from None
