"""The audit trail: SFTP sessions and file operations per account, and the exchange's own
audit log (one JSON line per event), both written by rsyslog."""

import shlex

from pyinfra import host
from pyinfra.api import FactBase, deploy, operation
from pyinfra.operations import apt, files

from exchange.accounts import LOG_SOCKET_DIR
from exchange.auditlog import AUDIT_TAG
from roles.ops import config_file
from roles.templating import render

LOG_DIR = "/var/log/imaging-exchange"
AUDIT_LOG = f"{LOG_DIR}/audit.log"


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
def logging() -> None:
    apt.packages(
        name="Install rsyslog, logrotate and chattr", packages=["rsyslog", "logrotate", "e2fsprogs"], no_recommends=True
    )
    files.directory(name="Log directory", path=LOG_DIR, user="root", group="adm", mode="750")
    files.directory(name="Chroot log socket directory", path=LOG_SOCKET_DIR, user="root", group="root", mode="755")
    config_file(
        name="Route SFTP and audit messages to their logs",
        dest="/etc/rsyslog.d/30-imaging-exchange.conf",
        content=render(
            "logging/rsyslog.conf.j2",
            log_dir=LOG_DIR,
            audit_log=AUDIT_LOG,
            socket_dir=LOG_SOCKET_DIR,
            audit_tag=AUDIT_TAG,
        ),
        # rsyslog checks its whole configuration only; a bad one is refused before the restart.
        apply="rsyslogd -N1 >/dev/null && systemctl restart rsyslog",
    )
    config_file(
        name="Rotate the exchange logs",
        dest="/etc/logrotate.d/imaging-exchange",
        content=render("logging/logrotate.j2", log_dir=LOG_DIR, audit_log=AUDIT_LOG),
    )
    append_only(name="The audit log can only grow", path=AUDIT_LOG)
