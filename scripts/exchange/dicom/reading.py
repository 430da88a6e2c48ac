"""Reading a sender's DICOM file with pydicom, in memory bounded whatever its transfer syntax.

pydicom inflates a Deflated Explicit VR Little Endian dataset (PS3.5 A.5) whole, in one call,
before it parses a byte of it: 1 MB of a sender's file can be 1 GB in our memory, and a zip's
caps never see it (the file is deflated inside, its zip entry may be stored). So every read of a
received file's dataset goes through here. The file meta is read as pydicom reads it (so the
transfer syntax seen here is the one pydicom would act on); a deflated dataset is inflated here,
never further than the read needs: for a header, as far as its pixel data and at most
HEADER_BYTES; whole (for its pixel data), at most MAX_RATIO times the file and WHOLE_BYTES.
A dataset that needs more is refused (TooLarge says how far it went), and no more of it is
inflated. Any other file is read by dcmread as it is.
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass
from typing import BinaryIO

from pydicom import dcmread
from pydicom.dataset import FileDataset
from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble
from pydicom.tag import Tag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

HEADER_BYTES = 8 << 20  # inflated, before the pixel data: a header is rarely 100 KB, an enhanced multi-frame's a few MB
WHOLE_BYTES = 512 << 20  # inflated, a whole dataset: a preview decodes one frame of it
MAX_RATIO = 200  # DICOM deflates 2-5x; a bomb does thousands (a received zip's entries are held to it too)
_CHUNK = 1 << 16  # compressed bytes read at a time
_PIXEL_DATA = {0x7FE00010, 0x7FE00009, 0x7FE00008}  # (float, double float) pixel data, as stop_before_pixels


class TooLarge(ValueError):
    """The deflated dataset expands beyond what this read may inflate."""


@dataclass(frozen=True)
class Read:
    dataset: FileDataset  # as dcmread gives it: its file meta names the file's own transfer syntax
    data: BinaryIO  # what was parsed, positioned just after it: the file itself, or its dataset inflated
    encoding: UID | None  # how `data` is encoded: the file's transfer syntax, Explicit VR Little Endian once inflated
    inflated: int | None = None  # the bytes `data` holds when it is the dataset inflated (None: the file itself)
    cut: bool = False  # inflated only as far as the bound, past the pixel data: the rest is not in `data`
    stream_start: int | None = None  # where the file's deflated dataset starts (None: not deflated)


def header(handle: BinaryIO, specific_tags: list | None = None, most: int = HEADER_BYTES) -> Read:
    """The file's elements before its pixel data (dcmread's stop_before_pixels); a deflated
    dataset inflated no further than `most` bytes, and refused if its header goes on beyond."""
    return _read(handle, most, specific_tags, stop_before_pixels=True, whole=False)


def whole(handle: BinaryIO, specific_tags: list | None = None, stop_before_pixels: bool = False) -> Read:
    """The file's dataset (parsed before its pixel data with `stop_before_pixels`, `data` then
    positioned there), all of a deflated one inflated, or refused beyond the bounds."""
    return _read(handle, WHOLE_BYTES, specific_tags, stop_before_pixels, whole=True)


def _read(handle: BinaryIO, most: int, specific_tags: list | None, stop_before_pixels: bool, whole: bool) -> Read:
    start = handle.tell()
    preamble = read_preamble(handle, False)  # InvalidDicomError: no DICOM file (dcmread's own word)
    meta = _read_file_meta_info(handle)  # pydicom's own reading: the syntax dcmread would act on
    if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        handle.seek(start)
        dataset = dcmread(handle, stop_before_pixels=stop_before_pixels, specific_tags=specific_tags)
        return Read(dataset, handle, dataset.file_meta.get("TransferSyntaxUID"))
    begin, ratio = handle.tell(), ""
    if whole:
        size = handle.seek(0, io.SEEK_END) - begin
        handle.seek(begin)
        if size * MAX_RATIO < most:
            most, ratio = size * MAX_RATIO, f" ({MAX_RATIO} times its size)"
    data, cut = _inflate(handle, most)
    beyond = f"the deflated dataset expands beyond {_amount(most)}{ratio}"
    if cut and whole:
        raise TooLarge(beyond)
    stopped: list[int] = []

    def at_pixels(tag, vr, length) -> bool:
        if stop_before_pixels and tag in _PIXEL_DATA:
            stopped.append(tag)
            return True
        return False

    tags = [Tag(tag) for tag in specific_tags] if specific_tags else None
    dataset = read_dataset(data, is_implicit_VR=False, is_little_endian=True, stop_when=at_pixels, specific_tags=tags)
    if cut and not stopped:
        raise TooLarge(f"{beyond} before its pixel data")
    found = FileDataset(data, dataset, preamble, meta, is_implicit_VR=False, is_little_endian=True)
    return Read(found, data, ExplicitVRLittleEndian, len(data.getbuffer()), cut, begin)


def inflated_size(handle: BinaryIO, read: Read) -> int | None:
    """How many bytes a header read's deflated dataset inflates to in all, counted without
    keeping them (a stream the file cuts short counts what it holds); None if it goes on beyond
    what a whole read may inflate (WHOLE_BYTES, MAX_RATIO times the file)."""
    if read.stream_start is None:
        raise ValueError("not a deflated dataset")
    size = handle.seek(0, io.SEEK_END) - read.stream_start
    handle.seek(read.stream_start)
    most, total = min(WHOLE_BYTES, size * MAX_RATIO), 0
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    while not inflater.eof and total <= most:
        chunk = inflater.unconsumed_tail or handle.read(_CHUNK)
        # In pieces, a bomb's output never held; at the file's end, what zlib still holds.
        piece = inflater.decompress(chunk, _CHUNK * 16)
        total += len(piece)
        if not chunk and not piece:
            break
    return None if total > most else total


def _inflate(handle: BinaryIO, most: int) -> tuple[io.BytesIO, bool]:
    """The raw deflate stream at the handle's position inflated, at most `most` bytes, and
    whether it goes on beyond them. A stream the file cuts short gives what it holds (the
    parse then meets the end, as in a short file)."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = io.BytesIO()
    while not inflater.eof and out.tell() <= most:
        chunk = handle.read(_CHUNK)
        if not chunk:
            break
        out.write(inflater.decompress(chunk, most + 1 - out.tell()))  # one byte more tells it goes on
    cut = out.tell() > most
    out.truncate(most)
    out.seek(0)
    return out, cut


def _amount(size: int) -> str:
    return f"{size >> 20} MB" if size >= 1 << 20 else f"{size >> 10} KB"
