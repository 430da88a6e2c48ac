"""Source bans (issue 14, rule 11: lockout is not a weapon). pam_faillock locks an account after
passwords.lockout.deny failures from anywhere, so any address could keep a partner locked out.
fail2ban bans an address that fails logins, against one account or many, from every TCP port
(nftables) before that: Debian's `sshd` jail, and one for the web page's failed logins in the
audit log. Loopback is never banned: the web page logs every user in through sshd on 127.0.0.1.

A host that cannot set firewall rules (host data source_bans: false) gets nothing installed and
a root-owned marker instead, which the audit (BAN-01) requires before it calls bans not applicable.
"""

from __future__ import annotations

import shlex

from pyinfra import logger
from pyinfra.api import deploy
from pyinfra.operations import apt, files, systemd

from exchange import paths
from exchange.auditlog import audit_line
from exchange.bans import JAILS, NEVER_BANNED, OFF_TEXT, PORTAL_JAIL, SSHD_JAIL
from exchange.policy import Policy
from roles.ops import config_file
from roles.settings import HostSettings
from roles.templating import render

CONFIG_DIR = "/etc/fail2ban"
JAIL_FILE = "jail.d/imaging-exchange.conf"  # after Debian's defaults-debian.conf, so ours win
FILTER_FILE = f"filter.d/{PORTAL_JAIL}.conf"
# python3-systemd: the sshd jail reads the journal; python3-pyinotify: the audit log at once, not polled.
PACKAGES = ["fail2ban", "nftables", "python3-systemd", "python3-pyinotify"]
APPLY = "systemctl reload-or-restart fail2ban"


# A failed web login as exchange.auditlog writes it: the filter must find the address in it.
FAILED_WEB_LOGIN = audit_line("portal-login-failed", kind="partner", account=None, ip="192.0.2.1", reason="refused")


def config_test(relative: str) -> str:
    """fail2ban's own test of the whole configuration with the staged file in its place (a
    `validate` for config_file: `{path}` is the staged file; a status, not `exit`)."""
    return (
        f'd=$(mktemp -d) && cp -a {CONFIG_DIR}/. "$d" && cp {{path}} "$d/{relative}" && '
        'fail2ban-client -c "$d" -t >/dev/null; rc=$?; rm -rf "$d"; [ $rc -eq 0 ]'
    )


def filter_test() -> str:
    """The staged filter finds the failed web login (read as a file of its own: fail2ban-regex
    would load the live one by name from filter.d)."""
    line = shlex.quote(FAILED_WEB_LOGIN).replace("{", "{{").replace("}", "}}")  # str.format in config_file
    return (
        'd=$(mktemp -d) && cp {path} "$d/filter.conf" && '
        f'fail2ban-regex {line} "$d/filter.conf" | grep -q "^Lines: 1 lines, 0 ignored, 1 matched,"; '
        'rc=$?; rm -rf "$d"; [ $rc -eq 0 ]'
    )


@deploy("Source bans")
def bans(policy: Policy, settings: HostSettings) -> None:
    if not settings.source_bans:
        logger.warning("Source bans are OFF on this host (host data source_bans: false): fail2ban is not installed")
        config_file(
            name=f"Source bans OFF by host data: marker {paths.SOURCE_BANS_OFF}",
            dest=paths.SOURCE_BANS_OFF,
            content=OFF_TEXT,
        )
        return
    files.file(name="No source-bans-off marker", path=paths.SOURCE_BANS_OFF, present=False)
    apt.packages(name="Install fail2ban and nftables", packages=PACKAGES, no_recommends=True)
    config_file(
        name="fail2ban filter: the web page's failed logins",
        dest=f"{CONFIG_DIR}/{FILTER_FILE}",
        content=render("bans/portal-filter.conf.j2"),
        validate=filter_test(),
        apply=APPLY,
    )
    config_file(
        name=f"fail2ban jails: {', '.join(JAILS)}",
        dest=f"{CONFIG_DIR}/{JAIL_FILE}",
        content=render(
            "bans/jail.conf.j2",
            bans=policy.source_bans,
            never_banned=NEVER_BANNED,
            sshd_jail=SSHD_JAIL,
            portal_jail=PORTAL_JAIL,
            audit_log=paths.AUDIT_LOG,
        ),
        validate=config_test(JAIL_FILE),
        apply=APPLY,
    )
    systemd.service(name="fail2ban runs", service="fail2ban", running=True, enabled=True)
