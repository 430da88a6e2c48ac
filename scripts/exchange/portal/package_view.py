"""A study package's preview pictures, read in place from its zip through the user's own SFTP
session: the zip's central directory once (by Python's zipfile, reading through the session; the
zip's last TAIL_BYTES come in one read first, which for most packages holds the end record, the
whole directory and STACKS.JSON, written last), then each stored picture by one ranged read. Nothing is copied to disk and the portal gains no
right the user lacks (the chroot and the folder modes stay the guard).

The zip is the server's (exchange package made it), but anything in a download folder is read
as untrusted: every read is bounded before it is made, STACKS.JSON (written by
exchange.dicom.webcontent) is checked field by field and held to what exchange package writes
(no more series or pictures, no picture twice; longer texts cut as untrusted.cut does), only stored entries that it lists and
that start as JPEG are ever served, and each is checked against its CRC. Parsing runs in the view
page's own threads (exchange.portal.study_view.parsed); a view keeps where its listed pictures
are, nothing else of the directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import struct
import zipfile
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import asyncssh

from exchange import untrusted
from exchange.dicom import pdi
from exchange.portal.study_view import TEXTS, NotViewable, Picture, SeriesStack, parsed

if TYPE_CHECKING:
    from exchange.portal.files import Listed

# The central directory: about 300,000 entries of a package's names (550,000 of the shortest); a
# package's DICOM files are most of them, a few thousand for a study.
MAX_DIRECTORY_BYTES = 32 << 20
MAX_WEB_ENTRIES = 20_000  # under IHE_PDI/: a page a series and its pictures (4,000, or 20 a series beyond 200)
MAX_STACKS_BYTES = 8 << 20  # STACKS.JSON: 4,000 pictures take about 1 MB
MAX_PICTURE_BYTES = 4 << 20  # a 512 px JPEG is about 30 KB
# What exchange package writes (exchange.dicom.webcontent.plan; a test holds these to its own): a
# series' stack of at most MAX_PER_SERIES pictures, fewer when the package would hold more than
# MAX_PER_PACKAGE in all, never fewer than MIN_PER_SERIES. The page refuses a longer list.
MAX_PER_SERIES, MAX_PER_PACKAGE, MIN_PER_SERIES = 200, 4000, 20
MAX_SERIES = 1_000  # on one overview page (written in about 0.2 s); a study package has tens
MAX_PROBLEMS = 20  # reasons shown of a series' pictures that could not be made
READ_TIMEOUT = 60  # seconds for one read of the zip's directory
# The zip's end read at once: the directory of about 1,400 entries (a CT of 1,000 slices: 102 kB)
# and STACKS.JSON before it. Zipfile otherwise reads the end record, the zip64 locator and the
# directory one request each, and STACKS.JSON is one more (bench/portal_view.py).
TAIL_BYTES = 128 << 10
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # PKZIP's local file header, 30 bytes
_LOCAL_EXTRA_GUESS = 64  # read with the header: Python's zipfile writes at most a zip64 field there


class Entry(NamedTuple):
    """What reading one entry takes of its zipfile.ZipInfo, by the same names: kept instead of it
    (half its memory), and only for the pictures STACKS.JSON lists."""

    filename: str
    orig_filename: str
    header_offset: int
    compress_size: int
    file_size: int
    CRC: int
    compress_type: int
    flag_bits: int


@dataclass
class PackageView:
    """What the view page needs of one package: its series and where each listed picture is."""

    name: str
    size: int
    mtime: int
    series: list[SeriesStack]
    entries: dict[str, Entry] = field(repr=False)
    recorded: set[int | None] = field(default_factory=set, repr=False)  # exchange.portal.viewing's audit

    def picture(self, series: int, index: int) -> Entry | None:
        if not 1 <= series <= len(self.series):
            return None
        pictures = self.series[series - 1].pictures
        return self.entries.get(pictures[index - 1].name) if 1 <= index <= len(pictures) else None

    def same_file(self, attrs: asyncssh.SFTPAttrs | Listed) -> bool:  # a stat, or the files page's listing
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


def _directory(reader: _RemoteReader) -> dict[str, Entry]:
    """The zip's entries of the web content (IHE_PDI/), each within the file."""
    try:
        with zipfile.ZipFile(reader) as archive:  # type: ignore[arg-type]  # reads, never writes
            infos = [info for info in archive.infolist() if info.filename.startswith(f"{pdi.FOLDER}/")]
    except (NotViewable, OSError, asyncssh.Error):
        raise  # refused by the reader, or the session broke
    except Exception:  # noqa: BLE001 - a forged directory makes zipfile raise anything (NotImplementedError too)
        raise NotViewable("it is not a zip file, or a damaged one") from None
    if len(infos) > MAX_WEB_ENTRIES:
        raise NotViewable(f"it holds more entries under {pdi.FOLDER}/ than any study package ({MAX_WEB_ENTRIES})")
    entries = {}
    for info in infos:
        end = info.header_offset + _LOCAL_HEADER.size + len(info.orig_filename) + info.compress_size  # at least
        if info.header_offset < 0 or end > reader.size:
            raise NotViewable("its table of contents points outside the file")
        entries[info.filename] = Entry(
            info.filename, info.orig_filename, info.header_offset, info.compress_size, info.file_size, info.CRC,
            info.compress_type, info.flag_bits,
        )  # fmt: skip
    return entries


async def read_entry(handle: asyncssh.SFTPClientFile | _Tail, info: Entry, most: int) -> bytes:
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


_closing: set[asyncio.Task] = set()


@contextlib.asynccontextmanager
async def _opened(sftp: asyncssh.SFTPClient, path: str) -> AsyncIterator[asyncssh.SFTPClientFile]:
    """The file open for reading, closed afterwards without waiting for the server's answer (a
    session's requests are answered in order, so the close comes before anything asked after it):
    a round trip less for every page and picture."""
    handle = await sftp.open(path, "rb")
    try:
        yield handle
    finally:
        task = asyncio.create_task(_close(handle))
        _closing.add(task)
        task.add_done_callback(_closing.discard)


async def _close(handle: asyncssh.SFTPClientFile) -> None:
    with contextlib.suppress(OSError, asyncssh.Error):  # a broken session closes its files itself
        await handle.close()


async def open_package(sftp: asyncssh.SFTPClient, path: str, name: str) -> PackageView:
    """The package's view, or NotViewable. OSError and asyncssh.Error: the session broke."""
    async with _opened(sftp, path) as handle:
        attrs = await handle.stat()
        tail = await _Tail.read_end(handle, attrs.size or 0)
        reader = _RemoteReader(tail, attrs.size or 0, asyncio.get_running_loop())
        entries = await parsed(_directory, reader)
        stacks_entry = entries.get(pdi.STACKS)
        if stacks_entry is None:
            raise NotViewable("it holds no preview pictures (it is no study package, or one made before they were)")
        raw = await read_entry(tail, stacks_entry, MAX_STACKS_BYTES)
    series = await parsed(parse_stacks, raw, entries)
    kept = {picture.name: entries[picture.name] for stack in series for picture in stack.pictures}
    return PackageView(name, attrs.size or 0, attrs.mtime or 0, series, kept)


def per_series(series: int) -> int:
    """The most pictures exchange package gives a series' stack in a package of `series` series."""
    return max(MIN_PER_SERIES, min(MAX_PER_SERIES, MAX_PER_PACKAGE // max(1, series)))


def parse_stacks(raw: bytes, entries: dict[str, Entry]) -> list[SeriesStack]:
    """STACKS.JSON's series; a picture the zip does not hold as a stored entry is left out. A list
    that exchange package would not write (more series or pictures than it makes, a picture
    twice) is refused: the page would be as long as the list."""
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise NotViewable("its list of pictures is damaged") from None
    if not isinstance(document, dict) or document.get("format") != 1 or not isinstance(document.get("series"), list):
        raise NotViewable("its list of pictures is in a form this page does not know")
    if len(document["series"]) > MAX_SERIES:
        raise NotViewable(f"it holds more than {MAX_SERIES} series, more than this page shows")
    most, found, seen = per_series(len(document["series"])), [], set()
    for number, series in enumerate(document["series"], start=1):
        if not isinstance(series, dict):
            raise NotViewable("its list of pictures is damaged")
        listed = _list(series.get("pictures"))
        if len(listed) > most:
            raise NotViewable(f"series {number} lists more pictures than a study package holds ({most})")
        pictures = tuple(Picture(p["name"], p["width"], p["height"]) for p in listed if _shown(p, entries))
        names = {picture.name for picture in pictures}
        if len(names) < len(pictures) or not seen.isdisjoint(names):
            raise NotViewable("its list of pictures names a picture twice")
        seen |= names
        reasons = ((_text(k), v) for k, v in _dict(series.get("problems")).items() if _count(v))
        problems = dict(itertools.islice(reasons, MAX_PROBLEMS))
        texts = {key: _text(series.get(key)) for key in TEXTS}
        found.append(
            SeriesStack(number, texts, _count(series.get("images")), _count(series.get("frames")), pictures, problems)
        )
    return found


def _shown(picture: object, entries: dict[str, Entry]) -> bool:
    return (
        isinstance(picture, dict)
        and isinstance(name := picture.get("name"), str)
        and _storable(entries.get(name))
        and all(_count(picture.get(key)) for key in ("width", "height"))
    )


def _text(value: object) -> str:
    if not isinstance(value, str):
        return ""
    return untrusted.cut(value)


def _storable(info: Entry | None) -> bool:
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


async def read_picture(sftp: asyncssh.SFTPClient, path: str, view: PackageView, info: Entry) -> bytes | None:
    """The picture's JPEG; None if the file under this name is no longer the one `view` was made
    of (a new package of the same name: the caller reads its directory again)."""
    async with _opened(sftp, path) as handle:
        # Asked together, a round trip: what was read counts only if the file is the view's.
        attrs, data = await asyncio.gather(
            handle.stat(), read_entry(handle, info, MAX_PICTURE_BYTES), return_exceptions=True
        )
    if isinstance(attrs, BaseException):
        raise attrs
    if not view.same_file(attrs):
        return None
    if isinstance(data, BaseException):
        raise data
    if not data.startswith(JPEG_START):
        raise NotViewable(f"{info.filename} is no JPEG picture")
    return data
