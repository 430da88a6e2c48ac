"""The hash chain: one file of canonical JSON lines per month, each line naming the SHA-256 of
the line before it, so that an edited, removed or inserted record shows where it happened.

A line is `{"n": sequence over the whole trail, "previous": hash, "record": AccessRecord}`; the
first line of a month names the last line of the month before. Ended months are gzipped; the
current month is append-only (chattr +a) and ended months immutable (+i) where the filesystem
allows it (not in every tmp folder): the auditors' control TRAIL-01 finds a missing flag.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import json
import os
import re
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from exchange.trail.record import canonical

GENESIS = "0" * 64  # what the very first line names as the one before it
REMOVED = "trail-months-removed"  # the retention's record of what it removed, and where the chain now starts
MONTH_FILE = re.compile(r"^(\d{4}-\d{2})\.jsonl(\.gz)?$")

# linux/fs.h: the inode flags chattr sets.
_FS_IOC_GETFLAGS = 0x80086601
_FS_IOC_SETFLAGS = 0x40086602
APPEND_ONLY = 0x00000020
IMMUTABLE = 0x00000010
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def plain_name(month: str) -> str:
    return f"{month}.jsonl"


def compressed_name(month: str) -> str:
    return f"{month}.jsonl.gz"


def digest(line: bytes) -> str:
    """A line's hash, over its bytes without the newline."""
    return hashlib.sha256(line).hexdigest()


def encode(n: int, previous: str, record: dict[str, Any]) -> bytes:
    """One line, without its newline."""
    return canonical({"n": n, "previous": previous, "record": record}).encode("ascii")


def decode(line: bytes) -> tuple[int, str, dict[str, Any]] | None:
    """(n, previous, record) of a line; None if it is not a trail line."""
    try:
        data = json.loads(line)
    except ValueError:
        return None
    if not isinstance(data, dict) or set(data) != {"n", "previous", "record"}:
        return None
    n, previous, record = data["n"], data["previous"], data["record"]
    if type(n) is not int or not isinstance(previous, str) or not isinstance(record, dict):
        return None
    return n, previous, record


def month_files(folder_fd: int) -> list[tuple[str, str]]:
    """(month, file name) oldest first; when a compression was cut short and both exist, the plain
    file (the original) is the month's file."""
    found: dict[str, str] = {}
    for name in os.listdir(folder_fd):
        match = MONTH_FILE.match(name)
        if match and (match.group(1) not in found or not match.group(2)):
            found[match.group(1)] = name
    return sorted(found.items())


def lines(folder_fd: int, name: str) -> Iterator[bytes]:
    """The lines of a month file (plain or gzipped), without their newlines."""
    fd = os.open(name, _OPEN_FLAGS, dir_fd=folder_fd)
    with open(fd, "rb") as raw:
        stream = gzip.GzipFile(fileobj=raw, mode="rb") if name.endswith(".gz") else raw
        with stream:
            for line in stream:
                yield line.rstrip(b"\n")


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    problem: str


@dataclass
class Walk:
    """What a walk over the chain found."""

    records: int = 0
    months: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def removal_start(record: dict[str, Any]) -> tuple[int, str] | None:
    """(n, previous) of the first line a retention removal kept, from its `trail-months-removed`
    record; None for any other record."""
    if record.get("event") != REMOVED:
        return None
    details = record.get("details")
    anchor = details.get("start") if isinstance(details, dict) else None
    if not isinstance(anchor, dict) or type(anchor.get("n")) is not int or not isinstance(anchor.get("previous"), str):
        return None
    return anchor["n"], anchor["previous"]


def check(folder_fd: int, start: tuple[int, str] | None = None, known: Iterable[tuple[int, str]] = ()) -> Walk:
    """Walk the chain. Where it must start: (1, GENESIS), unless the retention removed older
    months: then as its last `trail-months-removed` record in the chain says (the first line it
    kept), or else `start`, the index's anchor (a trail whose removal predates that record). A
    first line later than that is records missing at the start; an earlier one is months the
    retention named and has not removed yet (a purge cut short), no loss. `known` is the index's
    (n, hash), ascending: it also finds the last line edited or removed, which no later line
    names. A line that is not a trail line (a write cut short by a crash) is reported and
    stepped over: the next line names the one before."""
    walk = Walk()
    found: dict[tuple[str, int], str] = {}  # the chain's own finding wins over the index's at a place
    indexed = iter(known)
    pending = next(indexed, None)
    previous_n, previous_hash = 0, GENESIS
    previous_place: tuple[str, int] | None = None
    bad_run = 0  # not-trail lines just before: a record made garbage explains a gap of one each
    first: tuple[int, str, tuple[str, int]] | None = None  # the first trail line: n, the hash it names, where
    removed: tuple[int, str] | None = None  # the start the chain's last retention record names
    name, number = "", 0
    for month, name in month_files(folder_fd):
        walk.months.append(month)
        number = 0
        for number, line in enumerate(lines(folder_fd, name), start=1):
            decoded = decode(line)
            if decoded is None:
                found[(name, number)] = "not a trail line"
                bad_run += 1
                continue
            walk.records += 1
            n, named, record = decoded
            hashed = digest(line)
            if first is None:  # checked against the start once the whole chain is read
                first = (n, named, (name, number))
                previous_n, previous_hash, bad_run = n - 1, named, 0
            if (anchor := removal_start(record)) is not None:
                removed = anchor
            if n > previous_n + 1 + bad_run:
                missing = n - previous_n - 1
                what = "1 record" if missing == 1 else f"{missing} records"
                found[(name, number)] = f"{what} missing before it (sequence {n} follows {previous_n})"
            elif n <= previous_n and previous_n >= 0:
                found[(name, number)] = f"out of sequence (sequence {n} follows {previous_n})"
            elif named != previous_hash and not bad_run and previous_place is not None:
                here = f"line {number}" if previous_place[0] == name else f"line {number} of {name}"
                found[previous_place] = f"record changed ({here} names another hash for it)"
            while pending is not None and pending[0] < n:
                pending = next(indexed, None)
            if pending is not None and pending[0] == n and pending[1] != hashed:
                found.setdefault((name, number), "record changed (the index names another hash for it)")
            previous_n, previous_hash, previous_place, bad_run = n, hashed, (name, number), 0
        if number == 0:
            found[(name, 1)] = "empty month file"
    if first is not None:
        start_n, start_previous = removed or start or (1, GENESIS)
        n, named, place = first
        if n > start_n:
            missing = n - start_n
            what = "1 record" if missing == 1 else f"{missing} records"
            found.setdefault(
                place, f"{what} missing at the start (the first is sequence {n}, the trail starts at {start_n})"
            )
        elif n == start_n and named != start_previous:
            found.setdefault(place, "names another hash for the line before the trail's first")
    last_indexed = pending[0] if pending is not None else None
    for last_indexed_n, _ in indexed:
        last_indexed = last_indexed_n
    if last_indexed is not None and last_indexed > previous_n and walk.months:
        missing = last_indexed - previous_n
        what = "1 record" if missing == 1 else f"{missing} records"
        found[(name, number + 1)] = f"{what} missing at the end (the index has sequence up to {last_indexed})"
    walk.problems = [Problem(file, line, problem) for (file, line), problem in sorted(found.items())]
    return walk


def last_line(folder_fd: int, name: str) -> bytes | None:
    """The last line of a plain month file, read from its end."""
    fd = os.open(name, _OPEN_FLAGS, dir_fd=folder_fd)
    with open(fd, "rb") as stream:
        end = stream.seek(0, os.SEEK_END)
        if end == 0:
            return None
        size = 4096
        while True:
            start = max(0, end - size)
            stream.seek(start)
            chunk = stream.read(end - start).rstrip(b"\n")
            cut = chunk.rfind(b"\n")
            if cut >= 0 or start == 0:
                return chunk[cut + 1 :]
            size *= 4


def flags(fd: int) -> int | None:
    """The inode flags of an open file; None where the filesystem has none."""
    try:
        out = fcntl.ioctl(fd, _FS_IOC_GETFLAGS, struct.pack("q", 0))
    except OSError:
        return None
    return struct.unpack("i", out[:4])[0]


def set_flag(folder_fd: int, name: str, flag: int, on: bool) -> bool:
    """chattr +a/-a/+i/-i on a month file; False where the filesystem or the process cannot (a
    tmp folder on overlay, not root): the audit control says so on a host."""
    try:
        fd = os.open(name, _OPEN_FLAGS, dir_fd=folder_fd)
    except OSError:
        return False
    try:
        current = flags(fd)
        if current is None:
            return False
        wanted = current | flag if on else current & ~flag
        if wanted == current:
            return True
        try:
            fcntl.ioctl(fd, _FS_IOC_SETFLAGS, struct.pack("q", wanted))
        except OSError:
            return False
        return True
    finally:
        os.close(fd)


@contextlib.contextmanager
def lifted(folder_fd: int, name: str) -> Iterator[None]:
    """The file's +a/+i lifted for the moment needed (removal, compression), as the audit log's
    logrotate does; put back unless the file is gone."""
    fd = os.open(name, _OPEN_FLAGS, dir_fd=folder_fd)
    try:
        before = flags(fd) or 0
    finally:
        os.close(fd)
    held = before & (APPEND_ONLY | IMMUTABLE)
    for flag in (APPEND_ONLY, IMMUTABLE):
        if held & flag:
            set_flag(folder_fd, name, flag, False)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.stat(name, dir_fd=folder_fd, follow_symlinks=False)
            for flag in (APPEND_ONLY, IMMUTABLE):
                if held & flag:
                    set_flag(folder_fd, name, flag, True)
