"""Find the DICOM instances among what staff hand in, reading headers only.

Input is files, folders (walked without following symlinks) and received media: a zip
file (with or without a DICOMDIR). Every candidate is read up to its pixel data
(`stop_before_pixels`, `specific_tags`), then the pixel data element's own length is
checked against the file's size, so a truncated file is caught without reading its
images. What is not DICOM is listed; what is broken is named with the reason.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

# What the directory records and the package index need; nothing else is parsed.
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
]
Header = dict[str, object]  # keyword -> value (str; SpecificCharacterSet as read): a few hundred bytes
_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UC", b"UR", b"UT", b"UN", b"SV", b"UV"}
_ITEM, _SEQUENCE_END = (0xFFFE, 0xE000), (0xFFFE, 0xE0DD)


@dataclass(frozen=True)
class Source:
    """One candidate file: on disk, or a member of a received zip."""

    label: str  # how staff know it: the path, or zip!member
    size: int
    open: Callable[[], BinaryIO]
    path: Path | None = None  # a file on disk (the kernel can copy it); None for a zip member
    member: str | None = None  # the name inside a received zip
    problem: str | None = None  # why it cannot be used, found before reading it (refuses the package)

    @classmethod
    def file(cls, path: Path, size: int) -> Source:
        return cls(str(path), size, lambda: open(path, "rb"), path)

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


def sources(paths: list[Path]) -> Iterator[Source]:
    """Every candidate under `paths`. Nothing is left out unsaid: a folder that cannot be read,
    a symlink (never followed) or a device comes as an unusable source with the reason."""
    for path in paths:
        st = os.lstat(path)  # a missing path raises FileNotFoundError with its name
        if not stat.S_ISDIR(st.st_mode):
            yield from _file_sources(path)
            continue
        unreadable: list[OSError] = []
        for top, dirs, files in os.walk(path, followlinks=False, onerror=unreadable.append):
            for name in [d for d in dirs if os.path.islink(os.path.join(top, d))]:
                yield Source.unusable(os.path.join(top, name), _SYMLINK)
            dirs.sort()
            for name in sorted(files):
                yield from _file_sources(Path(top) / name)
        for error in unreadable:
            yield Source.unusable(str(error.filename), f"folder not readable ({error.strerror})")


_SYMLINK = "a symlink, not followed (hand in what it points to)"
# What reading a source can raise besides a parse error: an OS error, a file cut short, a
# received zip's member that is encrypted (RuntimeError), fails its CRC or does not inflate.
READ_ERRORS = (OSError, EOFError, RuntimeError, zipfile.BadZipFile, zlib.error)


def is_dicomdir(name: str) -> bool:
    """A received medium's own directory file: ours replaces it."""
    return PurePosixPath(name.rstrip("/")).name.upper() == "DICOMDIR"


def _file_sources(path: Path) -> Iterator[Source]:
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        yield Source.unusable(str(path), _SYMLINK)
        return
    if not stat.S_ISREG(st.st_mode):
        yield Source.unusable(str(path), "not a regular file")
        return
    if is_dicomdir(path.name):
        return
    try:
        # DICOM first: `is_zipfile` looks for the end-of-zip signature anywhere in the last
        # 64 KiB, and image data may hold those bytes (the image would vanish as an empty zip).
        if not _has_dicom_prefix(path) and zipfile.is_zipfile(path):
            yield from _zip_sources(path)
            return
    except OSError as error:
        yield Source.unusable(str(path), f"not readable ({error.strerror})")
        return
    yield Source.file(path, st.st_size)


def _has_dicom_prefix(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(132)[128:] == b"DICM"


def _zip_sources(path: Path) -> Iterator[Source]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, RuntimeError) as error:
        yield Source.unusable(str(path), f"not a readable zip ({error})")
        return
    for info in archive.infolist():
        if info.is_dir() or is_dicomdir(info.filename):
            continue
        yield Source(
            f"{path}!{info.filename}", info.file_size, lambda info=info: archive.open(info), member=info.filename
        )


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
        values[keyword] = value if keyword == "SpecificCharacterSet" and not isinstance(value, str) else str(value)
    if isinstance(values.get("SpecificCharacterSet"), list | tuple):
        values["SpecificCharacterSet"] = [str(v) for v in values["SpecificCharacterSet"]]
    return values


def as_dataset(header: Header) -> Dataset:
    dataset = Dataset()
    for keyword, value in header.items():
        setattr(dataset, keyword, value)
    return dataset


def full_header(source: Source) -> Dataset:
    """Every element before the pixel data, for the rare record types that need more."""
    with source.open() as handle:
        return dcmread(handle, stop_before_pixels=True)


def read_header(source: Source) -> Instance | str:
    """The instance, or the reason it is not one ("not DICOM" or what is broken)."""
    if source.problem:
        return f"broken: {source.problem}"
    try:
        with source.open() as handle:
            header = dcmread(handle, stop_before_pixels=True, specific_tags=HEADER_TAGS)
            meta = header.file_meta
            syntax = meta.get("TransferSyntaxUID")
            if syntax is None or "SOPInstanceUID" not in header or "SOPClassUID" not in header:
                return "broken: no transfer syntax, SOP Class or SOP Instance UID in the header"
            # Zip members seek too (a deflated one by decompressing forward, in bounded memory).
            problem = _pixel_data_complete(handle, source.size, syntax.is_implicit_VR, syntax.is_little_endian)
            if problem:
                return f"broken: {problem}"
            return Instance(source, compact(header), str(syntax), syntax.is_compressed)
    except InvalidDicomError:
        return "not DICOM"
    except (*READ_ERRORS, ValueError, KeyError, struct.error, NotImplementedError) as exc:
        return f"broken: {exc}"


def scan(paths: list[Path], progress: Callable[[str], None] = lambda label: None) -> Scan:
    result = Scan()
    seen: dict[str, Instance] = {}
    for source in sources(paths):
        progress(source.label)
        found = read_header(source)
        if isinstance(found, str):
            if found == "not DICOM":
                result.not_dicom.append(source.label)
            else:
                result.broken.append(f"{source.label}: {found.removeprefix('broken: ')}")
            continue
        uid = found.header["SOPInstanceUID"]
        if uid in seen:
            result.duplicates.append(f"{source.label}: same SOP Instance UID as {seen[uid].source.label}")
            continue
        seen[uid] = found
        result.instances.append(found)
    return result
