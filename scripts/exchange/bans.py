"""Source bans (fail2ban, roles/bans.py): what the deploy, `exchange audit-read` and the audit
(BAN-01) share."""

SSHD_JAIL = "sshd"  # Debian's jail and filter for OpenSSH
PORTAL_JAIL = "imaging-exchange-portal"  # the web page's failed logins in the audit log
JAILS = (SSHD_JAIL, PORTAL_JAIL)
# The web page logs every user in through sshd on loopback: banning it would close the page.
NEVER_BANNED = ("127.0.0.1/8", "::1")
# On a host that cannot set firewall rules (host data source_bans: false) the deploy writes this,
# root's, instead of installing fail2ban; the audit takes BAN-01 as not applicable only with it.
OFF_TEXT = "source bans are off by host data (source_bans: false): this host cannot set firewall rules\n"
