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

import io
import os
import stat
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from exchange.dicomfiles import READ_ERRORS, Instance, Source, is_dicomdir, read_header

MAX_TOTAL_BYTES = 50 * 1024**3  # a study on a DVD is a few GB; 50 GB is no study
MAX_RATIO = 200  # DICOM deflates 2-5x; a bomb does thousands
MAX_ENTRIES = 200_000


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)  # refuse the media
    not_dicom: list[str] = field(default_factory=list)
    instances: list[Instance] = field(default_factory=list)
    dicomdir: str | None = None
    total_bytes: int = 0

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


def _check_zip(path: Path, report: Report, max_total: int, max_ratio: int) -> list[Source]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, RuntimeError) as exc:  # ValueError: a name not in UTF-8
        report.problems.append(f"{path}: not a readable zip ({exc})")
        return []
    entries = archive.infolist()
    if len(entries) > MAX_ENTRIES:
        report.problems.append(f"{path}: {len(entries)} entries, more than {MAX_ENTRIES}")
        return []
    sources = []
    seen: set[str] = set()
    for info in entries:
        name = info.filename
        problem = _unsafe_name(name)
        if problem:
            report.problems.append(f"{name}: {problem} (could be unpacked outside its folder)")
            continue
        if _UNICODE_PATH_EXTRA in _extra_ids(info.extra):
            # unzip would use that other name, which was not checked here
            report.problems.append(f"{name}: carries a second (Unicode Path) name")
            continue
        if name.rstrip("/").upper() in seen:  # unpacked, one would replace the other
            report.problems.append(f"{name}: more than one entry of that name")
            continue
        seen.add(name.rstrip("/").upper())
        if stat.S_ISLNK(info.external_attr >> 16):
            report.problems.append(f"{name}: a symlink")
            continue
        if info.flag_bits & 0x1:
            report.problems.append(f"{name}: encrypted")
            continue
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            report.problems.append(f"{name}: compression method {info.compress_type} (only stored or deflated)")
            continue
        if info.is_dir():
            continue
        report.total_bytes += info.file_size
        if info.compress_size and info.file_size / info.compress_size > max_ratio:
            report.problems.append(
                f"{name}: expands {info.file_size // info.compress_size}x (more than {max_ratio}x: a zip bomb?)"
            )
            continue
        sources.append(Source(f"{path}!{name}", info.file_size, lambda info=info: archive.open(info), member=name))
    if report.total_bytes > max_total:
        report.problems.append(f"{path}: unpacks to {report.total_bytes} bytes, more than {max_total}")
    return sources


def _damaged(sources: list[Source], root: str, report: Report) -> list[Source]:
    """Every entry read to its end, so a damaged one fails its CRC here, not after import
    (only after the caps: a bomb is never inflated)."""
    damaged = []
    for source in sources:
        try:
            with source.open() as handle:
                while handle.read(1 << 20):
                    pass
        except READ_ERRORS as exc:
            report.problems.append(f"{_relative(source, root)}: damaged ({exc})")
            damaged.append(source)
    return damaged


def _check_folder(path: Path, report: Report) -> list[Source]:
    sources = []
    for top, dirs, files in os.walk(path, followlinks=False):
        for name in sorted(dirs + files):
            full = Path(top) / name
            if full.is_symlink():
                report.problems.append(f"{full.relative_to(path)}: a symlink")
        dirs[:] = sorted(d for d in dirs if not (Path(top) / d).is_symlink())
        for name in sorted(files):
            full = Path(top) / name
            if full.is_symlink() or not full.is_file():
                continue
            report.total_bytes += full.stat().st_size
            sources.append(Source.file(full, full.stat().st_size))
    return sources


def _relative(source: Source, root: str) -> str:
    return source.member if source.member is not None else os.path.relpath(source.label, root)


def _check_dicomdir(directory: Source, instances: list[Instance], root: str, report: Report) -> None:
    base = PurePosixPath(_relative(directory, root)).parent
    try:
        with directory.open() as handle:
            data = handle.read()
        dicomdir = dcmread(io.BytesIO(data))
    except (*READ_ERRORS, InvalidDicomError, ValueError) as exc:
        report.problems.append(f"{directory.label}: not a readable DICOMDIR ({exc})")
        return
    by_path = {_relative(i.source, root).upper(): i for i in instances}
    referenced = set()
    for record in dicomdir.get("DirectoryRecordSequence", []):
        file_id = record.get("ReferencedFileID")
        if not file_id:
            continue
        parts = [file_id] if isinstance(file_id, str) else list(file_id)
        target = str(base.joinpath(*parts)).upper() if str(base) != "." else "/".join(parts).upper()
        instance = by_path.get(target)
        if instance is None:
            report.problems.append(f"DICOMDIR references {'/'.join(parts)}, which is not there")
            continue
        referenced.add(target)
        expected = (record.get("ReferencedSOPInstanceUIDInFile"), record.get("ReferencedSOPClassUIDInFile"))
        found = (instance.header["SOPInstanceUID"], instance.header["SOPClassUID"])
        if tuple(map(str, expected)) != tuple(map(str, found)):
            report.problems.append(f"DICOMDIR record for {'/'.join(parts)} names other UIDs than the file has")
        syntax = record.get("ReferencedTransferSyntaxUIDInFile")
        if syntax and str(syntax) != instance.transfer_syntax:
            report.problems.append(f"DICOMDIR record for {'/'.join(parts)} names another transfer syntax")
    for name in sorted(set(by_path) - referenced):
        report.problems.append(f"{name}: a DICOM file the DICOMDIR does not reference")


def inspect_media(path: Path, max_total: int = MAX_TOTAL_BYTES, max_ratio: int = MAX_RATIO) -> Report:
    report = Report()
    if path.is_symlink() or not path.exists():
        report.problems.append(f"{path}: no such file or folder (symlinks are not followed)")
        return report
    root = str(path)
    sources = _check_folder(path, report) if path.is_dir() else _check_zip(path, report, max_total, max_ratio)
    if report.problems and any("zip bomb" in p or "more than" in p for p in report.problems):
        return report  # do not read what may be a bomb
    damaged = [] if path.is_dir() else _damaged(sources, root, report)
    directories = [s for s in sources if is_dicomdir(_relative(s, root))]
    for source in sources:
        if source in directories or source in damaged:
            continue
        found = read_header(source)
        if isinstance(found, Instance):
            report.instances.append(found)
        elif found == "not DICOM":
            report.not_dicom.append(_relative(source, root))
        else:
            report.problems.append(f"{_relative(source, root)}: {found.removeprefix('broken: ')}")
    if len(directories) > 1:
        report.problems.append("more than one DICOMDIR: " + ", ".join(_relative(d, root) for d in directories))
    elif directories:
        report.dicomdir = _relative(directories[0], root)
        _check_dicomdir(directories[0], report.instances, root, report)
    return report
