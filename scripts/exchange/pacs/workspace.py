"""The folder a study retrieved from PACS waits in until it is packaged: one subfolder of the
tree's root-only pacs-retrieve folder (exchange.layout), removed afterwards, also after Ctrl-C
or SIGTERM. One retrieve runs at a time (there is one retrieve port), so whatever a killed
retrieve left behind is removed by the next one. Only root writes here, and only flat files
(exchange.pacs.retrieve), so clearing it is one level deep."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from exchange import locks, paths
from exchange.errors import ExchangeError
from exchange.layout import Layout

_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class WorkspaceError(ExchangeError):
    """The retrieve folder is not root's own; nothing was retrieved."""


@contextlib.contextmanager
def retrieve_folder(layout: Layout, say: Callable[[str], None] = print) -> Iterator[tuple[Path, int]]:
    """(path, descriptor) of a new, empty, root-only folder, removed with what it holds on exit."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(locks.held(paths.PACS_RETRIEVE_LOCK, wait=False))
        except locks.Busy:
            say("another retrieve from PACS is running; waiting for it to end ...")
            stack.enter_context(locks.held(paths.PACS_RETRIEVE_LOCK, wait=True))
        parent_path = layout.pacs_retrieve_dir()
        parent = _root_only(parent_path)
        stack.callback(os.close, parent)
        for leftover in os.listdir(parent):  # a retrieve that was killed: nobody else writes here
            _remove(parent, leftover)
        name = str(os.getpid())
        os.mkdir(name, 0o700, dir_fd=parent)
        stack.callback(_remove, parent, name)
        folder = os.open(name, _DIRECTORY, dir_fd=parent)
        stack.callback(os.close, folder)
        yield Path(parent_path) / name, folder


def _root_only(path: str) -> int:
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)  # before the first deploy that knows it
    try:
        descriptor = os.open(path, _DIRECTORY)
    except OSError as error:
        raise WorkspaceError(f"{path}: cannot open the PACS retrieve folder: {error.strerror}") from None
    info = os.fstat(descriptor)
    if info.st_uid != 0 or stat.S_IMODE(info.st_mode) & 0o077:
        os.close(descriptor)
        raise WorkspaceError(
            f"{path}: must be root's own (root, 0700), is uid {info.st_uid} mode {stat.S_IMODE(info.st_mode):04o}; "
            "run the deploy to set it right; nothing was retrieved"
        )
    return descriptor


def _remove(parent: int, name: str) -> None:
    """Remove the retrieve folder `name` in `parent` and the files in it, never following a link."""
    try:
        folder = os.open(name, _DIRECTORY, dir_fd=parent)
    except NotADirectoryError:
        os.unlink(name, dir_fd=parent)
        return
    except OSError as error:
        if error.errno == errno.ELOOP:  # a symlink in root's folder; removed, never followed
            os.unlink(name, dir_fd=parent)
            return
        raise
    try:
        for entry in os.listdir(folder):
            os.unlink(entry, dir_fd=folder)
    finally:
        os.close(folder)
    os.rmdir(name, dir_fd=parent)
