"""The two folders of an account, through its own SFTP session: list, download, upload.

File names are checked here for clear answers; the chroot and the folder modes stay the
final guard (a name that slipped through still cannot leave the account's folders).
"""

from __future__ import annotations

import asyncio
import re
import secrets
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncssh

CHUNK = 2 << 20  # one SFTP write call: asyncssh splits it into parallel requests
READS_IN_FLIGHT = 32  # SFTP read requests outstanding per download (asyncssh's blocks: 255 KiB with OpenSSH)
WRITES_IN_FLIGHT = 4  # write calls of CHUNK outstanding per upload: the pipeline never drains between them
MAX_NAME_BYTES = 255
UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\]")


class BadName(ValueError):
    pass


class RangeNotSatisfiable(ValueError):
    pass


class TooLarge(Exception):
    pass


@dataclass(frozen=True)
class Listed:
    name: str
    size: int
    mtime: int
    folder: bool = False  # a folder (of DICOM files, say): viewed, not downloaded, on the web


def check_name(name: str) -> str:
    """A plain file name in one folder: no path, no hidden name, no control characters."""
    if not name or name.strip() != name or name.startswith(".") or UNSAFE.search(name):
        raise BadName(name)
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise BadName(name)
    return name


def upload_name(filename: str) -> str:
    """The name a browser sent, without any directory part some browsers add."""
    return check_name(re.split(r"[/\\]", filename)[-1].strip())


async def listing(sftp: asyncssh.SFTPClient, folder: str) -> list[Listed]:
    """Visible regular files and folders, newest first (a package being written is hidden:
    `.name.partial`); links are not listed."""
    entries = []
    for entry in await sftp.readdir(folder):
        attrs, mode = entry.attrs, entry.attrs.permissions or 0
        if entry.filename.startswith(".") or not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            continue
        entries.append(Listed(entry.filename, attrs.size or 0, attrs.mtime or 0, folder=stat.S_ISDIR(mode)))
    return sorted(entries, key=lambda e: (-e.mtime, e.name))


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """One `bytes=` range as (start, end inclusive); None for the whole file (no header, or
    a form this server answers whole, such as several ranges)."""
    if not header:
        return None
    match = re.fullmatch(r"bytes=(\d{0,18})-(\d{0,18})", header.strip())  # no file is 10^18 bytes
    if not match or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if first == "":
        start, end = max(size - int(last), 0), size - 1
    else:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    if start >= size or start > end:
        raise RangeNotSatisfiable(header)
    return start, end


async def read_file(sftp: asyncssh.SFTPClient, path: str, start: int, length: int) -> AsyncIterator[bytes]:
    """`length` bytes from `start`, in order. asyncssh keeps READS_IN_FLIGHT block reads
    outstanding and hands blocks over as they come (possibly out of order), without joining
    them into one buffer; they are put back in order here, so at most that many blocks wait."""
    async with sftp.open(path, "rb", max_requests=READS_IN_FLIGHT) as handle:
        waiting: dict[int, bytes] = {}
        position = start
        async for offset, data in await handle.read_parallel(length, start):
            waiting[offset] = data
            while position in waiting:
                block = waiting.pop(position)
                position += len(block)
                yield block
        if position != start + length:
            raise OSError(f"{path}: shorter than announced (changed while downloading)")


class Upload:
    """One file written to a hidden name in the upload folder, renamed when complete, so
    staff and the upload notice never see half a file. Writes overlap with receiving and with
    each other; at most (queue + WRITES_IN_FLIGHT) x CHUNK bytes are held."""

    def __init__(self, sftp: asyncssh.SFTPClient, folder: str, name: str, limit: int) -> None:
        self.sftp, self.folder, self.name, self.limit = sftp, folder, name, limit
        self.partial = f"{folder}/.upload-{secrets.token_hex(8)}.partial"
        self.size = 0
        self._pieces: list[bytes] = []
        self._buffered = 0
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=2)
        self._handle = None
        self._writer: asyncio.Task | None = None
        self._renamed = False

    async def start(self) -> Upload:
        self._handle = await self.sftp.open(self.partial, "wb")
        self._writer = asyncio.create_task(self._write_all())
        return self

    async def _write_all(self) -> None:
        offset, writing = 0, set()
        try:
            while (data := await self._queue.get()) is not None:
                while len(writing) >= WRITES_IN_FLIGHT:
                    done, writing = await asyncio.wait(writing, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        task.result()  # a refused write ends the upload
                writing.add(asyncio.ensure_future(self._handle.write(data, offset)))
                offset += len(data)
            for task in writing:
                await task
        finally:
            for task in writing:
                task.cancel()

    async def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            raise TooLarge()
        self._pieces.append(data)
        self._buffered += len(data)
        if self._buffered >= CHUNK:
            await self._flush()

    async def _flush(self) -> None:
        await self._put(b"".join(self._pieces))
        self._pieces, self._buffered = [], 0

    async def _put(self, data: bytes | None) -> None:
        # Wait for room or for the writer to fail (a refused write, the disk full): never for
        # a queue nobody empties any more.
        put = asyncio.ensure_future(self._queue.put(data))
        await asyncio.wait({put, self._writer}, return_when=asyncio.FIRST_COMPLETED)
        if not put.done():
            put.cancel()
        if self._writer.done():
            await self._writer  # raises the writer's error

    async def finish(self) -> str:
        """Flush, close and rename into place; returns the final name (with " (2)" and so on
        if the name is taken: an upload never replaces a file)."""
        if self._pieces:
            await self._flush()
        await self._put(None)
        await self._writer
        await self._handle.close()
        self._handle = None
        stem, dot, suffix = self.name.rpartition(".") if "." in self.name else (self.name, "", "")
        for attempt in range(1, 100):
            name = self.name if attempt == 1 else f"{stem} ({attempt}){dot}{suffix}"
            try:
                await self.sftp.rename(self.partial, f"{self.folder}/{name}")
            except asyncssh.SFTPError:  # taken (try the next name), or refused (e.g. too long)
                if not await self.sftp.exists(f"{self.folder}/{name}"):
                    raise
                continue
            self._renamed = True
            return name
        raise asyncssh.SFTPFailure(f"no free name for {self.name}")

    async def discard(self) -> None:
        """Unless it got its name: stop writing and remove the hidden file (nothing half is left)."""
        if self._writer is not None and not self._writer.done():
            self._writer.cancel()
        if self._handle is not None:
            try:
                await self._handle.close()
            except (OSError, asyncssh.Error):
                pass
            self._handle = None
        if self._writer is not None and not self._renamed:
            try:
                await self.sftp.remove(self.partial)
            except (OSError, asyncssh.Error):
                pass
