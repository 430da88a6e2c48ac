"""What staff hand in (studies to package, a viewer folder, media to inspect): opened once, with
the rights of whoever named it, and read only through those descriptors from then on.

A folder is walked through descriptors (exchange.safefs): no symlink is followed, no other
filesystem entered, no folder deeper than the policy's limit; whatever cannot be used is named
with the reason, never left out unsaid. Nothing is opened again by its name after it was looked
at, so a name swapped meanwhile changes nothing.
"""

from __future__ import annotations

import errno
import io
import os
import resource
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from exchange import safefs, untrusted
from exchange.invoker import Invoker, rights

SYMLINK = "a symlink, not followed (hand in what it points to)"


class FdReader(io.RawIOBase):
    """Reads an open file by position (pread): many readers of one descriptor, each with a
    place of its own. Closing it leaves the descriptor open: it belongs to the HandedIn."""

    name = None  # no path: pydicom must not look anything up by a name

    def __init__(self, fd: int) -> None:
        self.fd, self.position = fd, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = os.preadv(self.fd, [buffer], self.position)
        self.position += count
        return count

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: os.fstat(self.fd).st_size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def tell(self) -> int:
        return self.position


def reader(fd: int) -> BinaryIO:
    return io.BufferedReader(FdReader(fd), buffer_size=1 << 16)


@dataclass(frozen=True)
class File:
    label: str  # how staff know it: the path as named (made printable)
    relative: str  # below the named folder, "/"-separated ("" for a file named itself)
    fd: int
    size: int


@dataclass(frozen=True)
class Unusable:
    label: str
    problem: str  # why it cannot be used


@dataclass
class HandedIn:
    found: list[File | Unusable] = field(default_factory=list)  # in the order of the walk
    named: list[str] = field(default_factory=list)  # the paths as they were named (printable)
    tops: list[int] = field(default_factory=list)  # each named path's own descriptor (file or folder) opened
    _descriptors: list[int] = field(default_factory=list)

    @property
    def files(self) -> list[File]:
        return [item for item in self.found if isinstance(item, File)]

    @property
    def problems(self) -> list[Unusable]:
        return [item for item in self.found if isinstance(item, Unusable)]

    @property
    def descriptors(self) -> tuple[int, ...]:
        """Every descriptor it holds open (what a confined reader of its files must keep)."""
        return tuple(self._descriptors)

    def close(self) -> None:
        for descriptor in self._descriptors:
            os.close(descriptor)
        self._descriptors.clear()

    def __enter__(self) -> HandedIn:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _label(path: Path, relative: str = "") -> str:
    return untrusted.printable(f"{path}/{relative}" if relative else str(path))


def _more_descriptors() -> int:
    """Every file stays open until the work is done: as many descriptors as the system allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class MissingPaths(Exception):
    """Paths that are not there (as their namer sees them: nothing about others' files)."""

    def __init__(self, paths: list[str]) -> None:
        super().__init__(f"no such file or folder: {', '.join(paths)}")
        self.paths = paths


def open_named(paths: list[Path], who: Invoker | None, max_depth: int) -> HandedIn:
    """Open every file below `paths` with `who`'s rights (None: the tool's own); MissingPaths
    names every path that is not there."""
    found, missing = HandedIn(named=[_label(Path(path)) for path in paths]), []
    limit = _more_descriptors() - 64  # some for the rest of the work
    try:
        with rights(who):
            for path in paths:
                try:
                    _open_path(Path(path), max_depth, found, limit)
                except FileNotFoundError:
                    missing.append(_label(Path(path)))
        if missing:
            raise MissingPaths(missing)
    except BaseException:
        found.close()
        raise
    return found


def _open_path(path: Path, max_depth: int, found: HandedIn, limit: int) -> None:
    try:
        descriptor = os.open(path, safefs.OPEN_READ)
    except FileNotFoundError:
        raise
    except OSError as error:  # EACCES: the namer may not read it
        if error.errno == errno.ELOOP:
            found.found.append(Unusable(_label(path), SYMLINK))
        else:
            found.found.append(Unusable(_label(path), f"not readable ({error.strerror})"))
        return
    found._descriptors.append(descriptor)
    found.tops.append(descriptor)
    st = os.fstat(descriptor)
    if stat.S_ISREG(st.st_mode):
        found.found.append(File(_label(path), "", descriptor, st.st_size))
        return
    if not stat.S_ISDIR(st.st_mode):
        found.found.append(Unusable(_label(path), "not a regular file"))
        return
    for step in safefs.walk(descriptor, max_depth):
        entry = step.entry
        label = _label(path, entry.path)
        if step.kind in ("enter", "leave"):
            continue
        if step.kind == "too-deep":
            found.found.append(
                Unusable(label, f"more than {max_depth} folders deep (policy accounts.max_folder_depth)")
            )
        elif step.kind == "other-filesystem":
            found.found.append(Unusable(label, "another filesystem, not entered"))
        elif step.kind == "unreadable":
            found.found.append(Unusable(label, f"folder not readable ({step.error.strerror})"))
        elif stat.S_ISLNK(entry.stat.st_mode):
            found.found.append(Unusable(label, SYMLINK))
        elif not stat.S_ISREG(entry.stat.st_mode):
            found.found.append(Unusable(label, "not a regular file"))
        elif len(found._descriptors) >= limit:
            raise OSError(errno.EMFILE, f"more than {limit} files; hand them in as several packages", str(path))
        else:
            _open_file(entry, label, found)


def _open_file(entry: safefs.Entry, label: str, found: HandedIn) -> None:
    try:
        descriptor = safefs.open_entry(entry.dir_fd, entry.name, entry.stat)
    except OSError as error:
        found.found.append(Unusable(label, f"not readable ({error.strerror})"))
        return
    if descriptor is None:
        found.found.append(Unusable(label, "changed while it was read (removed or replaced)"))
        return
    found._descriptors.append(descriptor)
    found.found.append(File(label, entry.path, descriptor, os.fstat(descriptor).st_size))
