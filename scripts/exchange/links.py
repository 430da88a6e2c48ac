"""One-time link accounts: issued by staff, reached with a web link (e-mail) and a password
(SMS), removed when their validity ends.

A link account is an ordinary chrooted SFTP account in the link group (exchange.accounts
makes it, exactly like a partner's). Beside it the tool keeps, root-only:
- links/<account>.json: the recipient's address and number (for resend and list), the
  staff note, times, who issued it, and the SHA-256 of the link token;
- link-tokens/<sha256 of token>: the account and expiry the web page looks a token up by.
The token itself exists only in the e-mail; the password only in the SMS.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import pwd
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field, StringConstraints, ValidationError

from exchange import auditlog, credentials, held, observe, paths
from exchange.accounts import (
    Step,
    StepFailed,
    WantedAccount,
    account_lock,
    account_uid,
    plan,
    removal_steps,
    run_steps,
)
from exchange.auditlog import actor
from exchange.errors import FAILED, REFUSED, ExchangeError
from exchange.layout import Layout
from exchange.messaging.messages import Messages, mask_email, mask_phone
from exchange.messaging.transports import DeliveryError, send_email, send_sms
from exchange.policy import Policy
from exchange.site import E164, Site
from exchange.validation import describe

TOKEN_BYTES = 32  # 256 bits
ACCOUNT_NAME = re.compile(paths.LINK_ACCOUNT_NAME)
TOKEN = re.compile(r"^[A-Za-z0-9_-]{43}$")  # secrets.token_urlsafe(TOKEN_BYTES)


class LinkError(ExchangeError):
    """The request cannot be done; the message says why, and nothing was changed."""

    status = REFUSED


class LinkRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    email: EmailStr
    phone: Annotated[str, StringConstraints(pattern=E164)] = Field(description="E.164, e.g. +31612345678")
    lang: Literal["nl", "en"] = "nl"
    note: Annotated[str, StringConstraints(max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$")] = ""
    days: int = Field(ge=1)
    notify_downloaded: bool = False


class LinkRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    account: str
    email: str
    phone: str
    lang: Literal["nl", "en"]
    note: str
    created: datetime.datetime
    expires: datetime.datetime
    issued_by: str
    token_sha256: str
    # Staff asked to hear when all its packages were downloaded (exchange.trail.delivery); a
    # record from before this existed has no such key and means no.
    notify_downloaded: bool = False

    @property
    def recipient(self) -> str:
        return f"{mask_email(self.email)} {mask_phone(self.phone)}"


def validate_request(
    policy: Policy, email: str, phone: str, lang: str, note: str, days: int | None, notify_downloaded: bool = False
) -> LinkRequest:
    days = policy.links.validity_days if days is None else days
    try:
        request = LinkRequest(
            email=email, phone=phone, lang=lang, note=note, days=days, notify_downloaded=notify_downloaded
        )
    except ValidationError as exc:
        message = describe("link issue", exc, prefix="--")
        if "--phone" in message:
            message += (
                "\n(the phone number must be in E.164 form: + country code and number, no spaces, e.g. +31612345678)"
            )
        raise LinkError(message) from None
    if request.days > policy.links.validity_days:
        raise LinkError(f"link issue: --days: at most {policy.links.validity_days} (policies.yaml links.validity_days)")
    return request


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class LinkStore:
    """The records beside the link accounts; written whole, then renamed into place."""

    def __init__(self, state_dir: Path = Path(paths.STATE_DIR)) -> None:
        self.records = state_dir / paths.LINK_RECORDS
        self.tokens = state_dir / paths.LINK_TOKENS

    def _write(self, path: Path, text: str, mode: int = 0o600) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        staged = path.with_name(f".{path.name}.tmp")
        descriptor = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        os.fchmod(descriptor, mode)  # whatever the caller's umask
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())  # never an empty record after a power cut
        staged.rename(path)

    def save(self, record: LinkRecord) -> None:
        # The record first: whatever fails after it, `delete` finds the token through it.
        self._write(self.records / f"{record.account}.json", record.model_dump_json(indent=2))
        self._write(
            self.tokens / record.token_sha256,
            json.dumps({"account": record.account, "expires": record.expires.isoformat()}),
            mode=0o640,  # the web page's group reads it (roles/portal.py: setgid directory, no listing)
        )

    def by_token(self, token: str, now: datetime.datetime) -> tuple[str, datetime.datetime] | None:
        """The link account a token opens and its expiry, read from the token index alone
        (what the web page may read); None for an unknown, revoked or expired token alike."""
        if not TOKEN.match(token):
            return None
        try:
            entry = json.loads((self.tokens / token_hash(token)).read_text(encoding="utf-8"))
            expires = datetime.datetime.fromisoformat(entry["expires"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return (entry["account"], expires) if expires > now else None

    def get(self, account: str) -> LinkRecord | None:
        """The record; None if there is none; LinkError naming the file if it cannot be read."""
        if not ACCOUNT_NAME.match(account):
            return None
        path = self.records / f"{account}.json"
        try:
            return LinkRecord.model_validate_json(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except ValidationError as error:
            raise LinkError(f"{path}: unreadable link record ({error.errors()[0]['msg']})") from None
        except (OSError, ValueError) as error:
            raise LinkError(f"{path}: unreadable link record ({error})") from None

    def all(self) -> list[LinkRecord]:
        """Every readable record; one that cannot be read is left out (see `unreadable`), so one
        bad file never stops the purge or the upload notices for the others."""
        records = [found for found in self._each() if isinstance(found, LinkRecord)]
        return sorted(records, key=lambda record: record.created)

    def unreadable(self) -> list[str]:
        """The records `all` leaves out, each with the reason."""
        return [str(found) for found in self._each() if isinstance(found, LinkError)]

    def _each(self) -> Iterator[LinkRecord | LinkError]:
        for path in sorted(self.records.glob(f"{paths.LINK_ACCOUNT_PREFIX}*.json")) if self.records.is_dir() else []:
            try:
                record = self.get(path.stem)
            except LinkError as error:
                yield error
                continue
            if record is not None:
                yield record

    def delete(self, account: str) -> None:
        """The record and the account's token; a token is found without its record too."""
        try:
            record = self.get(account)
        except LinkError:
            record = None
        tokens = [self.tokens / record.token_sha256] if record else self._tokens_of(account)
        for token in tokens:
            token.unlink(missing_ok=True)
        (self.records / f"{account}.json").unlink(missing_ok=True)

    def _tokens_of(self, account: str) -> list[Path]:
        found = []
        for path in self.tokens.iterdir() if self.tokens.is_dir() else []:
            try:
                if json.loads(path.read_text(encoding="utf-8")).get("account") == account:
                    found.append(path)
            except (OSError, ValueError, AttributeError):
                continue
        return found


@dataclass(frozen=True)
class Issued:
    record: LinkRecord
    password: str  # for --show-password only; never stored


@dataclass
class Links:
    """The link operations, with everything they depend on passed in."""

    policy: Policy
    site: Site
    messages: Messages
    store: LinkStore
    now: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC)

    @property
    def layout(self) -> Layout:
        return Layout(self.policy)

    def _new_account_name(self) -> str:
        while True:
            name = paths.LINK_ACCOUNT_PREFIX + "".join(
                secrets.choice(paths.LINK_ID_ALPHABET) for _ in range(paths.LINK_ID_LENGTH)
            )
            try:
                pwd.getpwnam(name)
            except KeyError:
                return name

    def _create_account(self, name: str, expires: datetime.datetime, password: str) -> None:
        observed = observe.observe(self.layout.observe_params([name]))
        if name in observed["accounts"]:
            raise LinkError(f"{name}: exists already", status=FAILED)
        # pam_unix refuses an account from its expiry day on (UTC days): the day after the
        # validity ends, so no minute is lost; the purge removes it within the hour after.
        expire_day = (expires + datetime.timedelta(days=1)).date().isoformat()
        run_steps(
            [
                *plan(self.layout, [WantedAccount(name=name, kind="link")], observed, manage_kinds=set()),
                Step(name, "account expiry", f"usermod --expiredate {expire_day} {name}"),
            ]
        )
        credentials.set_password(name, password)

    def require(self, account: str) -> LinkRecord:
        record = self.store.get(account)
        if record is None or self.layout.kind_of(account) != "link":
            raise LinkError(f"{account}: no such link account (see `exchange link list`)")
        return record

    def issue(self, request: LinkRequest) -> Issued:
        now = self.now().replace(microsecond=0)
        expires = now + datetime.timedelta(days=request.days)
        name = self._new_account_name()
        token = secrets.token_urlsafe(TOKEN_BYTES)
        password = credentials.generate_password(self.policy)
        # Rendered before anything exists, so a template error leaves nothing behind.
        mail = self.messages.email(
            "link-email", request.lang, to=request.email, link=f"{self.site.portal_url}/l/{token}", expires=expires
        )
        sms = self.messages.sms("link-sms", request.lang, password=password, expires=expires, resent=False)
        record = LinkRecord(
            account=name,
            email=request.email,
            phone=request.phone,
            lang=request.lang,
            note=request.note,
            created=now,
            expires=expires,
            issued_by=actor(),
            token_sha256=token_hash(token),
            notify_downloaded=request.notify_downloaded,
        )
        created = False
        try:
            with account_lock():
                created = True
                self._create_account(name, expires, password)
            self.store.save(record)
            send_email(self.site, mail)
            send_sms(self.site, request.phone, sms)
        except BaseException as failure:
            if created:
                try:
                    remove_link(
                        self.layout,
                        self.store,
                        name,
                        "link-issue-rolled-back",
                        by=record.issued_by,
                        reason=_reason(failure),
                    )
                except (StepFailed, OSError) as rollback:
                    raise LinkError(
                        f"{failure}\nand undoing it failed too ({rollback}): the link cannot open (its token is "
                        f"gone), but the account {name} may remain; remove it with `exchange link revoke {name}`",
                        status=FAILED,
                    ) from None
            if isinstance(failure, (DeliveryError, StepFailed, credentials.CredentialError, OSError)):
                raise LinkError(
                    f"{failure}\nnothing was issued: the account {name} and its folders were removed", status=FAILED
                ) from None
            raise
        auditlog.record(
            "link-issued",
            account=name,
            uid=account_uid(name),  # the access trail believes this account's SFTP lines from this uid only
            by=record.issued_by,
            recipient=record.recipient,
            expires=expires.isoformat(),
            days=request.days,
            notify_downloaded=request.notify_downloaded,
        )
        return Issued(record=record, password=password)

    def resend(self, account: str) -> Issued:
        """A new password by SMS; the old one stops working. If the SMS fails the old one stays."""
        record = self.require(account)
        password = credentials.generate_password(self.policy)
        sms = self.messages.sms("link-sms", record.lang, password=password, expires=record.expires, resent=True)
        with account_lock():
            before = credentials.shadow_entry(account)
            credentials.set_password(account, password)  # CredentialError: nothing was sent
        try:
            send_sms(self.site, record.phone, sms)
        except BaseException:
            with account_lock():
                credentials.restore(account, before)
            raise
        # On record before anything else can fail: the password went out.
        auditlog.record("link-password-resent", account=account, by=actor(), recipient=mask_phone(record.phone))
        try:
            credentials.reset_failures(account)
        except credentials.CredentialError as error:
            raise credentials.CredentialError(f"{account}: the new password was sent; {error}") from None
        return Issued(record=record, password=password)

    def revoke(self, account: str, discard_uploads: bool = False) -> Revoked:
        """End the link now. Its uploads are kept for staff, as at a link's end (exchange.held),
        unless `discard_uploads`. The record may be unreadable: account and token go all the same."""
        try:
            record = self.require(account)
        except LinkError:
            if not ACCOUNT_NAME.match(account) or self.layout.kind_of(account) != "link":
                raise
            record = None
        recipient = record.recipient if record else "unknown (unreadable record)"
        by = actor()
        if discard_uploads:
            kept, fields = held.Held(), {"uploads_discarded": held.upload_count(self.layout, account)}
        else:
            kept, fields = held.keep_uploads(self.layout, account, _recorder(by), recipient=recipient), {}
        remove_link(self.layout, self.store, account, "link-revoked", by=by, recipient=recipient, **fields)
        return Revoked(record, kept)


@dataclass(frozen=True)
class Revoked:
    record: LinkRecord | None  # None: its record could not be read
    kept: held.Held  # the uploads now held for staff


def _recorder(by: str) -> Callable:
    return lambda event, **fields: auditlog.record(event, by=by, **fields)


def remove_link(layout: Layout, store: LinkStore, name: str, event: str, **fields) -> None:
    """The account with its chroot, keys and log socket, then its record and token (those go
    even if removing the account fails: the link must not open again)."""
    try:
        with account_lock():
            try:
                pwd.getpwnam(name)
            except KeyError:
                pass  # only the record is left (the account went by hand)
            else:
                run_steps(removal_steps(layout, name, "link", event=event, **fields))
    finally:
        store.delete(name)


def expired_links(store: LinkStore, observed: dict, now: datetime.datetime) -> list[LinkRecord]:
    """Records whose time is over, by the record's expiry or by the account's (set by hand)."""
    over = []
    for record in store.all():
        shadow = (observed["accounts"].get(record.account) or {}).get("shadow") or {}
        if record.expires <= now or (shadow.get("expire") is not None and shadow["expire"] <= observed["today"]):
            over.append(record)
    return over


def _reason(failure: BaseException) -> str:
    return (
        type(failure).__name__ if isinstance(failure, (KeyboardInterrupt, SystemExit)) else str(failure).splitlines()[0]
    )
