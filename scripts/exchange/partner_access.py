"""A fresh password for a fixed partner: a notice to its contact by e-mail, the password by SMS,
and a change forced at the first login (through PAM, so the partner's own choice meets the
policy)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

from exchange import auditlog, credentials
from exchange.accounts import Layout, account_lock
from exchange.auditlog import actor
from exchange.messages import Messages, mask_email, mask_phone
from exchange.partners import Partner
from exchange.policy import Policy
from exchange.site import Site
from exchange.transports import DeliveryError, send_email, send_sms


class PartnerAccessError(Exception):
    pass


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
    mail = messages.email(
        "partner-credentials-email",
        partner.language,
        to=partner.email,
        account=partner.name,
        organisation=partner.organisation,
        phone_masked=mask_phone(partner.phone),
        policy=policy,
    )
    sms = messages.sms("partner-credentials-sms", partner.language, password=password)
    with account_lock():
        before = credentials.shadow_entry(partner.name)
        credentials.set_password(partner.name, password)
    try:
        # Expired at once: the first login (SFTP or web) must choose a new one.
        with account_lock():
            subprocess.run(["chage", "--lastday", "0", partner.name], check=True, capture_output=True)
        send_email(site, mail)
        send_sms(site, partner.phone, sms)
    except BaseException as failure:
        with account_lock():
            credentials.restore(partner.name, before)
        if isinstance(failure, DeliveryError):
            raise PartnerAccessError(f"{failure}\nthe partner's previous password was put back") from None
        if isinstance(failure, subprocess.CalledProcessError):
            raise PartnerAccessError(
                f"{partner.name}: chage failed ({failure.stderr.decode(errors='replace').strip()}); "
                "the partner's previous password was put back"
            ) from None
        raise
    credentials.reset_failures(partner.name)
    auditlog.record(
        "partner-credentials-issued",
        account=partner.name,
        by=actor(),
        recipient=f"{mask_email(partner.email)} {mask_phone(partner.phone)}",
    )
    return NewCredentials(partner=partner, password=password)
