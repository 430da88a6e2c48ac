"""The audit trail: SFTP sessions and file operations per account, and the exchange's own
audit log (one JSON line per event), both written by rsyslog; the audit log only from its own
socket, which root and the web page's service alone can reach."""

import shlex

from pyinfra import host
from pyinfra.api import FactBase, deploy, operation
from pyinfra.operations import apt, files

from exchange import paths
from roles.ops import config_file
from roles.service_user import service_account
from roles.templating import render


class AttributeFlags(FactBase):
    """The ext2-style attribute flags of a file (lsattr), or None if it does not exist."""

    def command(self, path: str) -> str:
        q = shlex.quote(path)
        return f"if [ -f {q} ]; then lsattr -d {q} | cut -d' ' -f1; fi"

    def process(self, output: list[str]) -> str | None:
        return output[0] if output else None


@operation()
def append_only(path: str, user: str = "root", group: str = "adm", mode: str = "640"):
    """The file exists and can only be appended to, even by root (chattr +a)."""
    flags = host.get_fact(AttributeFlags, path=path)
    if flags is not None and "a" in flags:
        host.noop(f"{path} is append-only")
        return
    q = shlex.quote(path)
    if flags is None:
        yield f"install -m {mode} -o {user} -g {group} /dev/null {q}"
    yield f"chattr +a {q}"


@deploy("Audit trail")
def logging(portal_user: str | None) -> None:
    """`portal_user`: the web page's service user, which writes its own records (portal-*)."""
    apt.packages(
        name="Install rsyslog, logrotate and chattr", packages=["rsyslog", "logrotate", "e2fsprogs"], no_recommends=True
    )
    files.directory(name="Log directory", path=paths.LOG_DIR, user="root", group="adm", mode="750")
    files.directory(
        name="Chroot log socket directory", path=paths.LOG_SOCKETS_DIR, user="root", group="root", mode="755"
    )
    config_file(
        name="rsyslog may restart as often as accounts come and go",
        dest="/etc/systemd/system/rsyslog.service.d/imaging-exchange.conf",
        # Every new chroot needs a new /dev/log socket, which rsyslog only opens at a start:
        # twenty link accounts issued in a minute must not hit systemd's start rate limit.
        # The host's own syslog socket is systemd's (syslog.socket), so a restart loses no
        # host message; a chroot socket is away for the restart itself (about 30 ms).
        content="# Managed by imaging-exchange (roles/logging.py).\n[Unit]\nStartLimitIntervalSec=0\n",
        apply="systemctl daemon-reload",
    )
    if portal_user:
        service_account(name=f"Service user {portal_user} (no exchange group)", user=portal_user)
    config_file(
        name="The audit socket's folder: root and the web page's service only",
        dest=paths.AUDIT_TMPFILES,
        content=render(
            "logging/tmpfiles-audit.conf.j2", audit_socket_dir=paths.AUDIT_SOCKET_DIR, writers=portal_user or "root"
        ),
        apply=f"systemd-tmpfiles --create {paths.AUDIT_TMPFILES}",
    )
    config_file(
        name="Route SFTP and audit messages to their logs",
        dest=paths.RSYSLOG_CONF,
        content=render(
            "logging/rsyslog.conf.j2",
            log_dir=paths.LOG_DIR,
            audit_log=paths.AUDIT_LOG,
            logins_log=paths.LOGINS_LOG,
            socket_dir=paths.LOG_SOCKETS_DIR,
            audit_socket=paths.AUDIT_SOCKET,
            audit_socket_dir=paths.AUDIT_SOCKET_DIR,
        ),
        # rsyslog checks its whole configuration only; a bad one is refused before the restart.
        apply="rsyslogd -N1 >/dev/null && systemctl restart rsyslog",
    )
    config_file(
        name="Rotate the exchange logs",
        dest=paths.LOGROTATE_CONF,
        content=render(
            "logging/logrotate.j2", log_dir=paths.LOG_DIR, audit_log=paths.AUDIT_LOG, logins_log=paths.LOGINS_LOG
        ),
    )
    append_only(name="The audit log can only grow", path=paths.AUDIT_LOG)
