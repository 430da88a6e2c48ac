"""The DICOMDIR of a study package (DICOM PS3.10 and PS3.3 F), built in linear time.

pydicom's `FileSet.add()` is quadratic (about 72 s for 2,000 files here) and rewrites
every instance; the package only needs the directory. So the records come from the
header-only reads, pydicom's own record makers (`DIRECTORY_RECORDERS`) fill them, and
this module lays the records out and computes their offsets the way pydicom's
`FileSet.write()` does, in one pass.

File IDs follow PS3.12 Annex V / IHE PDI: DICOM/PAnnnnnn/STnnnnnn/SEnnnnnn/IMnnnnnn,
A-Z and 0-9, eight characters a component, five levels.

Keys the records require but a source lacks (or, for the two numbers, holds as no integer) are
filled by these rules, each reported:
- StudyDate/StudyTime: the series', acquisition's or content's date/time, else 19000101/000000
- StudyID: the accession number (its last 16 characters), else S<n> by study order
- SeriesNumber: <n> by series order within the study
- InstanceNumber: <n> by file order within the series
- Modality: OT
A file without PatientID is refused: whose images they are must never be guessed.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.fileset import DIRECTORY_RECORDERS, _four_level_record_type  # pydicom 3: the PS3.3 F.5 mapping
from pydicom.filewriter import write_data_element, write_dataset, write_file_meta_info
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, MediaStorageDirectoryStorage, generate_uid

from exchange import untrusted
from exchange.dicom.dicomfiles import Header, Instance, as_dataset, full_header
from exchange.errors import ExchangeError

FILE_SET_ID = "IMAGINGEXCHANGE"


class DicomDirError(ExchangeError):
    pass


@dataclass
class Image:
    instance: Instance
    number: int
    record_type: str
    file_id: tuple[str, ...] = ()


@dataclass
class Series:
    uid: str
    header: Header
    images: list[Image] = field(default_factory=list)


@dataclass
class Study:
    uid: str
    header: Header
    series: dict[str, Series] = field(default_factory=dict)


@dataclass
class Patient:
    id: str
    header: Header
    studies: dict[str, Study] = field(default_factory=dict)


@dataclass
class Tree:
    patients: dict[str, Patient] = field(default_factory=dict)
    filled: list[str] = field(default_factory=list)  # what the rules filled, for staff to read

    def images(self) -> Iterable[Image]:
        for patient in self.patients.values():
            for study in patient.studies.values():
                for series in study.series.values():
                    yield from series.images


def _value(header: Dataset, *keywords: str) -> str | None:
    for keyword in keywords:
        value = header.get(keyword)
        if value not in (None, ""):
            return str(value)
    return None


def _record_type(header: Header) -> str:
    return _record_type_of(header.get("SOPClassUID"), header.get("Modality"), "RTPlanLabel" in header)


@functools.cache
def _record_type_of(sop_class: str | None, modality: str | None, rt_plan: bool) -> str:
    """pydicom's choice (PS3.3 F.5), asked once per kind of instance."""
    probe = {"SOPClassUID": sop_class, "Modality": modality, "RTPlanLabel": "x" if rt_plan else None}
    return _four_level_record_type(as_dataset({k: v for k, v in probe.items() if v is not None}))


def build_tree(instances: list[Instance]) -> Tree:
    tree = Tree()
    for instance in instances:
        header = instance.header
        patient_id = _value(header, "PatientID")
        if patient_id is None:
            raise DicomDirError(f"{instance.source.label}: no PatientID; whose images these are cannot be told")
        patient = tree.patients.setdefault(patient_id, Patient(patient_id, header))
        study_uid = _value(header, "StudyInstanceUID")
        series_uid = _value(header, "SeriesInstanceUID")
        if study_uid is None or series_uid is None:
            raise DicomDirError(f"{instance.source.label}: no Study or Series Instance UID")
        study = patient.studies.setdefault(study_uid, Study(study_uid, header))
        series = study.series.setdefault(series_uid, Series(series_uid, header))
        try:
            number = int(header["InstanceNumber"]) if _value(header, "InstanceNumber") else 0
        except (TypeError, ValueError):
            number = 0
        series.images.append(Image(instance, number, _record_type(header)))
    for p, patient in enumerate(tree.patients.values(), 1):
        for s, study in enumerate(patient.studies.values(), 1):
            for e, series in enumerate(study.series.values(), 1):
                series.images.sort(key=lambda image: (image.number == 0, image.number))
                for i, image in enumerate(series.images, 1):
                    image.file_id = ("DICOM", f"PA{p:06d}", f"ST{s:06d}", f"SE{e:06d}", f"IM{i:06d}")
    return tree


def summary(tree: Tree) -> list[dict]:
    """What is inside, for README.TXT, INDEX.HTM and staff: plain values only."""
    patients = []
    for patient in tree.patients.values():
        studies = []
        for study in patient.studies.values():
            modalities = sorted({_value(series.header, "Modality") or "OT" for series in study.series.values()})
            studies.append(
                {
                    "uid": study.uid,
                    "date": _value(study.header, "StudyDate") or "",
                    "modalities": "/".join(modalities),
                    "description": _value(study.header, "StudyDescription") or "",
                    "accession": _value(study.header, "AccessionNumber") or "",
                    "series": len(study.series),
                    "images": sum(len(series.images) for series in study.series.values()),
                }
            )
        patients.append(
            {
                "name": _value(patient.header, "PatientName") or "",
                "id": patient.id,
                "birth_date": _value(patient.header, "PatientBirthDate") or "",
                "studies": studies,
            }
        )
    return patients


def _filled(tree: Tree, where: str, keyword: str, value: str) -> str:
    tree.filled.append(f"{where}: {keyword} missing, filled with {value!r}")
    return value


def _study_keys(tree: Tree, study: Study, index: int) -> dict:
    header, where = study.header, f"study {study.uid}"
    accession = _value(header, "AccessionNumber")
    return {
        "StudyDate": _value(header, "StudyDate")
        or _filled(
            tree, where, "StudyDate", _value(header, "SeriesDate", "AcquisitionDate", "ContentDate") or "19000101"
        ),
        "StudyTime": _value(header, "StudyTime")
        or _filled(
            tree, where, "StudyTime", _value(header, "SeriesTime", "AcquisitionTime", "ContentTime") or "000000"
        ),
        "StudyID": _value(header, "StudyID")
        or _filled(tree, where, "StudyID", accession[-16:] if accession else f"S{index}"),
    }


def _record(record_type: str, header: Header, keys: dict | None = None, source=None) -> Dataset:
    try:
        merged = as_dataset({**header, **(keys or {})})
        if record_type not in ("PATIENT", "STUDY", "SERIES", "IMAGE") and source is not None:
            # SR, presentation states, RT objects, ...: their records need elements beyond ours.
            merged = full_header(source)
            for keyword, value in (keys or {}).items():
                setattr(merged, keyword, value)
        record = DIRECTORY_RECORDERS[record_type](merged)
    # A value pydicom will not write, named by pydicom; or a sender's file pydicom cannot even
    # read whole (nesting thousands of sequences deep, damaged elements): refused, never a crash.
    except Exception as exc:  # noqa: BLE001 - whatever a received file makes pydicom raise
        where = f" for {source.label}" if source is not None else ""
        reason = "nested too deep" if isinstance(exc, RecursionError) else untrusted.printable(exc)
        raise DicomDirError(f"cannot make a {record_type} record{where}: {reason}") from None
    # The three offsets first (PS3.3 F.3.2.2): their byte positions in the encoded record are
    # fixed, so they are patched in after the layout is known (see _OFFSET_FIELDS).
    record.OffsetOfTheNextDirectoryRecord = 0
    record.RecordInUseFlag = 0xFFFF
    record.OffsetOfReferencedLowerLevelDirectoryEntity = 0
    record.DirectoryRecordType = record_type
    if "SpecificCharacterSet" in header:
        record.SpecificCharacterSet = header["SpecificCharacterSet"]
    return record


# In Explicit VR Little Endian a record starts with (0004,1400) UL, (0004,1410) US and
# (0004,1420) UL: the next-record offset's value at bytes 8-12, the lower-level one's at 30-34.
_OFFSET_FIELDS = ((0, b"\x04\x00\x00\x14UL\x04\x00"), (22, b"\x04\x00\x20\x14UL\x04\x00"))


def _encode(record: Dataset) -> bytearray:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, record)
    encoded = bytearray(buffer.getvalue())
    for at, head in _OFFSET_FIELDS:
        if encoded[at : at + 8] != head:
            raise DicomDirError("unexpected directory record layout")  # never: pydicom sorts by tag
    return encoded


@dataclass
class _Node:
    encoded: bytearray
    children: list[_Node] = field(default_factory=list)
    offset: int = 0


def _nodes(tree: Tree) -> list[_Node]:
    """Every record encoded once, in a tree; only the bytes are kept."""
    roots = []
    for patient in tree.patients.values():
        patient_node = _Node(_encode(_record("PATIENT", patient.header)))
        roots.append(patient_node)
        for s, study in enumerate(patient.studies.values(), 1):
            study_node = _Node(_encode(_record("STUDY", study.header, _study_keys(tree, study, s))))
            patient_node.children.append(study_node)
            for e, series in enumerate(study.series.values(), 1):
                where = f"series {series.uid}"
                keys = {
                    "Modality": _value(series.header, "Modality") or _filled(tree, where, "Modality", "OT"),
                    "SeriesNumber": _value(series.header, "SeriesNumber")
                    or _filled(tree, where, "SeriesNumber", str(e)),
                }
                series_node = _Node(_encode(_record("SERIES", series.header, keys)))
                study_node.children.append(series_node)
                for i, image in enumerate(series.images, 1):
                    header = image.instance.header
                    leaf_keys = {}
                    if not _value(header, "InstanceNumber"):
                        where = f"instance {header['SOPInstanceUID']}"
                        leaf_keys["InstanceNumber"] = _filled(tree, where, "InstanceNumber", str(i))
                    leaf = _record(image.record_type, header, leaf_keys, image.instance.source)
                    leaf.ReferencedFileID = list(image.file_id)
                    leaf.ReferencedSOPClassUIDInFile = header["SOPClassUID"]
                    leaf.ReferencedSOPInstanceUIDInFile = header["SOPInstanceUID"]
                    leaf.ReferencedTransferSyntaxUIDInFile = image.instance.transfer_syntax
                    series_node.children.append(_Node(_encode(leaf)))
    return roots


def _preorder(nodes: list[_Node]) -> Iterable[_Node]:
    for node in nodes:
        yield node
        yield from _preorder(node.children)


def _link(siblings: list[_Node]) -> None:
    for node, following in zip(siblings, [*siblings[1:], None], strict=False):
        node.encoded[8:12] = struct.pack("<I", following.offset if following else 0)
        node.encoded[30:34] = struct.pack("<I", node.children[0].offset if node.children else 0)
        _link(node.children)


def dicomdir_bytes(tree: Tree) -> bytes:
    """The encoded DICOMDIR file (preamble, meta, directory), Explicit VR Little Endian."""
    try:
        roots = _nodes(tree)
    except RecursionError:  # a record whose elements nest thousands deep (a sender's SR): pydicom recurses
        raise DicomDirError("a file's header nests too deep for its directory record") from None
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MediaStorageDirectoryStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "IMAGINGEXCH"
    directory = Dataset()
    directory.FileSetID = FILE_SET_ID
    directory.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = 0
    directory.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = 0
    directory.FileSetConsistencyFlag = 0

    # Offsets count from the file's first byte; the records follow the header elements and
    # the sequence's 12-byte element header, each as an item of defined length (8-byte header).
    head = DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, False
    head.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(head, meta, enforce_standard=True)
    offset = head.tell() + sum(_element_length(directory[tag]) for tag in directory.keys()) + 12
    for node in _preorder(roots):
        node.offset = offset
        offset += 8 + len(node.encoded)
    _link(roots)
    if roots:
        directory.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = roots[0].offset
        directory.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = roots[-1].offset
    write_dataset(head, directory)
    parts = [head.getvalue(), struct.pack("<HH2sHI", 0x0004, 0x1220, b"SQ", 0, 0xFFFFFFFF)]
    for node in _preorder(roots):
        parts.append(struct.pack("<HHI", 0xFFFE, 0xE000, len(node.encoded)))
        parts.append(bytes(node.encoded))
    parts.append(struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))  # sequence delimitation item
    return b"".join(parts)


def _element_length(element) -> int:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_data_element(buffer, element)
    return len(buffer.getvalue())
