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


def sudo_rules(text: str, group: str) -> list[str]:
    rules = []
    for line in text.splitlines():
        line = " ".join(line.split("#", 1)[0].split()) if not line.startswith("#include") else ""
        if line and not line.startswith("Defaults") and f"%{group} " in f"{line} ":
            rules.append(line)
    return rules


@control(
    "SUDO-02",
    reference="CIS Debian 12 5.2.x; this project: least privilege",
    source="accounts.staff_group, accounts.auditor_group, accounts.partner_group, accounts.link_group",
)
def test_sudo_rules_of_the_exchange_groups(read, policy, control):
    text = read.privileged("sudoers")
    accounts = policy.accounts
    found = {
        group: sudo_rules(text, group)
        for group in (accounts.staff_group, accounts.auditor_group, accounts.partner_group, accounts.link_group)
    }
    control.verify(
        {
            accounts.staff_group: [f"%{accounts.staff_group} ALL=(root) NOPASSWD: /usr/local/bin/exchange"],
            accounts.auditor_group: [
                f"%{accounts.auditor_group} ALL=(root) NOPASSWD: /usr/local/bin/exchange audit-read *"
            ],
            accounts.partner_group: [],
            accounts.link_group: [],
        },
        found,
    )
