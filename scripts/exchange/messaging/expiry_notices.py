"""Password expiry notices: an e-mail to a partner's contact when its password is about to
expire, once per password.

sshd shows PAM's expiry warning only to OpenSSH key logins; a partner on WinSCP with a
password or on the web page learns of it when the password has expired, and one who logs in
rarely may not log in at all before the inactive days end, when the account no longer opens
and staff must hand out a new password. The notice says when it expires, that the next login
after that asks for a new one, and until when that is possible.

Run from the purge's cron job, after the upload notices. Which password a notice was for is
remembered per account (expiry-notices/<account>.json: the shadow day it was last changed), so
a partner is told once per password. A password staff hand out is expired from the start and
needs no notice: the hand-out mail says to change it at the first login (`mark_told`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from exchange import auditlog, observe, paths
from exchange.messaging.messages import Messages, when
from exchange.messaging.transports import DeliveryError, send_email
from exchange.partners import Partner, PartnerDataError, load_partners
from exchange.policy import Policy
from exchange.site import Site


@dataclass(frozen=True)
class Expiring:
    partner: Partner
    changed: int  # shadow's day of the last change: which password the notice is for
    expires: int  # the day (UTC, from its start) on which the next login must choose a new password
    locks: int | None  # the day (UTC, from its start) on which it no longer opens; None: never


def expiring(partners: Iterable[Partner], shadow: dict[str, dict], today: int) -> list[Expiring]:
    """Present partners with a password that expires within its warning days, or has expired
    and can still be changed at a login."""
    found = []
    for partner in partners:
        entry = shadow.get(partner.name)
        if not partner.present or not entry or not entry["password_set"]:
            continue
        changed, max_days, warn = entry["lastchg"], entry["max_days"], entry["warn_days"] or 0
        if not changed or max_days is None or max_days < 0:
            continue  # no aging, or a change forced by hand (`chage -d 0`): nothing to count down
        if entry["expire"] is not None and entry["expire"] <= today:
            continue  # locked: the partner data says it is gone
        # As pam_unix counts: a change is due once more than max days have passed since the
        # last one, and the account closes once more than max + inactive days have.
        expires = changed + max_days + 1
        inactive = entry["inactive_days"]
        locks = expires + inactive if inactive is not None and inactive >= 0 else None
        if expires - today <= warn and (locks is None or today < locks):
            found.append(Expiring(partner, changed, expires, locks))
    return found


def _notice_file(state_dir: Path, account: str) -> Path:
    return state_dir / paths.EXPIRY_NOTICES / f"{account}.json"


def mark_told(account: str, changed: int, state_dir: Path | None = None) -> None:
    """No notice for the password of this change day (one staff handed out)."""
    path = _notice_file(state_dir or Path(paths.STATE_DIR), account)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    staged = path.with_name(f".{path.name}.tmp")
    staged.write_text(json.dumps({"changed": changed}))
    staged.rename(path)


def _told(state_dir: Path, account: str) -> int | None:
    try:
        return json.loads(_notice_file(state_dir, account).read_text()).get("changed")
    except (OSError, ValueError, AttributeError):
        return None  # never told, or a state file that cannot be read: tell (once more)


def notify_password_expiry(
    policy: Policy,
    site: Site,
    messages: Messages,
    out: Callable[[str], None] = print,
    state_dir: Path = Path(paths.STATE_DIR),
    today: int | None = None,
) -> tuple[int, list[str]]:
    """(notices sent, failures). A failed notice is tried again on the next run."""
    if not Path(paths.PARTNERS).exists():
        return 0, []  # partners are not managed on this host
    try:
        partners = load_partners(paths.PARTNERS)
    except PartnerDataError as error:
        return 0, [f"no expiry notices: {error}"]
    today = observe.shadow_today() if today is None else today
    sent, failures = 0, []
    for item in expiring(partners, observe.shadow(), today):
        name = item.partner.name
        if _told(state_dir, name) == item.changed:
            continue
        lang = item.partner.language
        mail = messages.email(
            "password-expiry-email",
            lang,
            to=item.partner.email,
            account=name,
            organisation=item.partner.organisation,
            expires=when(observe.shadow_day(item.expires), lang, site.zone),
            locks=when(observe.shadow_day(item.locks), lang, site.zone) if item.locks is not None else None,
            expired=item.expires <= today,
            policy=policy,
        )
        try:
            send_email(site, mail)
        except DeliveryError as error:
            failures.append(f"expiry notice not sent: {name}: {error}")
            continue
        mark_told(name, item.changed, state_dir)
        sent += 1
        out(
            auditlog.record(
                "password-expiry-notice-sent", account=name, expires=observe.shadow_day(item.expires).date().isoformat()
            )
        )
    return sent, failures
