"""Custom pyinfra facts and operations shared by the roles.

Each operation reads one fact, yields only the commands needed, and calls host.noop()
otherwise, like pyinfra's own.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from collections.abc import Iterable
from io import BytesIO
from pathlib import Path

from pyinfra import host
from pyinfra.api import FactBase, FileUploadCommand, operation

import exchange.observe
from exchange import paths
from roles import REPO
from roles.templating import render

# A file here names a config whose `apply` (reload) has not run since the config changed: the
# deploy was stopped between the two, or the reload failed. The next run applies it again.


def apply_marker(dest: str) -> str:
    return f"{paths.APPLY_PENDING_DIR}/{hashlib.sha256(dest.encode()).hexdigest()[:16]}"


class ConfigState(FactBase):
    """`owner:group:mode`, the SHA-256 of a regular file and whether its apply is pending, or
    None if there is no such file."""

    def command(self, path: str) -> str:
        q = shlex.quote(path)
        pending = shlex.quote(apply_marker(path))
        return (
            f"if [ -f {q} ] && [ ! -L {q} ]; then stat -c '%U:%G:%a' {q} && sha256sum {q}; "
            f"if [ -e {pending} ]; then echo pending; fi; fi"
        )

    def process(self, output: list[str]) -> dict | None:
        if len(output) < 2:
            return None
        owner, group, mode = output[0].split(":")
        state = {"owner": owner, "group": group, "mode": int(mode, 8), "sha256": output[1].split()[0]}
        return state | {"apply_pending": output[2:3] == ["pending"]}


def deploying_admin() -> str:
    """The account this deploy logs in as."""
    return host.data.get("ssh_user") or "root"


def group_accounts(groups: list[str]) -> str:
    """Shell that prints the accounts of `groups`, one name a line, sorted: those the group
    lists and those whose primary group it is (which `getent group` leaves out)."""
    names = " ".join(shlex.quote(group) for group in groups)
    return (
        f'for g in {names}; do entry=$(getent group "$g") || continue; '
        'echo "$entry" | cut -d: -f4 | tr , "\\n"; '
        'getent passwd | awk -F: -v gid="$(echo "$entry" | cut -d: -f3)" \'$4 == gid {print $1}\'; '
        "done | sort -u | sed '/^$/d'"
    )


# A filter for `getent shadow` lines: every password hash withheld, "!" for a locked one, "" kept
# (exchange.observe.shadow_entries reads them as before). A fact's output reaches the deploy's
# machine and its logs; the hashes stay on the host.
WITHOUT_HASHES = """awk -F: -v OFS=: '$2 != "" { $2 = ($2 ~ /^[!*]/) ? "!" : "withheld" } { print }'"""


class ExchangeAccounts(FactBase):
    """Every exchange account's passwd, shadow, chroot and key state, in one command."""

    def command(self, params_json: str) -> str:
        source = Path(exchange.observe.__file__).read_text()
        return f"python3 - {shlex.quote(params_json)} <<'IMAGING_EXCHANGE_OBSERVE'\n{source}\nIMAGING_EXCHANGE_OBSERVE"

    def process(self, output: list[str]) -> dict:
        return json.loads("\n".join(output))


@operation()
def config_file(
    dest: str,
    content: str | bytes,
    mode: str = "644",
    user: str = "root",
    group: str = "root",
    validate: str | None = None,
    apply: str | None = None,
):
    """Install `content` at `dest` if it differs: upload beside it, check it with `validate`
    (a command with `{path}`), rename it into place, then run `apply` (reload a service).
    A file that fails validation is removed and the live file is never touched. An apply that
    did not run or failed after the rename is run again by the next deploy (apply_marker).
    `content` is text (UTF-8) or, for an image, bytes."""
    data = content.encode() if isinstance(content, str) else content
    state = host.get_fact(ConfigState, path=dest) or {}
    wanted = {
        "owner": user,
        "group": group,
        "mode": int(mode, 8),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    marker = shlex.quote(apply_marker(dest))
    if {key: state.get(key) for key in wanted} == wanted:
        if apply and state["apply_pending"]:
            yield f"{apply} && rm -f {marker}"  # in place, but never applied: apply it now
        else:
            host.noop(f"{dest} is up to date")
        return
    staged = f"{dest}.imaging-exchange-new"
    q = shlex.quote(staged)
    yield f"mkdir -p {shlex.quote(str(Path(dest).parent))}"
    yield FileUploadCommand(BytesIO(data), staged)
    checks = [f"chown {user}:{group} {q}", f"chmod {mode} {q}"]
    if validate:
        checks.append(validate.format(path=q))
    yield f"{{ {' && '.join(checks)}; }} || {{ rc=$?; rm -f {q}; echo 'refused {dest}: validation failed' >&2; exit $rc; }}"
    if apply:
        yield f"mkdir -p {paths.APPLY_PENDING_DIR} && touch {marker}"
    yield f"mv -f {q} {shlex.quote(dest)}"
    if apply:
        yield f"{apply} && rm -f {marker}"


def files_digest(paths: Iterable[Path], seed: bytes = b"") -> str:
    """SHA-256 over files of the repository, each by its path and content, in path order."""
    digest = hashlib.sha256(seed)
    for path in sorted(paths):
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def sudo_rule(name: str, dest: str, group: str, command: str) -> None:
    """A sudoers.d file letting `group` run `command` (and nothing else) as root, checked by visudo."""
    config_file(
        name=name,
        dest=dest,
        content=render("tools/sudoers.j2", group=group, command=command),
        mode="440",
        validate="visudo -cqf {path}",
    )
