"""Root's file operations in folders that other accounts can change.

Download folders are staff's to write, upload folders their account's (and staff's): between
two calls by path, anyone there may rename an entry away and put a symlink in its place, so
root would write, chmod or read whatever that points to. Here everything goes through
descriptors: each folder is opened without following a symlink and checked to be the folder
that was listed, files are created exclusively (or unnamed, until complete), modes and owners
are set on the descriptor, names are given by linking the open file, and walks are iterative
with a depth limit, so no account can make a walk recurse until it crashes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath

OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# A regular file to read, never a symlink; a FIFO or device in its place must not block the open.
OPEN_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def _named(error: OSError, dir_fd: int, part: str, shown: str) -> OSError:
    """The error, naming `shown`; a symlink where a folder was expected says so."""
    if error.errno in (errno.ELOOP, errno.ENOTDIR):
        with contextlib.suppress(OSError):
            if stat.S_ISLNK(os.stat(part, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                return OSError(errno.ELOOP, "a symlink, not followed", shown)
    return type(error)(error.errno, error.strerror, shown)


def open_dir(path: str, dir_fd: int | None = None) -> int:
    """A folder's descriptor, every component of `path` opened without following a symlink
    (relative to `dir_fd` when `path` is relative)."""
    pure = PurePosixPath(path)
    if pure.is_absolute():
        current, parts = os.open("/", OPEN_DIR), pure.parts[1:]
    else:
        current, parts = (os.dup(dir_fd) if dir_fd is not None else os.open(".", OPEN_DIR)), pure.parts
    try:
        for index, part in enumerate(parts):
            try:
                following = os.open(part, OPEN_DIR, dir_fd=current)
            except OSError as error:
                shown = str(PurePosixPath(*pure.parts[: len(pure.parts) - len(parts) + index + 1]))
                raise _named(error, current, part, shown) from None
            os.close(current)
            current = following
    except BaseException:
        os.close(current)
        raise
    return current


@contextlib.contextmanager
def opened_dir(path: str, dir_fd: int | None = None) -> Iterator[int]:
    descriptor = open_dir(path, dir_fd)
    try:
        yield descriptor
    finally:
        os.close(descriptor)


def create_new(dir_fd: int, name: str, mode: int = 0o600) -> int:
    """A new file `name` in the folder, opened for writing: never an existing file, never
    through a symlink. The mode is set on the descriptor, whatever the umask."""
    descriptor = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    os.fchmod(descriptor, mode)
    return descriptor


@dataclass
class NewFile:
    """A file being written in a folder others can change, nameless until `publish` gives it
    its name (O_TMPFILE): nobody sees or reaches half of it, and a crash leaves nothing. On a
    filesystem without unnamed files, it has a hidden name of its own until then."""

    dir_fd: int
    fd: int
    hidden: str | None = None

    @classmethod
    def create(cls, dir_fd: int, mode: int = 0o600) -> NewFile:
        try:
            descriptor = os.open(".", os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, mode, dir_fd=dir_fd)
        except OSError as error:
            if error.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
            hidden = f".{secrets.token_hex(8)}.partial"
            return cls(dir_fd, create_new(dir_fd, hidden, mode), hidden)
        os.fchmod(descriptor, mode)
        return cls(dir_fd, descriptor)

    def publish(self, name: str) -> None:
        """Give the file `name`; FileExistsError if that name is taken (never replaced)."""
        os.link(f"/proc/self/fd/{self.fd}", name, dst_dir_fd=self.dir_fd, follow_symlinks=True)
        if self.hidden:
            remove_if_same(self.dir_fd, self.hidden, self.fd)
            self.hidden = None

    def discard(self, published: str | None = None) -> None:
        """Close it; remove the name it was published under (if still this file), or its hidden name."""
        for name in (published, self.hidden):
            if name:
                remove_if_same(self.dir_fd, name, self.fd)
        self.hidden = None
        os.close(self.fd)

    def close(self) -> None:
        os.close(self.fd)


def exists(dir_fd: int, name: str) -> bool:
    """Whether anything, a link included (never followed), has this name in the folder."""
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def remove_if_same(dir_fd: int, name: str, fd: int) -> bool:
    """Unlink `name` only if it is still the open file `fd` (someone may have put another there)."""
    try:
        seen = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    if (seen.st_dev, seen.st_ino) != (mine.st_dev, mine.st_ino):
        return False
    os.unlink(name, dir_fd=dir_fd)
    return True


def make_dir(dir_fd: int, name: str, uid: int, gid: int, mode: int) -> int:
    """The folder `name` in the folder (made if missing), with this owner and mode, set on its
    own descriptor; a symlink or a file in its place is refused (OSError naming it)."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, 0o700, dir_fd=dir_fd)
    descriptor = os.open(name, OPEN_DIR, dir_fd=dir_fd)
    os.fchown(descriptor, uid, gid)
    os.fchmod(descriptor, mode)
    return descriptor


def open_entry(dir_fd: int, name: str, expected: os.stat_result) -> int | None:
    """A regular file `name` opened for reading, if it is still the file `expected` describes;
    None when it was removed, replaced or is no regular file."""
    try:
        descriptor = os.open(name, OPEN_READ, dir_fd=dir_fd)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as error:
        if error.errno == errno.ELOOP:  # replaced by a symlink meanwhile
            return None
        raise
    st = os.fstat(descriptor)
    if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (expected.st_dev, expected.st_ino):
        os.close(descriptor)
        return None
    return descriptor


@dataclass(frozen=True)
class Entry:
    """One entry of a walk. `dir_fd` is its folder's descriptor, valid while the walk is here."""

    path: str  # relative to the walk's top, "/"-separated
    dir_fd: int
    name: str
    stat: os.stat_result  # of the entry itself (lstat)
    depth: int  # 1 for what is directly in the top folder


@dataclass(frozen=True)
class Step:
    """`kind`: "file" (anything but a folder, symlinks included, never followed), "enter" and
    "leave" (a folder, with its own descriptor `fd`), "too-deep" (a folder beyond the depth
    limit, not entered), "other-filesystem" (not entered), "unreadable" (`error`)."""

    kind: str
    entry: Entry
    fd: int | None = None
    error: OSError | None = None


def walk(top_fd: int, max_depth: int) -> Iterator[Step]:
    """Every entry below the folder `top_fd`, depth first, in name order, without recursion:
    each folder is opened from its parent's descriptor without following a symlink and must be
    the folder that was listed; other filesystems and folders deeper than `max_depth` are
    reported, not entered. A folder's own descriptor stays open until its "leave" step."""
    device = os.fstat(top_fd).st_dev
    stack: list[tuple[Iterator[str], int, Entry | None]] = [(iter(sorted(os.listdir(top_fd))), top_fd, None)]
    try:
        while stack:
            names, here_fd, here = stack[-1]
            name = next(names, None)
            if name is None:
                stack.pop()
                if here is not None:
                    try:
                        yield Step("leave", here, here_fd)
                    finally:
                        os.close(here_fd)
                continue
            try:
                st = os.stat(name, dir_fd=here_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed meanwhile
            entry = Entry(f"{here.path}/{name}" if here else name, here_fd, name, st, len(stack))
            if not stat.S_ISDIR(st.st_mode):
                yield Step("file", entry)
                continue
            if st.st_dev != device:
                yield Step("other-filesystem", entry)
                continue
            if entry.depth > max_depth:
                yield Step("too-deep", entry)
                continue
            try:
                child = os.open(name, OPEN_DIR, dir_fd=here_fd)
            except (FileNotFoundError, NotADirectoryError):
                continue  # removed or replaced meanwhile: what is there now is seen next time
            except OSError as error:
                if error.errno == errno.ELOOP:
                    continue  # replaced by a symlink meanwhile: never followed
                yield Step("unreadable", entry, error=error)
                continue
            opened = os.fstat(child)
            if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
                os.close(child)  # replaced between the look and the open
                continue
            try:
                listing = sorted(os.listdir(child))
            except OSError as error:
                os.close(child)
                yield Step("unreadable", entry, error=error)
                continue
            stack.append((iter(listing), child, entry))
            yield Step("enter", entry, child)
    finally:
        for _names, descriptor, here in stack:
            if here is not None:
                os.close(descriptor)
