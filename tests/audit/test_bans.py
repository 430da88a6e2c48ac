"""Lockout is not a weapon: an address that fails logins is banned (fail2ban, nftables, every
TCP port) before pam_faillock, which counts failures per account from anywhere, locks one;
loopback never, since the web page logs every user in through sshd there.

BAN-01 is not applicable only to a host that cannot set firewall rules, and only when three
things agree that no deploy bug produces alone: fail2ban is not installed, the deploy's
root-owned marker says bans are off by host data, and the host really lacks CAP_NET_ADMIN (PID
1's capability bounding set). On any other host the jails are checked, and fail if not in force.
"""

import ipaddress
import re

from exchange import paths
from tests.audit.baseline import baseline
from tests.audit.catalogue import control

# The audit's own expectations (baseline.yaml), not the deploy's: the jails that must run, what
# they never ban, and what the off marker must say.
SSHD_JAIL, PORTAL_JAIL = (baseline().jails[jail] for jail in ("sshd", "portal"))
JAILS = (SSHD_JAIL, PORTAL_JAIL)
NEVER_BANNED, OFF_TEXT = baseline().never_banned, baseline().bans_off_text

CAP_NET_ADMIN = 12  # linux/capability.h
NFT = "/usr/sbin/nft"  # what the ban action runs
# What each jail reads: sshd's messages in the journal, the web page's failed logins in the audit log.
READS = {SSHD_JAIL: "journal: _COMM=sshd", PORTAL_JAIL: f"file: {paths.AUDIT_LOG}"}


def can_set_firewall_rules(host) -> bool:
    status = host.file("/proc/1/status").content_string
    bounding = re.search(r"^CapBnd:\s*([0-9a-f]+)$", status, re.M)
    return bounding is None or bool(int(bounding[1], 16) >> CAP_NET_ADMIN & 1)  # unreadable: assume it can


def off_marker(host) -> str | None:
    marker = host.file(paths.SOURCE_BANS_OFF)
    if not marker.exists:
        return None
    return f"{marker.user}:{marker.group} {marker.mode:04o} {marker.content_string!r}"


def networks(listed: list[str]) -> list[str]:
    return sorted(str(ipaddress.ip_network(entry, strict=False)) for entry in listed)


def listed(text: str) -> list[str]:
    """The entries of fail2ban-client's tree output: `|- x` and `` `- x `` lines."""
    return [line.split("- ", 1)[1].strip() for line in text.splitlines() if line.lstrip().startswith(("|-", "`-"))]


def reads(status: str) -> str:
    journal = re.search(r"Journal matches:\s*(.*)$", status, re.M)
    if journal:
        matches = [part.strip() for part in journal[1].split("+")]
        return "journal: _COMM=sshd" if "_COMM=sshd" in matches else f"journal: {journal[1]}"
    files = re.search(r"File list:\s*(.*)$", status, re.M)
    return f"file: {files[1].strip()}" if files else "nothing"


def jail(read, name: str) -> dict | str:
    """The running jail as fail2ban itself reports it."""
    status = read.privileged("fail2ban", name, check=False)
    if status is None:
        return "not running"
    got = {s: (read.privileged("fail2ban", f"{name}:{s}", check=False) or "") for s in ("actions", "ignoreip")}
    numbers = {s: read.privileged("fail2ban", f"{name}:{s}", check=False) for s in ("maxretry", "findtime", "bantime")}
    return {
        "reads": reads(status),
        # "The jail sshd has the following actions:" and then the names
        "actions": sorted(", ".join(got["actions"].splitlines()[1:]).replace(" ", "").split(",")),
        "ignoreip": networks(listed(got["ignoreip"])),
        **{s: int(value) if (value or "").strip().isdigit() else value for s, value in numbers.items()},
    }


@control("BAN-01")
def test_sources_failing_logins_are_banned_before_they_lock_an_account(host, read, policy, control):
    host_facts = {
        "fail2ban installed": host.package("fail2ban").is_installed,
        paths.SOURCE_BANS_OFF: off_marker(host),
        "CAP_NET_ADMIN": can_set_firewall_rules(host),
    }
    control.not_applicable(
        {"fail2ban installed": False, paths.SOURCE_BANS_OFF: f"root:root 0644 {OFF_TEXT!r}", "CAP_NET_ADMIN": False},
        host_facts,
        f"{OFF_TEXT.strip()} ({paths.SOURCE_BANS_OFF}, root's), and the host has no CAP_NET_ADMIN",
    )
    bans = policy.source_bans
    wanted_jail = {
        "actions": ["nftables-allports"],
        "maxretry": bans.max_failures,
        "findtime": bans.find_seconds,
        "bantime": bans.ban_seconds,
        "ignoreip": networks(list(NEVER_BANNED)),
    }
    control.verify(
        {
            "fail2ban installed": True,
            "nft": True,
            "CAP_NET_ADMIN": True,
            paths.SOURCE_BANS_OFF: None,
            **{name: wanted_jail | {"reads": READS[name]} for name in JAILS},
        },
        host_facts | {"nft": host.file(NFT).exists} | {name: jail(read, name) for name in JAILS},
    )
