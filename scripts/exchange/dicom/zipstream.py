"""Write zip entries with deflate and CRC spread over all cores, in order, in bounded memory.

zlib releases the GIL, so threads work in parallel: every entry is read in 1 MiB chunks;
each chunk is deflated on its own (raw deflate, ended with a sync flush, so the pieces
join into one valid stream, as pigz does) by a thread pool, and each entry's CRC-32 is
computed by another pool job reading the file once more (from the page cache), while the
main thread only reads ahead and writes finished pieces in order. At most
IN_FLIGHT_PER_WORKER chunks per worker are in memory. The zip container itself is Python's
zipfile: its entry writer gets the pieces and, at close, the entry's CRC and size (and, when
deflating, adds the final empty block).
"""

from __future__ import annotations

import os
import zipfile
import zlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from exchange.dicom.dicomfiles import READ_ERRORS, Source

CHUNK = 1 << 20


class SourceError(Exception):
    """A source could not be read while packing; the message names it."""


IN_FLIGHT_PER_WORKER = 4
ZIP64_AT = 0x7FFFFFFF


@dataclass
class Entry:
    info: zipfile.ZipInfo
    source: Source

    @property
    def stored(self) -> bool:
        return self.info.compress_type == zipfile.ZIP_STORED


def _crc32(source: Source) -> int:
    crc = 0
    try:
        with source.open() as handle:
            while chunk := handle.read(CHUNK):
                crc = zlib.crc32(chunk, crc)
    except READ_ERRORS as error:
        raise SourceError(f"{source.label}: {error}") from None
    return crc


def _deflate(chunk: bytes, level: int) -> bytes:
    compressor = zlib.compressobj(level, zlib.DEFLATED, -15)
    return compressor.compress(chunk) + compressor.flush(zlib.Z_SYNC_FLUSH)


class _EntryWriter:
    """The open zipfile entry that pieces are written into, one entry at a time."""

    def __init__(self, archive: zipfile.ZipFile) -> None:
        self.archive = archive
        self.index, self.handle = -1, None
        self.crc, self.size = 0, 0

    def write(self, index: int, entry: Entry, piece: bytes | None, size: int) -> None:
        """`piece` None: the whole stored file, copied by the kernel (see `copies_files`)."""
        if index != self.index:
            self.handle = self.archive.open(entry.info, "w", force_zip64=entry.source.size > ZIP64_AT)
            self.index = index
        if piece is None:
            self.handle._fileobj.copy_file(entry.source.fd, size, entry.source.label)
            self.handle._compress_size += size
            self.handle._file_size = size
        elif PIECES:
            self.handle._fileobj.write(piece)
            self.handle._compress_size += len(piece)
            self.handle._file_size = size
        else:
            self.handle.write(piece)

    def close(self, crc: Future | None) -> None:
        if self.handle is not None:
            if PIECES and crc is not None:
                self.handle._crc = crc.result()
            self.handle.close()  # a deflating entry's compressor adds the final empty block
            self.handle = None


def write_entries(
    archive: zipfile.ZipFile,
    entries: list[Entry],
    level: int = 1,
    workers: int | None = None,
    progress: Callable[[int], None] = lambda size: None,
) -> int:
    """Write `entries` into `archive` in order; returns the bytes read."""
    workers = workers or os.cpu_count() or 1
    writer = _EntryWriter(archive)
    pending: deque[tuple[int, Entry, Future | bytes, int, bool, Future | None]] = deque()
    total = 0

    def drain(keep: int) -> None:
        while len(pending) > keep:
            index, entry, piece, size, last, crc = pending.popleft()
            writer.write(index, entry, piece.result() if isinstance(piece, Future) else piece, size)
            if last:
                writer.close(crc)

    with ThreadPoolExecutor(workers, thread_name_prefix="deflate") as pool:
        try:
            for index, entry in enumerate(entries):
                size = 0
                compress = not entry.stored and PIECES
                crc = pool.submit(_crc32, entry.source) if PIECES else None
                if entry.stored and PIECES and entry.source.fd is not None and hasattr(archive.fp, "copy_file"):
                    # Already-compressed images: the kernel copies the file, threads hash it.
                    pending.append((index, entry, None, entry.source.size, True, crc))
                    total += entry.source.size
                    progress(total)
                    drain(keep=workers * IN_FLIGHT_PER_WORKER)
                    continue
                try:
                    src = entry.source.open()
                    chunk = src.read(CHUNK)
                except READ_ERRORS as error:
                    raise SourceError(f"{entry.source.label}: {error}") from None
                with src:
                    if not chunk:
                        pending.append((index, entry, b"", 0, True, crc))
                    while chunk:
                        try:
                            following = src.read(CHUNK)
                        except READ_ERRORS as error:
                            raise SourceError(f"{entry.source.label}: {error}") from None
                        size += len(chunk)
                        piece = pool.submit(_deflate, chunk, level) if compress else chunk
                        pending.append((index, entry, piece, size, not following, crc))
                        total += len(chunk)
                        progress(total)
                        drain(keep=workers * IN_FLIGHT_PER_WORKER)
                        chunk = following
            drain(keep=0)
        finally:
            for item in pending:
                if isinstance(item[2], Future):
                    item[2].cancel()
            writer.close(None)
    return total


def _zipfile_takes_pieces() -> bool:
    """zipfile's entry writer (CPython 3.11 to 3.13) keeps its counters in these attributes;
    on a Python where it does not, zipfile deflates by itself (one core, same result)."""
    writer = getattr(zipfile, "_ZipWriteFile", None)
    names = set(writer.__init__.__code__.co_names) | set(writer.write.__code__.co_names) if writer else set()
    return {"_compress_size", "_crc", "_file_size", "_fileobj"} <= names


PIECES = _zipfile_takes_pieces()
