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


class NewNamedFile:
    """A new file at a path the invoker names (an output such as a contact sheet), made with
    their rights, never root's: it belongs to them, lands only where they may write, and never
    replaces anything, a symlink included (the name must not exist, checked at the start and
    again when it is linked in). Nameless while written (exchange.safefs.NewFile): a failure or
    a stop leaves nothing behind. Use as a context manager: `write(data)` inside, or it is
    discarded."""

    def __init__(self, path: Path | str, who: Invoker | None, mode: int = 0o600) -> None:
        from exchange import safefs

        self.path, self.who = Path(path), who
        self.name = self.path.name
        if self.name in ("", ".", ".."):
            raise IsADirectoryError(errno.EISDIR, "names a folder, not a new file", str(self.path))
        with rights(who):
            try:  # O_PATH: search rights suffice to reach the folder, as for any file in it
                self.dir_fd = os.open(self.path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError as error:
                why = "no such folder" if error.errno == errno.ENOENT else error.strerror
                raise type(error)(error.errno, why, str(self.path.parent)) from None
            try:
                if safefs.exists(self.dir_fd, self.name):
                    raise FileExistsError(errno.EEXIST, "exists; never replaced (name a new file)", str(self.path))
                self.file: safefs.NewFile | None = safefs.NewFile.create(self.dir_fd, mode)
            except FileExistsError:
                os.close(self.dir_fd)
                raise
            except OSError as error:
                os.close(self.dir_fd)
                raise type(error)(error.errno, error.strerror, str(self.path)) from None

    def write(self, data: bytes) -> None:
        """Write it whole, then give it its name (FileExistsError if the name was taken meanwhile)."""
        assert self.file is not None
        view = memoryview(data)
        while view:
            view = view[os.write(self.file.fd, view) :]
        os.fsync(self.file.fd)
        with rights(self.who):
            try:
                self.file.publish(self.name)
            except FileExistsError:
                raise FileExistsError(
                    errno.EEXIST, "exists; never replaced (name a new file)", str(self.path)
                ) from None
        self.file.close()
        self.file = None

    def __enter__(self) -> NewNamedFile:
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self.file is not None:
                with rights(self.who):
                    self.file.discard()
                self.file = None
        finally:
            os.close(self.dir_fd)
