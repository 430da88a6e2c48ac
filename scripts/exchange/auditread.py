"""`exchange audit-read`: the read-only root commands the audit suite needs, gated.

Auditors get sudo for this command only. It checks its arguments, runs the system's own
tool (sshd -T, chage -l, passwd -S, stat, find, lsattr, sudo -l -U, nginx -T, fail2ban-client
status and get, and `exchange trail verify`) and prints that
tool's raw output, so the evidence comes from the system, not from an interpretation of ours.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import subprocess
from pathlib import PurePosixPath

from exchange import paths
from exchange.bans import JAILS
from exchange.errors import REFUSED, ExchangeError
from exchange.layout import Layout
from exchange.policy import Policy

# A connection spec for `sshd -T -C`: what sshd would apply to this user from anywhere.
MATCH_SPEC = "user={user},host=audit.invalid,addr=192.0.2.1"
NAME = re.compile(paths.UNIX_NAME)
# Beyond the exchange tree, the tools' state that TOOLS-01 checks and an auditor cannot reach.
TOOL_PATHS = frozenset({paths.STATE_DIR, paths.LINK_TOKENS_DIR})
# A token file's name is its token's SHA-256: twelve characters name the file to an admin,
# the rest of the index key stays root's.
TOKEN_FILE_FORMAT = "%.12f|%u|%g|%m|%y\n"
# The access trail's folder and each file in it (TRAIL-01, TRAIL-03): name, owner, group, mode, kind.
TRAIL_FILE_FORMAT = "%f|%u|%g|%m|%y\n"
# What BAN-01 asks a jail of the running fail2ban: `JAIL` its status, `JAIL:SETTING` one setting.
FAIL2BAN_SETTINGS = frozenset({"maxretry", "findtime", "bantime", "ignoreip", "actions"})


class AuditReadError(ExchangeError):
    status = REFUSED


def exchange_account(policy: Policy, name: str) -> str:
    if not NAME.match(name):
        raise AuditReadError(f"{name!r} is not an account name")
    if Layout(policy).kind_of(name):
        return name
    raise AuditReadError(f"{name!r} is not an exchange account (not in the partner or link group)")


def _member(name: str, group: str) -> bool:
    """In `group` as a supplementary or as the primary group."""
    try:
        entry = grp.getgrnam(group)
        return name in entry.gr_mem or pwd.getpwnam(name).pw_gid == entry.gr_gid
    except KeyError:
        return False


def audited_account(policy: Policy, name: str) -> str:
    """A member of one of the exchange's groups: staff, auditors, partners, links."""
    if not NAME.match(name):
        raise AuditReadError(f"{name!r} is not an account name")
    accounts = policy.accounts
    groups = (accounts.staff_group, accounts.auditor_group, accounts.partner_group, accounts.link_group)
    if any(_member(name, group) for group in groups):
        return name
    raise AuditReadError(f"{name!r} is in none of the groups {', '.join(groups)}")


def readable_path(policy: Policy, path: str) -> str:
    """Paths under the exchange root, the directories above it (sshd checks them all), and the
    tools' state folders."""
    clean = PurePosixPath(os.path.normpath(path))
    root = PurePosixPath(policy.accounts.root)
    if str(clean) != path or not clean.is_absolute():
        raise AuditReadError(f"{path!r} is not a normalised absolute path")
    if os.path.realpath(path) != path:
        # A symlink on the way (staff may make one in a download folder) would lead root's stat
        # into folders only root may see.
        raise AuditReadError(f"{path!r} passes through a symlink")
    if clean == root or root in clean.parents or clean in root.parents or path in TOOL_PATHS:
        return path
    raise AuditReadError(f"{path!r} is outside {root} and its parents, and not one of {', '.join(sorted(TOOL_PATHS))}")


def _ere_literal(text: str) -> str:
    """`text` as a literal in a POSIX extended regular expression (find -regex)."""
    return "".join(f"\\{c}" if c in ".[]()*+?{}|^$\\" else c for c in text)


def no_argument(what: str, argument: str | None) -> None:
    if argument:
        raise AuditReadError(f"{what} takes no argument (got {argument!r})")


def command(policy: Policy, what: str, argument: str | None, *more: str) -> list[str]:
    """The read's command line. Only `stat` takes several paths (one line each, in order): an
    audit of hundreds of accounts stats every folder of every chroot. Reads of several accounts
    are one command each, taken in turn by `run`."""
    if more and what != "stat":
        raise AuditReadError(f"{what} takes one argument at most here (got {1 + len(more)})")
    if what == "sshd":
        spec = ["-C", MATCH_SPEC.format(user=exchange_account(policy, argument))] if argument else []
        return ["/usr/sbin/sshd", "-T", *spec]
    if what == "chage":
        return ["/usr/bin/chage", "-l", exchange_account(policy, argument or "")]
    if what == "password-status":  # name, status, last change, min, max, warn, inactive; never the hash
        return ["/usr/bin/passwd", "-S", audited_account(policy, argument or "")]
    if what == "stat":
        named = [readable_path(policy, path) for path in (argument or "", *more)]
        return ["/usr/bin/stat", "-c", "%n|%U|%G|%a|%F", "--", *named]
    if what == "old-files":
        # The audited policy's days (the argument), not the installed one's: the audit checks
        # the server against its own copy of the policy.
        if not (argument or "").isdigit() or not 1 <= int(argument) <= 365:
            raise AuditReadError(f"{argument!r} is not a number of days (1 to 365)")
        minutes = int(argument) * 24 * 60
        return ["/usr/bin/find", policy.accounts.root, "-xdev", "!", "-type", "d", "-mmin", f"+{minutes}"]
    if what == "deep-folders":
        # Folders deeper than the tools walk (policy accounts.max_folder_depth): what retention and
        # the upload notices name but do not enter. Below each account's folders, and below each
        # ended link's held uploads and each account's imported uploads; each too deep folder once (-prune).
        if not (argument or "").isdigit() or not 1 <= int(argument) <= 1000:
            raise AuditReadError(f"{argument!r} is not a number of folder levels (1 to 1000)")
        root, beyond = _ere_literal(policy.accounts.root), f"(/[^/]+){{{int(argument) + 1},}}"
        return [
            "/usr/bin/find", policy.accounts.root, "-xdev", "-regextype", "posix-extended", "-type", "d",
            "(", "-regex", f"{root}/(partners|links)/[^/]+/[^/]+{beyond}", "-o",
            "-regex", f"{root}/({paths.ENDED_LINKS}|{paths.IMPORTED})/[^/]+{beyond}", ")", "-print", "-prune",
        ]  # fmt: skip
    if what == "audit-log":
        return ["/usr/bin/lsattr", "-d", paths.AUDIT_LOG]
    if what == "sudo-rights":  # what sudo itself grants the account, however the sudoers spell it
        return ["/usr/bin/sudo", "-n", "-l", "-U", audited_account(policy, argument or "")]
    if what == "nginx":  # the configuration nginx loads, every included file in order
        no_argument(what, argument)
        return ["/usr/sbin/nginx", "-q", "-T"]
    if what == "token-files":
        no_argument(what, argument)
        return [
            "/usr/bin/find",
            paths.LINK_TOKENS_DIR,
            "-mindepth",
            "1",
            "-maxdepth",
            "1",
            "-printf",
            TOKEN_FILE_FORMAT,
        ]
    if what == "fail2ban":
        return ["/usr/bin/fail2ban-client", *fail2ban_query(argument or "")]
    if what == "trail-files":  # the folder (depth 0) and its entries, a symlink not followed
        no_argument(what, argument)
        return ["/usr/bin/find", paths.TRAIL_DIR, "-maxdepth", "1", "-printf", TRAIL_FILE_FORMAT]
    if what == "trail-attributes":  # append-only (a) and immutable (i) of each file
        no_argument(what, argument)
        return ["/usr/bin/lsattr", paths.TRAIL_DIR]
    if what == "trail-verify":  # the chain checked by the tool itself: "intact: ..." or each break
        no_argument(what, argument)
        return [paths.EXCHANGE, "trail", "verify"]
    raise AuditReadError(f"unknown read {what!r}")


def fail2ban_query(argument: str) -> list[str]:
    jail, _, setting = argument.partition(":")
    if jail not in JAILS:
        raise AuditReadError(f"{jail!r} is not one of the exchange's jails ({', '.join(JAILS)})")
    if not setting:
        return ["status", jail]
    if setting not in FAIL2BAN_SETTINGS:
        raise AuditReadError(f"{setting!r} is not one of {', '.join(sorted(FAIL2BAN_SETTINGS))}")
    return ["get", jail, setting]


# Reads of one account that take several at once: one JSON line per account, in order, with
# the tool's own return code and output (one sudo and one start for all of them).
EACH_ACCOUNT = frozenset({"sshd", "chage", "password-status", "sudo-rights"})


def run(policy: Policy, what: str, argument: str | None, *more: str) -> subprocess.CompletedProcess:
    """The tool's output as bytes: names recipients chose need not be UTF-8."""
    # The C locale: sshd and sudo pass the caller's LANG on, and stat, chage and passwd
    # translate what they print ("map" for "directory" in Dutch).
    environment = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
    if not (more and what in EACH_ACCOUNT):
        return subprocess.run(command(policy, what, argument, *more), capture_output=True, env=environment)
    names = [argument or "", *more]
    commands = [command(policy, what, name) for name in names]  # every name checked before any runs
    lines = []
    for name, line in zip(names, commands, strict=True):
        done = subprocess.run(line, capture_output=True, env=environment)
        shown = {"stdout": done.stdout, "stderr": done.stderr}
        lines.append(
            json.dumps(
                {"argument": name, "returncode": done.returncode}
                | {key: value.decode("utf-8", "surrogateescape") for key, value in shown.items()}
            )
        )
    return subprocess.CompletedProcess([what, *names], 0, ("\n".join(lines) + "\n").encode(), b"")


def refused_for(policy: Policy, name: str) -> str | None:
    """Why the person behind sudo may not use audit-read: staff may sudo `exchange` with any
    arguments, audit-read among them, but its reads are the auditors' (root's own, and an admin's
    with full sudo, stay allowed)."""
    accounts = policy.accounts
    if _member(name, accounts.staff_group) and not _member(name, accounts.auditor_group):
        return f"audit-read is for auditors (members of {accounts.auditor_group}), not for {accounts.staff_group}"
    return None
