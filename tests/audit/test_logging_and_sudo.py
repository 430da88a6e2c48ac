"""The audit trail and who may do what as root."""

import re
import shlex

import pytest

from exchange import paths
from tests.audit.baseline import Expected
from tests.audit.catalogue import control

# The audit log's one way in: rsyslog's socket in this folder, which only root and the web
# page's service group may reach, stamping each record with the sender's uid.
RSYSLOG_CONFIG = "cat /etc/rsyslog.conf /etc/rsyslog.d/*.conf"
TRY_CONNECT = (
    "import socket,sys; s=socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
    "try: s.connect(sys.argv[1]); print('connected')\nexcept OSError as e: print(e.strerror)"
)


def _options(text: str) -> dict[str, str]:
    return {key.lower(): value for key, value in re.findall(r'(\w[\w.]*)\s*=\s*"([^"]*)"', text)}


def audit_log_writers(config: str) -> dict[str, object]:
    """Where rsyslog's configuration names the audit log, and from which inputs that can be:
    only a ruleset bound to an imuxsock socket in the audit socket folder, with trusted
    properties (the sender's uid) on, may write it."""
    text = re.sub(r"(?m)#.*$", "", config)
    trusted = {
        _options(body).get("ruleset")
        for body in re.findall(r"input\((.*?)\)", text, re.S)
        if _options(body).get("type") == "imuxsock"
        and _options(body).get("socket", "").startswith(paths.AUDIT_SOCKET_DIR + "/")
        and _options(body).get("annotate") == "on"
        and _options(body).get("parsetrusted") == "on"
    } - {None}
    spans = []
    for match in re.finditer(r'ruleset\(\s*name\s*=\s*"([^"]*)"\s*\)\s*\{', text):
        depth, end = 1, match.end()
        while depth and end < len(text):
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            end += 1
        if match[1] in trusted:
            spans.append((match.start(), end))
    named = [m.start() for m in re.finditer(re.escape(paths.AUDIT_LOG), text)]
    return {
        "written from a trusted socket's ruleset": bool(named)
        and all(any(a <= at < b for a, b in spans) for at in named),
        "places": len(named),
    }


@control("LOG-01")
def test_audit_log_is_append_only(read, control):
    flags = read.privileged("audit-log").split()[0]
    control.verify({"append-only": True}, {"append-only": "a" in flags})


@control("LOG-03")
def test_only_root_and_the_web_page_can_write_the_audit_log(host, read, policy, control):
    writers = policy.portal.service_user if host.file(paths.PORTAL_CONFIG).exists else "root"
    folder = host.file(paths.AUDIT_SOCKET_DIR)
    written = audit_log_writers(host.run(RSYSLOG_CONFIG).stdout)
    sockets = host.run(f"ls {paths.AUDIT_SOCKET_DIR} 2>&1").stdout.split()
    # The auditor is neither: it must not even reach the socket (connect sends nothing).
    reached = {
        name: host.run(f"python3 -c {shlex.quote(TRY_CONNECT)} {paths.AUDIT_SOCKET_DIR}/{name}").stdout.strip()
        for name in sockets
    }
    control.verify(
        {
            "socket folder": f"root:{writers} 0750",
            "audit log written from the trusted socket only": True,
            "the auditor reaches the socket": "no",
        },
        {
            "socket folder": f"{folder.user}:{folder.group} {folder.mode:04o}" if folder.exists else "missing",
            "audit log written from the trusted socket only": written["written from a trusted socket's ruleset"],
            "the auditor reaches the socket": "yes" if "connected" in reached.values() else "no",
        },
    )


@control("LOG-02")
def test_sftp_sessions_are_logged(host, read, policy, control):
    rsyslog = read.text(paths.RSYSLOG_CONF) or ""
    accounts = read.group_members(policy.accounts.partner_group) + read.group_members(policy.accounts.link_group)
    sockets = {name: host.file(f"{paths.LOG_SOCKETS_DIR}/{name}.conf").exists for name in accounts}
    control.verify(
        {"sftp log rule": True, "socket per account": {name: True for name in accounts}},
        {"sftp log rule": 'programname == "internal-sftp"' in rsyslog, "socket per account": sockets},
    )


@control("SUDO-01")
def test_auditor_may_only_read(host, read, policy, control):
    """The baseline's reads only: audit-read, the trail's reports and its verify."""
    if read.is_root:
        pytest.skip("the audit runs as root; run it as the auditor account to check the auditor's sudo rights")
    listing = host.run("sudo -n -l").stdout
    commands = [line.strip() for line in listing.splitlines() if line.strip().startswith("(")]
    control.verify(Expected(policy).sudo_rights("auditor"), commands)


def sudo_rights(listing: str) -> list[str]:
    """The commands in `sudo -l -U` (C locale): the indented lines under "User ... may run the
    following commands on ...:"; none after "User ... is not allowed to run sudo"."""
    rights, listing_commands = [], False
    for line in listing.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():
            listing_commands = " may run the following commands on " in line
        elif listing_commands:
            rights.append(line.strip())
    return sorted(rights)


@control("SUDO-02")
def test_sudo_rights_of_the_exchange_accounts(read, policy, control):
    """Each account's rights as sudo itself resolves them (`sudo -l -U`), not the sudoers text:
    a user list, a continued line, a %#gid or an alias grants as much as a plain %group line."""
    accounts, baseline = policy.accounts, Expected(policy)
    rights_of_group = {
        accounts.staff_group: baseline.sudo_rights("staff"),
        accounts.auditor_group: baseline.sudo_rights("auditor"),
        accounts.partner_group: [],  # SFTP accounts: nothing at all
        accounts.link_group: [],
    }
    expected: dict[str, list[str]] = {}
    for group, rights in rights_of_group.items():
        for name in read.group_accounts(group):
            expected[name] = sorted({*expected.get(name, []), *rights})
    read.prefetch("sudo-rights", expected)
    found = {name: sudo_rights(read.privileged("sudo-rights", name)) for name in expected}
    control.verify(expected, found)
