"""A folder of DICOM files (a partner's upload over SFTP, or a folder in a download folder) on
the view page: its files' headers read through the user's own SFTP session and grouped into
series, each picture rendered when it is asked for, from its file's pixel data, by
exchange.dicom.previews (the same pictures a package carries).

The files are the sender's and are read as untrusted: the walk is bounded in depth (the policy's
max_folder_depth), in entries (hidden ones counted too) and in files, never follows a link, and
skips hidden names (an upload in progress); a header is read from the file's first HEAD_BYTES
only (and a deflated one inflated no further, exchange.dicom.reading), and parsed in
the view page's own threads; its texts are kept cut (untrusted.TEXT_LIMIT); a file above MAX_FILE_BYTES is not rendered.
Pictures are rendered in worker processes (exchange.portal.rendering), each file streamed to its
worker CHUNK_BYTES at a time, so a file that makes a decoder crash, hang or run out of memory
fails its own picture only, never the portal and the other accounts' sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import stat
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import asyncssh

from exchange import untrusted
from exchange.portal.study_view import TEXTS, NotViewable, Picture, SeriesStack, parsed

MAX_ENTRIES = 20_000  # names read in all, folders included
MAX_FILES = 5_000  # files whose header is read
HEAD_BYTES = 256 << 10  # a header is rarely more (read, and inflated if deflated): the pixel data comes last
MAX_FILE_BYTES = 128 << 20  # a 1,000-frame ultrasound clip; a larger file says so instead
CHUNK_BYTES = 1 << 20  # of a file on its way to its render worker: what the portal holds of it
HEADERS_IN_FLIGHT = 8
KEPT_SECONDS = 60  # a page opened again within this shows the folder as read then (paging its series)
_HEADER_TAGS = ["StudyInstanceUID", "SeriesInstanceUID", "InstanceNumber", "NumberOfFrames", "Rows", "PatientID",
                "PatientName", "StudyDate", "StudyDescription", "Modality", "SeriesNumber", "SeriesDescription"]  # fmt: skip
_TEXT_TAGS = dict(zip(TEXTS, ["PatientID", "PatientName", "StudyDate", "StudyDescription", "Modality", "SeriesNumber",
                              "SeriesDescription"], strict=True))  # fmt: skip


@dataclass(frozen=True)
class FolderFile:
    path: str  # below the folder
    size: int
    mtime: int
    transfer_syntax: str


@dataclass
class FolderView:
    name: str
    series: list[SeriesStack]
    files: dict[str, FolderFile]
    read_at: float = field(default_factory=time.monotonic)
    recorded: set[int | None] = field(default_factory=set, repr=False)  # exchange.portal.viewing's audit

    def recent(self) -> bool:
        return time.monotonic() - self.read_at < KEPT_SECONDS

    def picture(self, series: int, index: int) -> tuple[FolderFile, int] | None:
        if not 1 <= series <= len(self.series):
            return None
        pictures = self.series[series - 1].pictures
        if not 1 <= index <= len(pictures):
            return None
        return self.files[pictures[index - 1].name], pictures[index - 1].frame


async def _walk(sftp: asyncssh.SFTPClient, root: str, max_depth: int) -> list[tuple[str, asyncssh.SFTPAttrs]]:
    """The regular files below `root`, breadth first; links are not followed (OpenSSH's readdir
    gives each name's own attributes, as lstat does)."""
    found, entries, waiting = [], 0, [("", 0)]
    while waiting:
        relative, depth = waiting.pop(0)
        # Closed as soon as the walk stops, a refusal midway too (not whenever the loop gets to it).
        async with contextlib.aclosing(sftp.scandir(f"{root}/{relative}" if relative else root)) as listing:
            async for entry in listing:
                name = entry.filename
                if name in (".", ".."):
                    continue
                entries += 1  # a hidden name too: each one is read
                if entries > MAX_ENTRIES:
                    raise NotViewable(f"it holds more than {MAX_ENTRIES} names")
                if name.startswith("."):
                    continue
                path, mode = f"{relative}/{name}" if relative else name, entry.attrs.permissions or 0
                if stat.S_ISDIR(mode) and depth < max_depth:
                    waiting.append((path, depth + 1))
                elif stat.S_ISREG(mode):
                    found.append((path, entry.attrs))
                    if len(found) > MAX_FILES:
                        raise NotViewable(f"it holds more than {MAX_FILES} files")
    return found


def _header(head: bytes):
    """The file's header if it is DICOM (Part 10: 'DICM' after the preamble), else None."""
    from exchange.dicom import reading  # the portal loads pydicom only when a folder is viewed

    if head[128:132] != b"DICM":
        return None
    try:
        return reading.header(io.BytesIO(head), _HEADER_TAGS, most=HEAD_BYTES).dataset
    except Exception:  # noqa: BLE001 - a sender's header may make the parser raise anything
        return None


async def _read_head(sftp: asyncssh.SFTPClient, path: str, size: int) -> bytes:
    async with sftp.open(path, "rb") as handle:
        return await handle.read(min(size, HEAD_BYTES), 0)


async def open_folder(sftp: asyncssh.SFTPClient, root: str, name: str, max_depth: int) -> FolderView:
    """The folder's series, or NotViewable. OSError and asyncssh.Error: the session broke."""
    listed = await _walk(sftp, root, max_depth)
    limit = asyncio.Semaphore(HEADERS_IN_FLIGHT)

    async def header(path: str, attrs: asyncssh.SFTPAttrs):
        async with limit:
            try:
                head = await _read_head(sftp, f"{root}/{path}", attrs.size or 0)
            except asyncssh.SFTPError:  # not readable (gone meanwhile, or no rights): not shown
                return None
        return await parsed(_header, head)

    headers = await asyncio.gather(*(header(path, attrs) for path, attrs in listed))
    groups: dict[tuple[str, str], list] = defaultdict(list)
    files = {}
    for (path, attrs), found in zip(listed, headers, strict=True):
        if found is None:
            continue
        syntax = str(found.file_meta.get("TransferSyntaxUID", ""))
        files[path] = FolderFile(path, attrs.size or 0, attrs.mtime or 0, syntax)
        groups[(str(found.get("StudyInstanceUID", "")), str(found.get("SeriesInstanceUID", "")))].append((found, path))
    if not groups:
        raise NotViewable("it holds no DICOM files")
    return FolderView(name, [_series(n, members) for n, members in enumerate(_ordered(groups), start=1)], files)


def _ordered(groups: dict) -> list[list]:
    def number(value: object) -> int:
        try:
            return int(str(value))
        except ValueError:
            return 1 << 31

    for members in groups.values():
        members.sort(key=lambda member: (number(member[0].get("InstanceNumber", "")), member[1]))
    return sorted(groups.values(), key=lambda members: (str(members[0][0].get("StudyDate", "")),
                                                         number(members[0][0].get("SeriesNumber", ""))))  # fmt: skip


def _series(number: int, members: list) -> SeriesStack:
    from exchange.dicom import previews

    first = members[0][0]
    images = [(header, path) for header, path in members if "Rows" in header]  # not a report or a document
    counts = [_frames(header) for header, _ in images]
    problems = {"not an image": len(members) - len(images)} if len(images) < len(members) else {}
    pictures = tuple(
        Picture(images[image][1], 0, 0, frame) for image, frame in previews.spread(counts, previews.MAX_PER_SERIES)
    )
    texts = {key: untrusted.cut(first.get(tag, "") or "") for key, tag in _TEXT_TAGS.items()}
    return SeriesStack(number, texts, len(members), sum(counts), pictures, problems)


def _frames(header) -> int:
    try:
        return max(1, int(str(header.get("NumberOfFrames") or 1)))
    except ValueError:
        return 1


# -- a file for its render worker (exchange.portal.rendering) ---------------------------------


@contextlib.asynccontextmanager
async def opened(
    sftp: asyncssh.SFTPClient, path: str, file: FolderFile
) -> AsyncIterator[asyncssh.SFTPClientFile | None]:
    """The file open, if it is still the one the view was made of (else None: read the folder again)."""
    if file.size > MAX_FILE_BYTES:
        raise NotViewable(f"{file.path} is too large to show here")
    async with sftp.open(path, "rb") as handle:
        attrs = await handle.stat()
        yield handle if (attrs.size, attrs.mtime) == (file.size, file.mtime) else None


async def chunks(handle: asyncssh.SFTPClientFile, file: FolderFile) -> AsyncIterator[bytes]:
    """The file's `file.size` bytes, CHUNK_BYTES at a time."""
    offset = 0
    while offset < file.size:
        data = await handle.read(min(CHUNK_BYTES, file.size - offset), offset)
        if not data:
            raise NotViewable(f"{file.path} changed while it was read")
        offset += len(data)
        yield data
