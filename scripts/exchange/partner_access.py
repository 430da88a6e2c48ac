"""A fresh password for a fixed partner: a notice to its contact by e-mail, the password by SMS,
and a change forced at the first login (through PAM, so the partner's own choice meets the
policy)."""

from __future__ import annotations

import contextlib
import subprocess
from dataclasses import dataclass

from exchange import aging, auditlog, credentials, observe
from exchange.accounts import account_lock
from exchange.auditlog import actor
from exchange.errors import ExchangeError
from exchange.layout import Layout
from exchange.messaging import expiry_notices
from exchange.messaging.messages import Messages, mask_email, mask_phone, when
from exchange.messaging.transports import DeliveryError, send_email, send_sms
from exchange.partners import Partner
from exchange.policy import Policy
from exchange.site import Site


class PartnerAccessError(ExchangeError):
    pass


class LockoutNotCleared(PartnerAccessError):
    """The password was set and sent (and audited), but the failed-login tally stays."""

    def __init__(self, issued: NewCredentials, reason: credentials.CredentialError) -> None:
        super().__init__(f"{issued.partner.name}: password sent; {reason}")
        self.issued = issued


@dataclass(frozen=True)
class NewCredentials:
    partner: Partner
    password: str  # for --show-password only; never stored


def _require_account(policy: Policy, partner: Partner) -> None:
    if Layout(policy).kind_of(partner.name) != "partner":
        raise PartnerAccessError(f"{partner.name}: no partner account on this server; deploy the partner data first")
    if not partner.present:
        raise PartnerAccessError(f"{partner.name}: the partner is marked absent (locked); set present: true and deploy")


def new_credentials(policy: Policy, site: Site, messages: Messages, partner: Partner) -> NewCredentials:
    _require_account(policy, partner)
    password = credentials.generate_password(policy)
    # Expired from the start (below), it can be changed at a login until the inactive days are over.
    today = observe.shadow_today()
    expired_since = today - policy.passwords.aging.max_days - 1
    valid_until = when(observe.shadow_day(today + policy.passwords.aging.inactive_days), partner.language, site.zone)
    mail = messages.email(
        "partner-credentials-email",
        partner.language,
        to=partner.email,
        account=partner.name,
        organisation=partner.organisation,
        phone_masked=mask_phone(partner.phone),
        valid_until=valid_until,
        policy=policy,
    )
    sms = messages.sms("partner-credentials-sms", partner.language, password=password, valid_until=valid_until)
    try:
        with account_lock():
            before = credentials.shadow_entry(partner.name)
            credentials.set_password(partner.name, password)
    except credentials.CredentialError as error:
        raise PartnerAccessError(f"{error}\nnothing was sent; the partner's previous password still works") from None
    try:
        # Expired at once, by age: the first login (SFTP or web) must choose a new one, and an
        # unused one dies after the policy's inactive days. (`chage --lastday 0` would force the
        # change too, but PAM then skips the age checks: an unused password would work forever.)
        chage = aging.chage(aging.wanted("partner", password_set=True, policy=policy))
        with account_lock():
            subprocess.run([*chage, "--lastday", str(expired_since), partner.name], check=True, capture_output=True)
        send_email(site, mail)
        send_sms(site, partner.phone, sms)
    except BaseException as failure:
        try:
            with account_lock():
                credentials.restore(partner.name, before)
        except (subprocess.CalledProcessError, OSError) as undo:
            raise PartnerAccessError(
                f"{partner.name}: {credentials.command_failure(failure)}\nand putting the previous password back "
                f"failed too ({credentials.command_failure(undo)}): its old password may not work; run `exchange partner credentials "
                f"{partner.name}` again"
            ) from None
        if isinstance(failure, DeliveryError):
            raise PartnerAccessError(f"{failure}\nthe partner's previous password was put back") from None
        if isinstance(failure, subprocess.CalledProcessError):
            raise PartnerAccessError(
                f"{partner.name}: chage failed ({failure.stderr.decode(errors='replace').strip()}); "
                "the partner's previous password was put back"
            ) from None
        raise
    # The hand-out is on record before anything else can fail: the password went out.
    auditlog.record(
        "partner-credentials-issued",
        account=partner.name,
        by=actor(),
        recipient=f"{mask_email(partner.email)} {mask_phone(partner.phone)}",
    )
    issued = NewCredentials(partner=partner, password=password)
    with contextlib.suppress(OSError):  # at worst an expiry notice follows: harmless
        expiry_notices.mark_told(partner.name, expired_since)  # the hand-out mail says to change it
    try:
        credentials.reset_failures(partner.name)
    except credentials.CredentialError as error:
        raise LockoutNotCleared(issued, error) from None
    return issued
