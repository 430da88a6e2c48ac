"""Find the DICOM instances among what staff hand in, reading headers only.

Input is what staff hand in (exchange.handed_in: files and folders, opened once with the
rights of whoever named them) and received media among it: a zip file (with or without a
DICOMDIR), within the caps that keep a zip bomb out. Every candidate is read up to its pixel data
(`stop_before_pixels`, `specific_tags`; a deflated dataset no further, exchange.dicom.reading),
then the pixel data element's own length is checked against the file's size, so a truncated
file is caught without reading its images (a deflated one's inflated size counted, nothing
kept, up to what a preview would inflate). What is not DICOM is listed; what is broken is named with the reason. The values
kept are cut to what any valid one may hold (untrusted.TEXT_LIMIT): thousands stay small.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import BinaryIO

from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from exchange import handed_in, untrusted
from exchange.dicom import reading

# What the directory records, the package index and the previews' stacks need; nothing else is parsed.
HEADER_TAGS = [
    "SpecificCharacterSet",
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyDate",
    "StudyTime",
    "SeriesDate",
    "SeriesTime",
    "AcquisitionDate",
    "AcquisitionTime",
    "ContentDate",
    "ContentTime",
    "AccessionNumber",
    "Modality",
    "StudyDescription",
    "SeriesDescription",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "StudyID",
    "SeriesNumber",
    "InstanceNumber",
    "RTPlanLabel",  # for the record type, as pydicom decides it
    "NumberOfFrames",  # a preview stack pages through frames too
]
Header = dict[str, object]  # keyword -> value (str, cut; SpecificCharacterSet as read): a few hundred bytes
_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UC", b"UR", b"UT", b"UN", b"SV", b"UV"}
_ITEM, _SEQUENCE_END = (0xFFFE, 0xE000), (0xFFFE, 0xE0DD)


@dataclass(frozen=True)
class Source:
    """One candidate file: on disk (opened once, see exchange.handed_in), or a member of a
    received zip."""

    label: str  # how staff know it: the path, or zip!member (printable)
    size: int
    open: Callable[[], BinaryIO]
    fd: int | None = None  # a file on disk, by its descriptor (the kernel can copy it); None for a zip member
    member: str | None = None  # its name inside a received medium (a zip, or a folder `inspect` checks), as it is
    problem: str | None = None  # why it cannot be used, found before reading it (refuses the package)

    @classmethod
    def file(cls, file: handed_in.File) -> Source:
        return cls(file.label, file.size, lambda: handed_in.reader(file.fd), file.fd)

    @classmethod
    def unusable(cls, label: str, problem: str) -> Source:
        return cls(label, 0, lambda: io.BytesIO(), problem=problem)


@dataclass
class Instance:
    source: Source
    header: Header  # the HEADER_TAGS it has, as plain values: thousands of instances stay small
    transfer_syntax: str
    compressed: bool  # encapsulated pixel data: stored in the zip, not deflated again


@dataclass
class Scan:
    instances: list[Instance] = field(default_factory=list)
    not_dicom: list[str] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)  # "label: reason"
    duplicates: list[str] = field(default_factory=list)


def sources(handed: handed_in.HandedIn) -> Iterator[Source]:
    """Every candidate among what was handed in, in order. Nothing is left out unsaid: what
    cannot be used (a symlink, a folder that cannot be read, a device) comes as an unusable
    source with the reason; a zip's members are candidates of their own."""
    for item in handed.found:
        if isinstance(item, handed_in.Unusable):
            yield Source.unusable(item.label, item.problem)
        elif not is_dicomdir(item.relative or item.label):
            yield from _file_sources(item)


# What reading a source can raise besides a parse error: an OS error, a file cut short, a
# received zip's member that is encrypted (RuntimeError), fails its CRC or does not inflate.
READ_ERRORS = (OSError, EOFError, RuntimeError, zipfile.BadZipFile, zlib.error)
# A received zip that unpacks to more than this, or one of whose members expands more than
# this, is no study but a zip bomb (`exchange inspect` has the same caps as options).
ZIP_MAX_TOTAL_BYTES = 50 * 1024**3  # a study on a DVD is a few GB; 50 GB is no study
ZIP_MAX_RATIO = reading.MAX_RATIO  # as a deflated dataset's


def is_dicomdir(name: str) -> bool:
    """A received medium's own directory file: ours replaces it."""
    return PurePosixPath(name.rstrip("/")).name.upper() == "DICOMDIR"


def _file_sources(file: handed_in.File) -> Iterator[Source]:
    try:
        with handed_in.reader(file.fd) as handle:
            # DICOM first: `is_zipfile` looks for the end-of-zip signature anywhere in the last
            # 64 KiB, and image data may hold those bytes (the image would vanish as an empty zip).
            dicom = handle.read(132)[128:] == b"DICM"
            if not dicom and zipfile.is_zipfile(handle):
                yield from _zip_sources(file)
                return
    except OSError as error:
        yield Source.unusable(file.label, f"not readable ({error.strerror})")
        return
    yield Source.file(file)


def expands_too_much(info: zipfile.ZipInfo, max_ratio: int) -> str | None:
    if info.compress_size and info.file_size / info.compress_size > max_ratio:
        return f"expands {info.file_size // info.compress_size}x (more than {max_ratio}x: a zip bomb?)"
    return None


def _zip_sources(file: handed_in.File) -> Iterator[Source]:
    try:
        archive = zipfile.ZipFile(handed_in.reader(file.fd))
    except (zipfile.BadZipFile, OSError, ValueError, RuntimeError) as error:
        yield Source.unusable(file.label, f"not a readable zip ({error})")
        return
    members = [info for info in archive.infolist() if not info.is_dir() and not is_dicomdir(info.filename)]
    total = sum(info.file_size for info in members)
    if total > ZIP_MAX_TOTAL_BYTES:
        yield Source.unusable(file.label, f"unpacks to {total} bytes, more than {ZIP_MAX_TOTAL_BYTES}: a zip bomb?")
        return
    for info in members:
        label = f"{file.label}!{untrusted.printable(info.filename)}"
        if bomb := expands_too_much(info, ZIP_MAX_RATIO):
            yield Source.unusable(label, bomb)
            continue
        yield Source(label, info.file_size, lambda info=info: archive.open(info), member=info.filename)


def _pixel_data_complete(handle: BinaryIO, size: int, implicit: bool, little_endian: bool = True) -> str | None:
    """None if the pixel data element (at the handle's position) fits in the file, else why not."""
    start = handle.tell()
    head = handle.read(12 if not implicit else 8)
    order = "<" if little_endian else ">"  # Explicit VR Big Endian (retired) is still read
    if not head:
        return None  # no pixel data (e.g. a structured report)
    if len(head) < 8:
        return "truncated in the pixel data element header"
    if implicit:
        (length,) = struct.unpack(order + "I", head[4:8])
        value = start + 8
    elif head[4:6] in _LONG_VRS:
        (length,) = struct.unpack(order + "I", head[8:12])
        value = start + 12
    else:
        (length,) = struct.unpack(order + "H", head[6:8])
        value = start + 8
    if length != 0xFFFFFFFF:
        return (
            None if value + length <= size else f"truncated: pixel data needs {value + length} bytes, file has {size}"
        )
    # Encapsulated: walk the fragment items to the sequence delimiter (seeks, no reading).
    handle.seek(value)
    position = value
    while True:
        item = handle.read(8)
        if len(item) < 8:
            return "truncated: the encapsulated pixel data ends without its delimiter"
        group, element, length = struct.unpack("<HHI", item)
        if (group, element) == _SEQUENCE_END:
            return None
        if (group, element) != _ITEM or length == 0xFFFFFFFF:
            return f"corrupt pixel data at byte {position}"
        position += 8 + length
        if position > size:
            return f"truncated: a pixel data fragment needs {position} bytes, file has {size}"
        handle.seek(position)


_INTEGERS = {"SeriesNumber", "InstanceNumber"}  # IS: a value that is no integer counts as missing
_MOST_CHARACTER_SETS = 8  # PS3.3 C.12.1.1.2 defines a dozen; an image names two or three


def _integer(value: object) -> bool:
    try:
        int(str(value))
    except ValueError:
        return False
    return True


def compact(header: Dataset) -> Header:
    values: Header = {}
    for keyword in HEADER_TAGS:
        value = header.get(keyword)
        if value is None or value == "" or (keyword in _INTEGERS and not _integer(value)):
            continue
        if keyword == "SpecificCharacterSet" and not isinstance(value, str):  # code extensions: a few at most
            values[keyword] = [untrusted.cut(v) for v in list(value)[:_MOST_CHARACTER_SETS]]
        else:
            values[keyword] = untrusted.cut(value)
    return values


def as_dataset(header: Header) -> Dataset:
    dataset = Dataset()
    for keyword, value in header.items():
        setattr(dataset, keyword, value)
    return dataset


def full_header(source: Source) -> Dataset:
    """Every element before the pixel data, for the rare record types that need more."""
    with source.open() as handle:
        return reading.header(handle).dataset


def read_header(source: Source) -> Instance | str:
    """The instance, or the reason it is not one ("not DICOM" or what is broken)."""
    if source.problem:
        return f"broken: {source.problem}"
    try:
        with source.open() as handle:
            read = reading.header(handle, HEADER_TAGS)
            header = read.dataset
            syntax = header.file_meta.get("TransferSyntaxUID")
            if syntax is None or "SOPInstanceUID" not in header or "SOPClassUID" not in header:
                return "broken: no transfer syntax, SOP Class or SOP Instance UID in the header"
            if not isinstance(syntax, UID):  # e.g. two values (a backslash in it)
                return f"broken: the transfer syntax is no single UID ({syntax!r})"
            # Zip members seek too (a deflated one by decompressing forward, in bounded memory). A
            # deflated dataset the header's read inflated only in part is counted to its end (the
            # pixel data must fit in it), unless it goes beyond what a preview inflates at all.
            size = source.size if read.inflated is None else read.inflated
            if read.cut:
                size = reading.inflated_size(handle, read)
            encoding = (syntax.is_implicit_VR, syntax.is_little_endian)
            problem = None if size is None else _pixel_data_complete(read.data, size, *encoding)
            if problem:
                return f"broken: {problem}"
            return Instance(source, compact(header), str(syntax), syntax.is_compressed)
    except InvalidDicomError:
        return "not DICOM"
    except RecursionError:
        return "broken: nested too deep to read"
    except Exception as exc:  # noqa: BLE001 - a sender's file may make pydicom raise anything: broken, named
        return f"broken: {type(exc).__name__ if not str(exc) else exc}"


def scan(handed: handed_in.HandedIn, progress: Callable[[str], None] = lambda label: None) -> Scan:
    result = Scan()
    seen: dict[str, Instance] = {}
    for source in sources(handed):
        progress(source.label)
        found = read_header(source)
        if isinstance(found, str):
            if found == "not DICOM":
                result.not_dicom.append(source.label)
            else:  # a parser's reason may quote the file's own bytes
                result.broken.append(f"{source.label}: {untrusted.printable(found.removeprefix('broken: '))}")
            continue
        uid = found.header["SOPInstanceUID"]
        if uid in seen:
            result.duplicates.append(f"{source.label}: same SOP Instance UID as {seen[uid].source.label}")
            continue
        seen[uid] = found
        result.instances.append(found)
    return result
