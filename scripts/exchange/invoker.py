"""The person behind `sudo exchange`, and opening what they name with their rights.

Staff may run `exchange` as root and nothing else. A path they name (a study to package, a
viewer folder, media to inspect, a file to check) is opened with their own uid, gid and groups,
so root's rights never reach a file they could not read themselves; afterwards it is read only
through that descriptor, never opened again by its name.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Invoker:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]


def invoker() -> Invoker | None:
    """The user who ran `sudo exchange`, when the tool runs as root on their behalf; None when
    it runs with its own rights (root itself, or a user without sudo). sudo sets SUDO_UID; a
    user cannot choose it."""
    uid = os.environ.get("SUDO_UID", "")
    if os.geteuid() != 0 or not uid.isdigit() or int(uid) == 0:
        return None
    try:
        entry = pwd.getpwuid(int(uid))
    except KeyError:
        return None
    return Invoker(entry.pw_name, entry.pw_uid, entry.pw_gid, tuple(os.getgrouplist(entry.pw_name, entry.pw_gid)))


@contextlib.contextmanager
def rights(who: Invoker | None) -> Iterator[None]:
    """Act with `who`'s rights (effective ids and groups) inside the block; root's again after.
    Process-wide: only while no other thread of the tool opens files."""
    if who is None:
        yield
        return
    groups = os.getgroups()
    os.setgroups(list(who.groups))
    os.setegid(who.gid)
    os.seteuid(who.uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)
        os.setgroups(groups)


def read_named(path: Path | str, who: Invoker | None = None) -> bytes:
    """The content of a file the invoker named, read with their rights (OSError naming it)."""
    with rights(who):
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    mode = os.fstat(descriptor).st_mode
    if not stat.S_ISREG(mode):  # a FIFO would never end, a device not either
        os.close(descriptor)
        raise OSError(errno.EISDIR if stat.S_ISDIR(mode) else errno.EINVAL, "not a regular file", str(path))
    with os.fdopen(descriptor, "rb") as handle:
        return handle.read()
