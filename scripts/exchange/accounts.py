"""Exchange accounts (partners and link accounts): how to converge them (where they live: exchange.layout).

`plan()` compares the wanted accounts with an observation (exchange.observe) and returns
the shell steps that make the host match, in order. The deploy yields these steps from
one pyinfra operation; the on-host tools run the very same steps. Every step is
idempotent, so a run killed half-way converges on the next.
"""

from __future__ import annotations

import contextlib
import grp
import pwd
import shlex
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import PurePosixPath

from exchange import aging, locks, observe, paths
from exchange.auditlog import audit_command as audit
from exchange.errors import ExchangeError
from exchange.layout import Layout
from exchange.policy import Policy


class AccountConflict(Exception):
    """The host holds something the plan must not overwrite; an admin has to look. `steps`:
    what can safely be done all the same (the other accounts, the locks among them)."""

    def __init__(self, message: str, steps: list[Step] | None = None) -> None:
        super().__init__(message)
        self.steps = steps or []


@dataclass(frozen=True)
class Step:
    account: str
    summary: str
    command: str


@dataclass(frozen=True)
class WantedAccount:
    name: str
    kind: str  # "partner" or "link"
    public_keys: tuple[str, ...] = ()
    active: bool = True  # False: locked now, removed once retention has passed


def _write_file(path: str, content: str, mode: str = "0644") -> str:
    # Write beside, then rename: a reader never sees half a file.
    tmp = f"{path}.tmp"
    return (
        f"install -d -m 0755 {shlex.quote(str(PurePosixPath(path).parent))} && "
        f"printf %s {shlex.quote(content)} > {shlex.quote(tmp)} && chmod {mode} {shlex.quote(tmp)} && "
        f"mv -f {shlex.quote(tmp)} {shlex.quote(path)}"
    )


def log_socket_config(socket_path: str, account: str) -> str:
    # HostName stamps every line from this chroot with its account; the socket is open to every
    # local user, so rsyslog also takes the sender's uid from the kernel (Annotate, ParseTrusted:
    # $!uid, in sftp.log's lines) and the trail believes only the account's own (exchange.trail.ingest).
    return (
        f'input(type="imuxsock" Socket="{socket_path}" CreatePath="on" '
        f'HostName="{account}" UseSysTimeStamp="on" RateLimit.Interval="0" Annotate="on" ParseTrusted="on")\n'
    )


def authorized_keys(keys: tuple[str, ...]) -> str:
    return "".join(f"{key}\n" for key in keys)


def _install_dir(path: str, owner: str, group: str, mode: str) -> str:
    return f"install -d -o {shlex.quote(owner)} -g {shlex.quote(group)} -m {mode} {shlex.quote(path)}"


def _node_matches(node: dict | None, owner: str, group: str, mode: str) -> bool:
    return bool(node) and node["kind"] == "dir" and (node["owner"], node["group"], node["mode"]) == (owner, group, mode)


def _refuse_non_directory(path: str, node: dict | None) -> None:
    if node and node["kind"] != "dir":
        raise AccountConflict(f"{path} is a {node['kind']}, not a directory; remove it by hand after checking it")


@dataclass
class Plan:
    steps: list[Step] = field(default_factory=list)
    restart_rsyslog: bool = False

    def add(self, account: str, summary: str, *commands: str) -> None:
        for command in commands:
            self.steps.append(Step(account, summary, command))


def plan(layout: Layout, wanted: list[WantedAccount], observed: dict, manage_kinds: set[str]) -> list[Step]:
    """Steps that turn `observed` into `wanted`.

    Accounts of a kind in `manage_kinds` that exist on the host but are not wanted are
    locked (a partner dropped from the data); other kinds are left alone (the deploy
    manages partners, the link tool manages links).
    """
    policy = layout.policy
    result = Plan()
    accounts = observed["accounts"]
    today = observed["today"]
    # An account in conflict is left out, named, and the rest still planned: a failing useradd
    # would stop the run, and one bad new name must never keep a dropped partner open.
    taken = [w.name for w in wanted if w.active and w.name in observed.get("groups_without_user", [])]
    conflicts = [
        f"{name}: a group of that name exists on the host (and no such user); useradd cannot make the "
        "account's own group, pick another name"
        for name in taken
    ]

    for group in (policy.accounts.partner_group, policy.accounts.link_group, policy.accounts.staff_group):
        if observed["groups"].get(group) is None:
            result.add(
                "",
                f"create group {group}",
                f"groupadd --system {shlex.quote(group)}",
                audit("group-created", group=group),
            )
    for path, (owner, group, mode) in layout.tree_dirs().items():
        node = observed["dirs"].get(path)
        _refuse_non_directory(path, node)
        if not _node_matches(node, owner, group, mode):
            result.add("", f"directory {path}", _install_dir(path, owner, group, mode))

    # Accounts of a managed kind that the data no longer names are kept, locked.
    wanted_names = {account.name for account in wanted}
    dropped = []
    for name, seen in accounts.items():
        kinds = {"partner" if g == policy.accounts.partner_group else "link" for g in seen["exchange_groups"]}
        if name not in wanted_names and kinds & manage_kinds:
            dropped.append(WantedAccount(name=name, kind=sorted(kinds & manage_kinds)[0], active=False))

    # Locks first: a step that fails stops the run, and a removed partner must not stay open.
    for account in sorted([*wanted, *dropped], key=lambda a: (a.active, a.name)):
        if account.name in taken:
            continue
        try:
            _plan_account(layout, account, accounts.get(account.name), today, result)
        except AccountConflict as conflict:
            conflicts.append(str(conflict))

    planned = {account.name for account in [*wanted, *dropped]}
    for name in observed.get("stray_log_sockets", []):
        if name in planned:
            continue  # an account (re)created by this plan keeps its socket
        result.add(
            name,
            "remove the log socket of a removed account",
            f"rm -f {shlex.quote(f'{paths.LOG_SOCKETS_DIR}/{name}.conf')}",
        )
        result.restart_rsyslog = True
    if result.restart_rsyslog:
        # rsyslog opens the new /dev/log sockets inside the chroots.
        result.add("", "reload the chroot log sockets", "systemctl restart rsyslog")
    if conflicts:
        raise AccountConflict("\n".join(conflicts), steps=result.steps)
    return result.steps


def _plan_account(layout: Layout, account: WantedAccount, seen: dict | None, today: int, result: Plan) -> None:
    policy = layout.policy
    name, kind = account.name, account.kind
    q = shlex.quote(name)
    chroot = layout.chroot(kind, name)
    group = layout.group(kind)

    if seen is None:
        if not account.active:
            return
        result.add(
            name,
            f"create {kind} account",
            # No password yet ("!"): nothing opens until the staff tool hands one out.
            f"useradd --user-group --no-create-home --home-dir {shlex.quote(chroot)} "
            f"--shell {paths.NOLOGIN} --groups {shlex.quote(group)} {q}",
            audit("account-created", account=name, kind=kind),
        )
        seen = {
            "shadow": None,
            "paths": {},
            "home": chroot,
            "shell": paths.NOLOGIN,
            "exchange_groups": [group],
            "authorized_keys": None,
            "log_socket": None,
        }
    else:
        if group not in seen["exchange_groups"]:
            raise AccountConflict(
                f"user {name!r} exists but is not in {group}; it is not an exchange account, pick another name"
            )

    expire = (seen["shadow"] or {}).get("expire")
    if kind == "partner" and not account.active and (expire is None or expire > today):
        # First, before any other step of it can fail and stop the run: account expiry refuses
        # every method (password and key); the expiry day also records when the lock began,
        # from which retention counts down to removal.
        lock_day = observe.shadow_day(today).date().isoformat()
        result.add(
            name,
            "lock and end sessions",
            f"usermod --expiredate {lock_day} {q}",
            f"pkill -KILL -u {q} || true",
            audit("account-locked", account=name, kind=kind, reason="absent from partner data"),
        )
    if seen["home"] != chroot or seen["shell"] != paths.NOLOGIN:
        result.add(name, "home and shell", f"usermod --home {shlex.quote(chroot)} --shell {paths.NOLOGIN} {q}")

    for relative, (owner, owner_group, mode) in layout.skeleton(name).items():
        path = f"{chroot}/{relative}" if relative else chroot
        node = seen["paths"].get(relative)
        _refuse_non_directory(path, node)
        if not _node_matches(node, owner, owner_group, mode):
            result.add(name, f"folder {path}", _install_dir(path, owner, owner_group, mode))

    keys_path = f"{paths.AUTHORIZED_KEYS_DIR}/{name}"
    keys = authorized_keys(account.public_keys)
    # A locked account keeps its keys (expiry refuses them), so unlocking restores them.
    if account.active and keys != (seen["authorized_keys"] or ""):
        change = _write_file(keys_path, keys) if keys else f"rm -f {shlex.quote(keys_path)}"
        result.add(
            name, "public keys", change, audit("keys-changed", account=name, kind=kind, keys=len(account.public_keys))
        )

    socket = log_socket_config(f"{chroot}/dev/log", name)
    if seen["log_socket"] != socket:
        result.add(name, "log socket", _write_file(f"{paths.LOG_SOCKETS_DIR}/{name}.conf", socket))
        result.restart_rsyslog = True

    shadow = seen["shadow"] or {}
    if kind == "partner":
        want = aging.wanted(kind, shadow.get("password_set", False), policy)
        if not aging.holds(shadow, want):
            result.add(name, "password aging", shlex.join([*aging.chage(want), name]))
        if account.active and shadow.get("expire") is not None:
            result.add(
                name, "unlock", f"usermod --expiredate '' {q}", audit("account-unlocked", account=name, kind=kind)
            )


def close_account(name: str) -> list[str]:
    """Commands that close an account for password and key (account expiry day 1) and end its
    sessions, waiting a few seconds at most until its processes are gone: userdel refuses an
    account that still has one, even one killed but not yet reaped."""
    q = shlex.quote(name)
    return [
        f"usermod --lock --expiredate 1 {q}",
        f"pkill -KILL -u {q}; for i in $(seq 20); do pgrep -u {q} >/dev/null || break; sleep 0.25; done",
    ]


def removal_steps(layout: Layout, name: str, kind: str, event: str = "account-removed", **audit_fields) -> list[Step]:
    """Steps that remove an account with its chroot, keys and log socket; the last writes
    `event` with `audit_fields` to the audit log."""
    q = shlex.quote(name)
    chroot = shlex.quote(layout.chroot(kind, name))
    # Its uid on record: the access trail believes the SFTP lines of an account removed before
    # they were read by that uid (exchange.trail.ingest).
    audit_fields = {"uid": account_uid(name), **audit_fields}
    commands = [
        # Closed first (expiry day 1 also marks it for the purge to retry), so whatever fails
        # after this leaves no account that opens.
        *close_account(name),
        # Never leave the exchange filesystem, whatever is mounted below the chroot. Files before
        # the account: if they cannot all go, the account stays (closed) and the next purge retries.
        f"rm -rf --one-file-system {chroot}",
        f"rm -f {shlex.quote(f'{paths.AUTHORIZED_KEYS_DIR}/{name}')} {shlex.quote(f'{paths.LOG_SOCKETS_DIR}/{name}.conf')}",
        f"userdel {q}",
        audit(event, account=name, kind=kind, **audit_fields),  # it is gone: on record before anything else
        "systemctl restart rsyslog",
    ]
    return [Step(name, f"remove {kind} account", command) for command in commands]


def account_uid(name: str) -> int | None:
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


class StepFailed(ExchangeError):
    pass


@contextlib.contextmanager
def account_lock(folder: str = paths.TOOL_RUN_DIR) -> Iterator[None]:
    """One account change at a time: useradd and userdel refuse to run while another holds
    /etc/passwd, and rsyslog restarts must not overlap."""
    with locks.held(paths.ACCOUNT_LOCK, wait=True, folder=folder):
        yield


def run_steps(steps: list[Step]) -> None:
    """Run steps in order on this host, in one shell; stop at the first failure and say which and why."""
    if not steps:
        return
    # Each step that succeeds reports its index on fd 3; the first one missing is the one that failed.
    script = " && ".join(f"{{ {step.command}\n}} && echo {index} >&3" for index, step in enumerate(steps))
    result = subprocess.run(
        ["sh", "-c", f"exec 3>&1 1>/dev/null; {script}"], capture_output=True, text=True, check=False
    )
    done = len(result.stdout.split())
    if result.returncode != 0 or done < len(steps):
        step = steps[min(done, len(steps) - 1)]
        account = f"{step.account}: " if step.account else ""
        raise StepFailed(f"{account}{step.summary} failed: {result.stderr.strip() or f'exit {result.returncode}'}")


def password_aging_steps(policy: Policy, partners: Iterable[str], shadow: dict[str, dict]) -> list[Step]:
    """Steps that give each partner the aging exchange.aging wants for it, as the deploy does,
    each on record in the audit log: a password set by hand between deploys (`chpasswd`) keeps
    the aging it had, none for a partner without one before, and would never expire."""
    result = Plan()
    for name in sorted(partners):
        entry = shadow.get(name)
        if entry is None:
            continue  # in the group, but no such account
        want = aging.wanted("partner", entry["password_set"], policy)
        if not aging.holds(entry, want):
            result.add(
                name,
                "password aging",
                shlex.join([*aging.chage(want), name]),
                audit(
                    "password-aging-set",
                    account=name,
                    kind="partner",
                    password_set=entry["password_set"],
                    by="password-aging",
                    **want,
                ),
            )
    return result.steps


def converge_password_aging(policy: Policy) -> tuple[list[str], list[str]]:
    """password_aging_steps on this host, an account at a time: one that fails is named and the
    others still go (the next run tries it again). The accounts changed, and the failures."""
    changed, failed = [], []
    with account_lock():
        try:
            partners = grp.getgrnam(policy.accounts.partner_group).gr_mem
        except KeyError:
            partners = []  # not deployed yet: no partner
        steps = password_aging_steps(policy, partners, observe.shadow())
        for name, account_steps in groupby(steps, key=lambda step: step.account):
            try:
                run_steps(list(account_steps))
            except StepFailed as failure:
                failed.append(str(failure))
            else:
                changed.append(name)
    return changed, failed
