"""A study package's preview pictures, read in place from its zip through the user's own SFTP
session: the zip's central directory once (by Python's zipfile, reading through the session; the
zip's last TAIL_BYTES come in one read first, which for most packages holds the end record, the
whole directory and STACKS.JSON, written last), then each stored picture by one ranged read. Nothing is copied to disk and the portal gains no
right the user lacks (the chroot and the folder modes stay the guard).

The zip is the server's (exchange package made it), but anything in a download folder is read
as untrusted: every read is bounded before it is made, STACKS.JSON (written by
exchange.dicom.webcontent) is checked field by field, only stored entries that it lists and
that start as JPEG are ever served, and each is checked against its CRC.
"""

from __future__ import annotations

import asyncio
import json
import struct
import zipfile
import zlib
from dataclasses import dataclass, field

import asyncssh

from exchange.dicom import pdi
from exchange.portal.study_view import TEXTS, NotViewable, Picture, SeriesStack

MAX_DIRECTORY_BYTES = 32 << 20  # the central directory: about 300,000 entries; a package has a few thousand
MAX_STACKS_BYTES = 8 << 20  # STACKS.JSON: 4,000 pictures take about 1 MB
MAX_PICTURE_BYTES = 4 << 20  # a 512 px JPEG is about 30 KB
MAX_SERIES = 10_000
READ_TIMEOUT = 60  # seconds for one read of the zip's directory
# The zip's end read at once: the directory of about 1,400 entries (a CT of 1,000 slices: 102 kB)
# and STACKS.JSON before it. Zipfile otherwise reads the end record, the zip64 locator and the
# directory one request each, and STACKS.JSON is one more (bench/portal_view.py).
TAIL_BYTES = 128 << 10
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # PKZIP's local file header, 30 bytes
_LOCAL_EXTRA_GUESS = 64  # read with the header: Python's zipfile writes at most a zip64 field there


@dataclass
class PackageView:
    """What the view page needs of one package: its series and where each stored picture is."""

    name: str
    size: int
    mtime: int
    series: list[SeriesStack]
    entries: dict[str, zipfile.ZipInfo] = field(repr=False)

    def picture(self, series: int, index: int) -> zipfile.ZipInfo | None:
        if not 1 <= series <= len(self.series):
            return None
        pictures = self.series[series - 1].pictures
        return self.entries.get(pictures[index - 1].name) if 1 <= index <= len(pictures) else None

    def same_file(self, attrs: asyncssh.SFTPAttrs) -> bool:
        return (attrs.size, attrs.mtime) == (self.size, self.mtime)


class _Tail:
    """The zip's last bytes, read in one request; a read that starts inside them is answered from
    memory (up to the end of the file, as a read at its end is), any other through the session."""

    def __init__(self, handle: asyncssh.SFTPClientFile, start: int, data: bytes) -> None:
        self.handle, self.start, self.data = handle, start, data

    @classmethod
    async def read_end(cls, handle: asyncssh.SFTPClientFile, size: int) -> _Tail:
        wanted = min(TAIL_BYTES, size)
        data = await handle.read(wanted, size - wanted) if wanted else b""
        if len(data) != wanted:  # the file changed since its stat: nothing kept, every read asks
            return cls(handle, size, b"")
        return cls(handle, size - wanted, data)

    def has(self, offset: int) -> bool:
        return offset >= self.start

    def cut(self, count: int, offset: int) -> bytes:
        return self.data[offset - self.start : offset - self.start + count]

    async def read(self, count: int, offset: int) -> bytes:
        return self.cut(count, offset) if self.has(offset) else await self.handle.read(count, offset)


class _RemoteReader:
    """A read-only file for zipfile, which runs in a worker thread: each read is answered from the
    zip's end read before, or is one SFTP read done on the portal's event loop; none may ask for
    more than MAX_DIRECTORY_BYTES (a forged end record could name a directory the size of the file)."""

    def __init__(self, tail: _Tail, size: int, loop: asyncio.AbstractEventLoop) -> None:
        self.tail, self.size, self.loop, self.position = tail, size, loop, 0

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = 0) -> int:
        self.position = max(0, offset if whence == 0 else self.position + offset if whence == 1 else self.size + offset)
        return self.position

    def read(self, count: int = -1) -> bytes:
        count = self.size - self.position if count is None or count < 0 else min(count, self.size - self.position)
        if count > MAX_DIRECTORY_BYTES:
            raise NotViewable("its table of contents is larger than any study package's")
        if count <= 0:
            return b""
        if self.tail.has(self.position):
            data = self.tail.cut(count, self.position)
        else:
            future = asyncio.run_coroutine_threadsafe(self.tail.handle.read(count, self.position), self.loop)
            data = future.result(READ_TIMEOUT)
        self.position += len(data)
        return data


def _directory(reader: _RemoteReader) -> dict[str, zipfile.ZipInfo]:
    """The zip's entries of the web content (IHE_PDI/)."""
    try:
        with zipfile.ZipFile(reader) as archive:  # type: ignore[arg-type]  # reads, never writes
            return {info.filename: info for info in archive.infolist() if info.filename.startswith(f"{pdi.FOLDER}/")}
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, struct.error, EOFError):
        raise NotViewable("it is not a zip file, or a damaged one") from None


async def read_entry(handle: asyncssh.SFTPClientFile | _Tail, info: zipfile.ZipInfo, most: int) -> bytes:
    """One entry's content, stored or deflated, by one ranged read (two if its local header
    carries a longer extra field than Python's zipfile writes); checked against its CRC."""
    if info.file_size > most or info.compress_size > most or info.flag_bits & 0x1:
        raise NotViewable(f"{info.filename} is larger than expected or encrypted")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise NotViewable(f"{info.filename} is compressed in a way this page does not read")
    name = info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437")
    head_size = _LOCAL_HEADER.size + len(name)
    data = await handle.read(head_size + _LOCAL_EXTRA_GUESS + info.compress_size, info.header_offset)
    if len(data) < head_size:
        raise NotViewable(f"{info.filename}: the zip is cut short")
    signature, *_, name_length, extra_length = _LOCAL_HEADER.unpack_from(data)
    if signature != b"PK\x03\x04" or data[_LOCAL_HEADER.size : head_size] != name or name_length != len(name):
        raise NotViewable(f"{info.filename}: the zip's directory and its entries disagree")
    start = head_size + extra_length
    if len(data) < start + info.compress_size:
        data = data[:start] + await handle.read(start + info.compress_size - len(data), info.header_offset + len(data))
    content = data[start : start + info.compress_size]
    if info.compress_type == zipfile.ZIP_DEFLATED:
        inflater = zlib.decompressobj(-15)
        try:
            content = inflater.decompress(content, most + 1)
        except zlib.error:
            raise NotViewable(f"{info.filename} is damaged") from None
    if len(content) != info.file_size or zlib.crc32(content) != info.CRC:
        raise NotViewable(f"{info.filename} is damaged (its checksum does not match)")
    return content


async def open_package(sftp: asyncssh.SFTPClient, path: str, name: str) -> PackageView:
    """The package's view, or NotViewable. OSError and asyncssh.Error: the session broke."""
    async with sftp.open(path, "rb") as handle:
        attrs = await handle.stat()
        tail = await _Tail.read_end(handle, attrs.size or 0)
        reader = _RemoteReader(tail, attrs.size or 0, asyncio.get_running_loop())
        entries = await asyncio.to_thread(_directory, reader)
        stacks_entry = entries.get(pdi.STACKS)
        if stacks_entry is None:
            raise NotViewable("it holds no preview pictures (it is no study package, or one made before they were)")
        raw = await read_entry(tail, stacks_entry, MAX_STACKS_BYTES)
    return PackageView(name, attrs.size or 0, attrs.mtime or 0, parse_stacks(raw, entries), entries)


def parse_stacks(raw: bytes, entries: dict[str, zipfile.ZipInfo]) -> list[SeriesStack]:
    """STACKS.JSON's series; a picture the zip does not hold as a stored entry is left out."""
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise NotViewable("its list of pictures is damaged") from None
    if not isinstance(document, dict) or document.get("format") != 1 or not isinstance(document.get("series"), list):
        raise NotViewable("its list of pictures is in a form this page does not know")
    found = []
    for number, series in enumerate(document["series"][:MAX_SERIES], start=1):
        if not isinstance(series, dict):
            raise NotViewable("its list of pictures is damaged")
        pictures = tuple(
            Picture(p["name"], p["width"], p["height"])
            for p in _list(series.get("pictures"))
            if isinstance(p, dict)
            and _storable(entries.get(p.get("name")))
            and all(_count(p.get(key)) for key in ("width", "height"))
        )
        problems = {str(k): v for k, v in _dict(series.get("problems")).items() if _count(v)}
        texts = {key: value if isinstance(value := series.get(key), str) else "" for key in TEXTS}
        found.append(
            SeriesStack(number, texts, _count(series.get("images")), _count(series.get("frames")), pictures, problems)
        )
    return found


def _storable(info: zipfile.ZipInfo | None) -> bool:
    return (
        info is not None
        and info.compress_type == zipfile.ZIP_STORED
        and info.file_size <= MAX_PICTURE_BYTES
        and info.filename.upper().endswith(".JPG")
    )


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 31 else 0


def _list(value: object) -> list:
    return value if isinstance(value, list) else []


def _dict(value: object) -> dict:
    return value if isinstance(value, dict) else {}


JPEG_START = b"\xff\xd8\xff"


async def read_picture(sftp: asyncssh.SFTPClient, path: str, view: PackageView, info: zipfile.ZipInfo) -> bytes | None:
    """The picture's JPEG; None if the file under this name is no longer the one `view` was made
    of (a new package of the same name: the caller reads its directory again)."""
    async with sftp.open(path, "rb") as handle:
        if not view.same_file(await handle.stat()):
            return None
        data = await read_entry(handle, info, MAX_PICTURE_BYTES)
    if not data.startswith(JPEG_START):
        raise NotViewable(f"{info.filename} is no JPEG picture")
    return data
