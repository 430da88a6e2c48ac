"""The audit trail and who may do what as root."""

import pytest

control = pytest.mark.control


@control("LOG-01", reference="this project: audit trail", source="(baseline)")
def test_audit_log_is_append_only(read, control):
    flags = read.privileged("audit-log").split()[0]
    control.verify({"append-only": True}, {"append-only": "a" in flags})


@control(
    "LOG-02",
    reference="CIS Debian 12 5.1.14 (LogLevel); this project: SFTP file operations logged",
    source="sshd.sftp.log_level",
)
def test_sftp_sessions_are_logged(host, read, policy, control):
    rsyslog = read.text("/etc/rsyslog.d/30-imaging-exchange.conf") or ""
    accounts = read.group_members(policy.accounts.partner_group) + read.group_members(policy.accounts.link_group)
    sockets = {name: host.file(f"/etc/imaging-exchange/log-sockets/{name}.conf").exists for name in accounts}
    control.verify(
        {"sftp log rule": True, "socket per account": {name: True for name in accounts}},
        {"sftp log rule": 'programname == "internal-sftp"' in rsyslog, "socket per account": sockets},
    )


@control("SUDO-01", reference="CIS Debian 12 5.2.x; this project: auditors read only", source="accounts.auditor_group")
def test_auditor_may_only_read(host, read, control):
    if read.is_root:
        pytest.skip("the audit runs as root; run it as the auditor account to check the auditor's sudo rights")
    listing = host.run("sudo -n -l").stdout
    commands = [line.strip() for line in listing.splitlines() if line.strip().startswith("(")]
    control.verify(["(root) NOPASSWD: /usr/local/bin/exchange audit-read *"], commands)


EXCHANGE = "/usr/local/bin/exchange"


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


@control(
    "SUDO-02",
    reference="CIS Debian 12 5.2.x; this project: least privilege",
    source="accounts.staff_group, accounts.auditor_group, accounts.partner_group, accounts.link_group",
)
def test_sudo_rights_of_the_exchange_accounts(read, policy, control):
    """Each account's rights as sudo itself resolves them (`sudo -l -U`), not the sudoers text:
    a user list, a continued line, a %#gid or an alias grants as much as a plain %group line."""
    accounts = policy.accounts
    rights_of_group = {
        accounts.staff_group: [f"(root) NOPASSWD: {EXCHANGE}"],
        accounts.auditor_group: [f"(root) NOPASSWD: {EXCHANGE} audit-read *"],
        accounts.partner_group: [],  # SFTP accounts: nothing at all
        accounts.link_group: [],
    }
    expected: dict[str, list[str]] = {}
    for group, rights in rights_of_group.items():
        for name in read.group_accounts(group):
            expected[name] = sorted({*expected.get(name, []), *rights})
    found = {name: sudo_rights(read.privileged("sudo-rights", name)) for name in expected}
    control.verify(expected, found)
