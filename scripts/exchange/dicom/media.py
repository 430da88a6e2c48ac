"""Check received media (a zip or a folder) before staff import it.

Refused: paths that could escape where it is unpacked (absolute, `..`, backslashes, drive
letters, a second name in an Info-ZIP Unicode Path field), two entries of one name, symlinks,
encrypted entries, compression other than stored or deflated, zip bombs (total size or a
compression ratio beyond the caps), and, within the caps, entries that fail their CRC. Checked:
the DICOMDIR against the files (every referenced file exists and has the UIDs the record names; every DICOM
file is referenced). Listed: what is not DICOM. Headers only are read, and zipfile never
reads past an entry's declared size (a lie there fails its CRC check).
"""

from __future__ import annotations

import contextlib
import io
import stat
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from pydicom.errors import InvalidDicomError

from exchange import handed_in
from exchange.dicom import reading
from exchange.dicom.dicomfiles import (
    READ_ERRORS,
    ZIP_MAX_RATIO,
    ZIP_MAX_TOTAL_BYTES,
    Instance,
    Source,
    expands_too_much,
    is_dicomdir,
    read_header,
)
from exchange.invoker import Invoker
from exchange.untrusted import printable

MAX_TOTAL_BYTES = ZIP_MAX_TOTAL_BYTES
MAX_RATIO = ZIP_MAX_RATIO
MAX_ENTRIES = 200_000


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)  # refuse the media
    not_dicom: list[str] = field(default_factory=list)
    instances: list[Instance] = field(default_factory=list)
    dicomdir: str | None = None
    total_bytes: int = 0
    bomb: bool = False  # beyond the caps: not read any further
    descriptors: tuple[int, ...] = ()  # the files read (open while the caller's `keep` holds them)
    top_fd: int | None = None  # the named zip's or folder's own descriptor (likewise): what was inspected

    @property
    def ok(self) -> bool:
        return not self.problems


def _unsafe_name(name: str) -> str | None:
    if "\\" in name:
        return "backslash in the name"
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if ".." in PurePosixPath(name).parts:
        return "'..' in the path"
    if "\x00" in name:
        return "NUL in the name"
    return None


_UNICODE_PATH_EXTRA = 0x7075  # Info-ZIP's second name for an entry, which unzip prefers


def _extra_ids(extra: bytes) -> set[int]:
    ids, at = set(), 0
    while at + 4 <= len(extra):
        header_id, size = struct.unpack("<HH", extra[at : at + 4])
        ids.add(header_id)
        at += 4 + size
    return ids


def _check_zip(file: handed_in.File, report: Report, max_total: int, max_ratio: int) -> list[Source]:
    try:
        archive = zipfile.ZipFile(handed_in.reader(file.fd))
    except (zipfile.BadZipFile, OSError, ValueError, RuntimeError) as exc:  # ValueError: a name not in UTF-8
        report.problems.append(f"{file.label}: not a readable zip ({printable(exc)})")
        return []
    entries = archive.infolist()
    if len(entries) > MAX_ENTRIES:
        report.problems.append(f"{file.label}: {len(entries)} entries, more than {MAX_ENTRIES}")
        report.bomb = True
        return []
    sources = []
    seen: set[str] = set()
    for info in entries:
        name, shown = info.filename, printable(info.filename)
        problem = _unsafe_name(name)
        if problem:
            report.problems.append(f"{shown}: {problem} (could be unpacked outside its folder)")
            continue
        if _UNICODE_PATH_EXTRA in _extra_ids(info.extra):
            # unzip would use that other name, which was not checked here
            report.problems.append(f"{shown}: carries a second (Unicode Path) name")
            continue
        if name.rstrip("/").upper() in seen:  # unpacked, one would replace the other
            report.problems.append(f"{shown}: more than one entry of that name")
            continue
        seen.add(name.rstrip("/").upper())
        if stat.S_ISLNK(info.external_attr >> 16):
            report.problems.append(f"{shown}: a symlink")
            continue
        if info.flag_bits & 0x1:
            report.problems.append(f"{shown}: encrypted")
            continue
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            report.problems.append(f"{shown}: compression method {info.compress_type} (only stored or deflated)")
            continue
        if info.is_dir():
            continue
        report.total_bytes += info.file_size
        if bomb := expands_too_much(info, max_ratio):
            report.problems.append(f"{shown}: {bomb}")
            report.bomb = True
            continue
        sources.append(
            Source(f"{file.label}!{shown}", info.file_size, lambda info=info: archive.open(info), member=name)
        )
    if report.total_bytes > max_total:
        report.problems.append(f"{file.label}: unpacks to {report.total_bytes} bytes, more than {max_total}")
        report.bomb = True
    return sources


def _damaged(sources: list[Source], report: Report) -> list[Source]:
    """Every entry read to its end, so a damaged one fails its CRC here, not after import
    (only after the caps: a bomb is never inflated)."""
    damaged = []
    for source in sources:
        try:
            with source.open() as handle:
                while handle.read(1 << 20):
                    pass
        except READ_ERRORS as exc:
            report.problems.append(f"{printable(source.member)}: damaged ({printable(exc)})")
            damaged.append(source)
    return damaged


def _check_folder(handed: handed_in.HandedIn, report: Report) -> list[Source]:
    sources = []
    for item in handed.found:
        if isinstance(item, handed_in.Unusable):
            report.problems.append(f"{item.label}: {item.problem}")
            continue
        report.total_bytes += item.size
        sources.append(Source(item.label, item.size, lambda fd=item.fd: handed_in.reader(fd), item.fd, item.relative))
    return sources


def _check_dicomdir(directory: Source, instances: list[Instance], report: Report) -> None:
    try:
        _compare_dicomdir(directory, instances, report)
    except Exception as exc:  # noqa: BLE001 - the sender's DICOMDIR may be anything: refused, named
        report.problems.append(f"{directory.label}: not a usable DICOMDIR ({printable(exc) or type(exc).__name__})")


def _compare_dicomdir(directory: Source, instances: list[Instance], report: Report) -> None:
    """Every record's file is there with the UIDs and transfer syntax the record names; every
    DICOM file is referenced."""
    base = PurePosixPath(directory.member).parent
    try:
        with directory.open() as handle:
            data = handle.read()
        dicomdir = reading.whole(io.BytesIO(data)).dataset
    except (*READ_ERRORS, InvalidDicomError, ValueError) as exc:  # ValueError: reading.TooLarge too
        report.problems.append(f"{directory.label}: not a readable DICOMDIR ({printable(exc)})")
        return
    by_path = {i.source.member.upper(): i for i in instances}
    referenced = set()
    for record in dicomdir.get("DirectoryRecordSequence", []):
        file_id = record.get("ReferencedFileID")
        if not file_id:
            continue
        parts = [file_id] if isinstance(file_id, str) else list(file_id)
        shown = printable("/".join(parts))
        target = str(base.joinpath(*parts)).upper() if str(base) != "." else "/".join(parts).upper()
        instance = by_path.get(target)
        if instance is None:
            report.problems.append(f"DICOMDIR references {shown}, which is not there")
            continue
        referenced.add(target)
        expected = (record.get("ReferencedSOPInstanceUIDInFile"), record.get("ReferencedSOPClassUIDInFile"))
        found = (instance.header["SOPInstanceUID"], instance.header["SOPClassUID"])
        if tuple(map(str, expected)) != tuple(map(str, found)):
            report.problems.append(f"DICOMDIR record for {shown} names other UIDs than the file has")
        syntax = record.get("ReferencedTransferSyntaxUIDInFile")
        if syntax and str(syntax) != instance.transfer_syntax:
            report.problems.append(f"DICOMDIR record for {shown} names another transfer syntax")
    for name in sorted(set(by_path) - referenced):
        report.problems.append(f"{printable(name)}: a DICOM file the DICOMDIR does not reference")


def inspect_media(
    path: Path,
    max_depth: int,
    who: Invoker | None = None,
    max_total: int = MAX_TOTAL_BYTES,
    max_ratio: int = MAX_RATIO,
    keep: contextlib.ExitStack | None = None,
) -> Report:
    """Check received media, opened with `who`'s rights (None: the tool's own). With `keep`,
    the files stay open until that stack closes (the report's instances can then be read on,
    e.g. for a contact sheet; `report.descriptors` are theirs); else they close on return."""
    report = Report()
    try:
        handed = handed_in.open_named([path], who, max_depth)
    except handed_in.MissingPaths:
        report.problems.append(f"{printable(path)}: no such file or folder")
        return report
    with contextlib.ExitStack() as here:
        (keep if keep is not None else here).enter_context(handed)
        report.descriptors = handed.descriptors
        report.top_fd = handed.tops[0] if handed.tops else None
        named = next((f for f in handed.files if f.relative == ""), None)  # the zip itself, not a folder
        if named is None and any(u.label == printable(path) for u in handed.problems):
            report.problems += [f"{u.label}: {u.problem}" for u in handed.problems]  # the path itself
            return report
        if named is None:
            sources = _check_folder(handed, report)
        else:
            sources = _check_zip(named, report, max_total, max_ratio)
            if report.bomb:
                return report  # do not read what may be a bomb
            damaged = _damaged(sources, report)
            sources = [s for s in sources if s not in damaged]
        _read_headers(sources, report)
    return report


def _read_headers(sources: list[Source], report: Report) -> None:
    directories = [s for s in sources if is_dicomdir(s.member)]
    for source in sources:
        if source in directories:
            continue
        found = read_header(source)
        if isinstance(found, Instance):
            report.instances.append(found)
        elif found == "not DICOM":
            report.not_dicom.append(printable(source.member))
        else:
            report.problems.append(f"{printable(source.member)}: {printable(found.removeprefix('broken: '))}")
    if len(directories) > 1:
        report.problems.append("more than one DICOMDIR: " + ", ".join(printable(d.member) for d in directories))
    elif directories:
        report.dicomdir = printable(directories[0].member)
        _check_dicomdir(directories[0], report.instances, report)
