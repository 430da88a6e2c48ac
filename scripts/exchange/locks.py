"""The tools' locks: files in a folder only root can reach.

A lock in a world-writable folder (/run/lock) can be taken and held by any local account (the
purge then skips for ever, account changes hang), or replaced by a symlink that root then opens.
Here the folder is root's, 0700, and the lock file is opened without following a symlink.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from collections.abc import Iterator

from exchange import paths
from exchange.errors import ExchangeError


class LockFolderError(ExchangeError):
    """The lock folder is not root's own; the message says what is wrong with it."""


class Busy(Exception):
    """Another process holds the lock (only when not waiting for it)."""


def _folder(path: str) -> int:
    """The lock folder's descriptor; made if missing (its parent, /run, is root's)."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as error:
        raise LockFolderError(f"{path}: cannot open the tools' lock folder: {error.strerror}") from None
    st = os.fstat(descriptor)
    if st.st_uid != 0:
        os.close(descriptor)
        raise LockFolderError(f"{path}: owned by uid {st.st_uid}, not root; remove it and run the tool again")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.fchmod(descriptor, 0o700)  # root's folder, opened too wide by hand: closed again
    return descriptor


@contextlib.contextmanager
def held(name: str, wait: bool, folder: str = paths.TOOL_RUN_DIR) -> Iterator[None]:
    """Hold the lock `name`; without `wait`, Busy if another process holds it."""
    directory = _folder(folder)
    try:
        descriptor = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=directory)
    except OSError as error:  # e.g. a symlink in its place: never followed
        raise LockFolderError(f"{folder}/{name}: cannot open the lock: {error.strerror}") from None
    finally:
        os.close(directory)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Busy(f"{folder}/{name}") from None
        yield
    finally:
        os.close(descriptor)
