"""The audit trail: SFTP sessions and file operations per account, and the exchange's own
audit log (one JSON line per event), both written by rsyslog."""

from pyinfra.api import deploy
from pyinfra.operations import apt, files

from exchange.accounts import LOG_SOCKET_DIR
from exchange.auditlog import AUDIT_TAG
from roles.ops import config_file
from roles.templating import render

LOG_DIR = "/var/log/imaging-exchange"


@deploy("Audit trail")
def logging() -> None:
    apt.packages(name="Install rsyslog", packages=["rsyslog"], no_recommends=True)
    files.directory(name="Log directory", path=LOG_DIR, user="root", group="adm", mode="750")
    files.directory(name="Chroot log socket directory", path=LOG_SOCKET_DIR, user="root", group="root", mode="755")
    config_file(
        name="Route SFTP and audit messages to their logs",
        dest="/etc/rsyslog.d/30-imaging-exchange.conf",
        content=render("logging/rsyslog.conf.j2", log_dir=LOG_DIR, socket_dir=LOG_SOCKET_DIR, audit_tag=AUDIT_TAG),
        # rsyslog checks its whole configuration only; a bad one is refused before the restart.
        apply="rsyslogd -N1 >/dev/null && systemctl restart rsyslog",
    )
    config_file(
        name="Rotate the exchange logs",
        dest="/etc/logrotate.d/imaging-exchange",
        content=render("logging/logrotate.j2", log_dir=LOG_DIR),
    )
