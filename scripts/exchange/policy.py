"""The exchange policy: one validated model for deploy, on-host tools and audit.

`policies.yaml` is the single source of truth. Every consumer calls `load_policy()`;
nobody reads the YAML by hand. Unknown keys, wrong types and inconsistent values stop
with a `PolicyError` whose message names the file and the key.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from exchange import paths
from exchange.bans import JAILS
from exchange.errors import REFUSED, ExchangeError
from exchange.invoker import Invoker, read_named
from exchange.validation import describe, load_yaml, yaml_problem

# Where the deploy installs the policy on a server; the tools read it from there.
# Lets an admin point deploy or tools at another policy file.
POLICY_ENV = "EXCHANGE_POLICY"

GroupName = Annotated[str, StringConstraints(pattern=paths.UNIX_NAME)]
# A single path component: no slashes, no dot names.
FolderName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
AlgorithmName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9@._+-]+$")]
CRON_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))


def _cron_field(field: str, low: int, high: int) -> bool:
    """One cron field of numbers, ranges, lists and steps, every number within [low, high]."""
    for part in field.split(","):
        match = re.fullmatch(r"(\*|(\d+)(?:-(\d+))?)(?:/(\d+))?", part)
        if not match:
            return False
        _, first, last, step = match.groups()
        numbers = [int(n) for n in (first, last) if n is not None]
        if any(not low <= n <= high for n in numbers) or (len(numbers) == 2 and numbers[0] > numbers[1]):
            return False
        if step is not None and (int(step) == 0 or (first is not None and last is None)):
            return False  # Debian's cron takes a step after * or a range only, never "5/10"
    return True


class PolicyError(ExchangeError):
    """A policy file that cannot be used. The message is meant for the admin as is."""

    status = REFUSED


class Section(BaseModel):
    # Strict: a typo in a key or a quoted number is an error, never silently ignored.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class SftpPolicy(Section):
    """The SFTP subsystem that partners and link accounts are confined to."""

    umask: Annotated[str, StringConstraints(pattern=r"^0[0-7]{3}$")] = "0027"
    log_level: Literal["INFO", "VERBOSE", "DEBUG"] = "INFO"


class SshdPolicy(Section):
    """OpenSSH server settings. Defaults: CIS Debian 12 and dev-sec ssh-baseline."""

    log_level: Literal["INFO", "VERBOSE"] = "VERBOSE"
    max_auth_tries: int = Field(4, ge=1, le=6)
    max_sessions: int = Field(10, ge=1, le=100)
    max_startups: Annotated[str, StringConstraints(pattern=r"^\d+(:\d+:\d+)?$")] = "10:30:60"
    login_grace_time: int = Field(60, ge=10, le=120)
    client_alive_interval: int = Field(300, ge=0, le=900)
    client_alive_count_max: int = Field(3, ge=0, le=10)
    kex_algorithms: list[AlgorithmName] = Field(min_length=1)
    ciphers: list[AlgorithmName] = Field(min_length=1)
    macs: list[AlgorithmName] = Field(min_length=1)
    host_key_algorithms: list[AlgorithmName] = Field(min_length=1)
    rsa_host_key_bits: int = Field(4096, ge=3072)
    # sshd's RequiredRSASize applies to every RSA key, the users' too: ssh-keygen's default is
    # 3072 bits, the floor of ssh-audit's guide for client keys.
    rsa_min_key_bits: int = Field(3072, ge=2048)
    moduli_min_bits: int = Field(3071, ge=2047)
    sftp: SftpPolicy = SftpPolicy()

    @model_validator(mode="after")
    def _host_key_meets_the_minimum(self) -> SshdPolicy:
        if self.rsa_host_key_bits < self.rsa_min_key_bits:
            raise ValueError(
                f"rsa_host_key_bits ({self.rsa_host_key_bits}) must not be below rsa_min_key_bits ({self.rsa_min_key_bits})"
            )
        return self


class AccountsPolicy(Section):
    """Where exchange data lives and which groups own what."""

    root: str = paths.DEFAULT_EXCHANGE_ROOT
    partner_group: GroupName = "exchange-partners"
    link_group: GroupName = "exchange-links"
    staff_group: GroupName = "exchange-staff"
    auditor_group: GroupName = "exchange-auditors"
    download_folder: FolderName = "download"
    upload_folder: FolderName = "upload"
    # Folders recipients or staff make below a download or upload folder, or in what staff hand
    # to `exchange package`: deeper ones are named and not entered, so no account can make a
    # walk of the tools recurse until it fails (a study on a disc is 4 or 5 levels deep).
    max_folder_depth: int = Field(32, ge=4, le=256)

    @field_validator("root")
    @classmethod
    def _absolute_clean(cls, value: str) -> str:
        path = PurePosixPath(value)
        if not path.is_absolute() or ".." in path.parts or str(path) != value or path == PurePosixPath("/"):
            raise ValueError("must be an absolute, normalised directory path other than /")
        return value

    @model_validator(mode="after")
    def _distinct(self) -> AccountsPolicy:
        groups = [self.partner_group, self.link_group, self.staff_group, self.auditor_group]
        if len(set(groups)) != len(groups):
            raise ValueError("partner_group, link_group, staff_group and auditor_group must all differ")
        if self.download_folder == self.upload_folder:
            raise ValueError("download_folder and upload_folder must differ")
        if "dev" in (self.download_folder, self.upload_folder):
            raise ValueError("download_folder and upload_folder may not be 'dev' (the chroot's log socket lives there)")
        return self


class PasswordQuality(Section):
    """pam_pwquality. Defaults: CIS Debian 12, section 5.3.3.2."""

    minlen: int = Field(14, ge=8, le=128)
    minclass: int = Field(3, ge=0, le=4)
    dictcheck: bool = True
    maxrepeat: int = Field(3, ge=0)
    maxsequence: int = Field(3, ge=0)
    difok: int = Field(2, ge=0)
    enforce_for_root: bool = True


class PasswordHistory(Section):
    """pam_pwhistory."""

    remember: int = Field(24, ge=0, le=400)


class Lockout(Section):
    """pam_faillock."""

    deny: int = Field(5, ge=1, le=20)
    unlock_time: int = Field(900, ge=0)
    fail_interval: int = Field(900, ge=1)


class PasswordAging(Section):
    """Shadow aging for partner accounts (login.defs and chage)."""

    min_days: int = Field(1, ge=0)
    max_days: int = Field(90, ge=1, le=99999)
    warn_days: int = Field(14, ge=0)
    # Days an expired password can still be changed at a login; 0 would close an account the
    # moment its password expires, and a password staff hand out (expired from the start) at once.
    inactive_days: int = Field(30, ge=1)

    # After the model, not per field: pydantic runs no field validator on a default, so a
    # field check would miss `min_days: 120` beside the default max_days.
    @model_validator(mode="after")
    def _in_order(self) -> PasswordAging:
        if self.max_days < self.min_days:
            raise ValueError(f"max_days ({self.max_days}) must not be below min_days ({self.min_days})")
        if self.warn_days >= self.max_days:
            raise ValueError(f"warn_days ({self.warn_days}) must be below max_days ({self.max_days})")
        return self


class PasswordPolicy(Section):
    quality: PasswordQuality = PasswordQuality()
    history: PasswordHistory = PasswordHistory()
    lockout: Lockout = Lockout()
    aging: PasswordAging = PasswordAging()


class RetentionPolicy(Section):
    """How long files stay, and when the purge runs."""

    days: int = Field(7, ge=1, le=365)
    purge_schedule: str = "17 * * * *"

    @field_validator("purge_schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        fields = value.split()
        if len(fields) != 5 or not all(
            _cron_field(f, low, high) for f, (low, high) in zip(fields, CRON_RANGES, strict=True)
        ):
            # cron skips a line it cannot read: the purge would silently never run
            raise ValueError(
                "must be five cron fields (minute 0-59, hour 0-23, day 1-31, month 1-12, weekday 0-7), e.g. '17 * * * *'"
            )
        return value


class LinkPolicy(Section):
    """One-time link accounts."""

    validity_days: int = Field(7, ge=1)
    # A link whose packages were not all downloaded gets one reminder to its recipient this many
    # days before it ends, or half way through a shorter link (0: none).
    reminder_days_before_end: int = Field(2, ge=0)


class AuditPolicy(Section):
    """The access trail (exchange.trail): who saw which patient's images."""

    # Months of the trail are kept this long (NEN 7513's usual term), then removed by `exchange purge`.
    retention_years: int = Field(5, ge=1, le=100)


class PortalPolicy(Section):
    """The secure web page (scripts/exchange/portal): limits for recipients and partners."""

    service_user: GroupName = "exchange-portal"  # runs the portal; no access to the exchange folders
    idle_minutes: int = Field(15, ge=1, le=240)  # a web session ends after this long without a request
    upload_max_mb: int = Field(4096, ge=1, le=1_048_576)  # largest single upload through the page
    login_failures_per_ip: int = Field(20, ge=1)  # failed logins from one address before it must wait
    login_failure_window_seconds: int = Field(900, ge=60)  # ... for this long
    login_requests_per_minute: int = Field(30, ge=1)  # nginx: login form posts per address
    max_sessions: int = Field(200, ge=1, le=10_000)  # open web sessions (each holds one SFTP session)
    # One account's open web sessions: a new login beyond it ends that account's least recently
    # used one, so no account can take the pool from the others.
    max_sessions_per_account: int = Field(5, ge=1, le=100)
    # One account's downloads and uploads at once, over all its sessions: each holds the portal's
    # and nginx's buffers, so none may start them without end.
    max_transfers_per_account: int = Field(8, ge=1, le=100)
    connections_per_address: int = Field(32, ge=4, le=10_000)  # nginx: open connections from one address

    @model_validator(mode="after")
    def _per_account_within_the_pool(self) -> PortalPolicy:
        if self.max_sessions_per_account > self.max_sessions:
            raise ValueError(
                f"max_sessions_per_account ({self.max_sessions_per_account}) must not exceed max_sessions "
                f"({self.max_sessions})"
            )
        return self


class SourceBansPolicy(Section):
    """fail2ban: an address that fails logins (SSH or the web page, any accounts) is banned from
    every port before it can lock an account out (pam_faillock counts failures per account,
    from anywhere)."""

    max_failures: int = Field(2, ge=1, le=18)  # failed logins from one address, per way in ...
    find_seconds: int = Field(900, ge=60, le=86_400)  # ... within this window ban it
    ban_seconds: int = Field(1200, ge=60, le=604_800)  # for this long


class NoticesPolicy(Section):
    """The upload notices staff get (`exchange notify-uploads`, after every purge)."""

    # A contact sheet (one picture per series, exchange.dicom.contactsheet) of every DICOM zip or
    # folder an upload brings, kept for staff in {accounts.root}/contact-sheets/<account>/ under the
    # retention; the notice names where it is and carries no image. Off unless asked for: the job
    # then decodes what partners and link recipients upload, unasked (within the caps of `exchange
    # inspect`, in a confined renderer; docs/staff.md).
    upload_contact_sheets: bool = False


class Policy(Section):
    sshd: SshdPolicy
    accounts: AccountsPolicy = AccountsPolicy()
    passwords: PasswordPolicy = PasswordPolicy()
    retention: RetentionPolicy = RetentionPolicy()
    links: LinkPolicy = LinkPolicy()
    portal: PortalPolicy = PortalPolicy()
    source_bans: SourceBansPolicy = SourceBansPolicy()
    notices: NoticesPolicy = NoticesPolicy()
    audit: AuditPolicy = AuditPolicy()

    @model_validator(mode="after")
    def _portal_user_apart(self) -> Policy:
        accounts = self.accounts
        groups = {accounts.partner_group, accounts.link_group, accounts.staff_group, accounts.auditor_group}
        if self.portal.service_user in groups:
            # The portal must hold no file privileges of its own.
            raise ValueError(f"portal.service_user ({self.portal.service_user}) must not be one of the account groups")
        return self

    @model_validator(mode="after")  # not a field validator: those skip a section left at its default
    def _links_within_retention(self) -> Policy:
        if self.links.validity_days > self.retention.days:
            # A link that outlives its files would open an empty page.
            raise ValueError(
                f"links.validity_days ({self.links.validity_days}) must not exceed retention.days ({self.retention.days})"
            )
        return self

    @model_validator(mode="after")
    def _banned_before_locked(self) -> Policy:
        """One address alone never locks an account. fail2ban counts each way in (SSH, the web
        page) in a jail of its own: one below max_failures on each, the failure that bans, and
        the attempt already under way when the ban lands stay below deny. Failures paced to dodge
        the ban's window fall within faillock's too; and when the ban ends, faillock has forgotten
        the failures before it, even one that took the longest an attempt may (sshd's login grace time)."""
        bans, lockout = self.source_bans, self.passwords.lockout
        ways = len(JAILS)
        if ways * (bans.max_failures - 1) + 2 >= lockout.deny:
            raise ValueError(
                f"source_bans.max_failures ({bans.max_failures}) must be at most {(lockout.deny - 3) // ways + 1} "
                f"with passwords.lockout.deny {lockout.deny}: each of the {ways} ways in counts its own failures, "
                f"up to max_failures - 1 before a ban, then the one that bans and the attempt under way"
            )
        if bans.find_seconds < lockout.fail_interval:
            raise ValueError(
                f"source_bans.find_seconds ({bans.find_seconds}) must not be below passwords.lockout.fail_interval "
                f"({lockout.fail_interval})"
            )
        if bans.ban_seconds < lockout.fail_interval + self.sshd.login_grace_time:
            raise ValueError(
                f"source_bans.ban_seconds ({bans.ban_seconds}) must be at least passwords.lockout.fail_interval + "
                f"sshd.login_grace_time ({lockout.fail_interval + self.sshd.login_grace_time})"
            )
        return self


class LoadedPolicy(BaseModel):
    """A policy together with where it came from (the audit reports the digest)."""

    model_config = ConfigDict(frozen=True)

    path: Path
    sha256: str
    policy: Policy


def parse_policy(text: str, path: Path) -> Policy:
    """Validate policy text; `path` is only used in messages."""
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        raise PolicyError(f"{path}: {yaml_problem(exc)}") from None
    if not isinstance(data, dict):
        raise PolicyError(f"{path}: (top level): must be a mapping of policy sections")
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(describe(str(path), exc)) from None


def default_policy_path() -> Path:
    """The policy a tool uses when none is named: $EXCHANGE_POLICY, else the installed one."""
    return Path(os.environ.get(POLICY_ENV) or paths.POLICY)


def load_policy(path: Path | str | None = None, who: Invoker | None = None) -> LoadedPolicy:
    """`who`: read the file with this person's rights (a file they named; None: the tool's own)."""
    path = Path(path) if path is not None else default_policy_path()
    try:
        raw = read_named(path, who)
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read policy file: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PolicyError(f"{path}: not UTF-8 text") from None
    return LoadedPolicy(path=path, sha256=hashlib.sha256(raw).hexdigest(), policy=parse_policy(text, path))
