"""Synthetic DICOM studies for tests and benchmarks, made offline.

`ct_study` writes uncompressed CT instances (512x512, 12 bits, a body-shaped disc of soft tissue in air,
so deflate sees about what it sees in a real CT); `clone` copies an existing instance
(e.g. one of pydicom's JPEG 2000 test files) under new UIDs and a patient of our choosing,
pixel data untouched; `deflated` saves one again in Deflated Explicit VR Little Endian, with
padding (zeros: deflate makes a thousandth of them) where a bomb keeps it.
"""

from __future__ import annotations

import contextlib
import random
import struct
import tracemalloc
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid


@cache
def _ct_pixels(rows: int = 512, cols: int = 512) -> bytes:
    noise = random.Random(7)
    out = bytearray()
    for r in range(rows):
        values = [
            1000 + ((r * 3 + c * 5) % 200) + noise.randrange(64)
            if (r - rows // 2) ** 2 + (c - cols // 2) ** 2 < (rows * 2 // 5) ** 2
            else 0xFC18  # -1000 HU: air
            for c in range(cols)
        ]
        out += struct.pack(f"<{cols}H", *values)
    return bytes(out)


def ct_study(
    directory: Path,
    count: int,
    patient_id: str = "SYN0001",
    series: int = 1,
    omit: tuple[str, ...] = (),
    study_uid: str | None = None,
    attributes: Mapping[str, object] | None = None,
) -> list[Path]:
    """`count` instances per series; keywords in `omit` are left out (to test the fill rules);
    `attributes` sets or replaces attributes on every instance by keyword (e.g. AccessionNumber,
    StudyDate, SeriesDescription, as a PACS's C-FIND matches them)."""
    directory.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    paths = []
    for s in range(series):
        series_uid = generate_uid()
        for i in range(count):
            uid = generate_uid()
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = CTImageStorage
            meta.MediaStorageSOPInstanceUID = uid
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = Dataset()
            ds.file_meta = meta
            values = {
                "SOPClassUID": CTImageStorage,
                "SOPInstanceUID": uid,
                "PatientID": patient_id,
                "PatientName": "SYNTHETIC^PATIENT",
                "PatientBirthDate": "19700101",
                "StudyInstanceUID": study_uid,
                "SeriesInstanceUID": series_uid,
                "StudyDate": "20260101",
                "StudyTime": "120000",
                "StudyID": "1",
                "AccessionNumber": "ACC0001",
                "StudyDescription": "CT THORAX",
                "Modality": "CT",
                "SeriesNumber": s + 1,
                "InstanceNumber": i + 1,
                "Rows": 512,
                "Columns": 512,
                "BitsAllocated": 16,
                "BitsStored": 12,
                "HighBit": 11,
                "PixelRepresentation": 1,
                "SamplesPerPixel": 1,
                "PhotometricInterpretation": "MONOCHROME2",
                "RescaleIntercept": "-1024",  # the disc is soft tissue, about -24 to 240 HU
                "RescaleSlope": "1",
                "WindowCenter": "40",
                "WindowWidth": "400",
                **(attributes or {}),
            }
            for keyword, value in values.items():
                if keyword not in omit:
                    setattr(ds, keyword, value)
            ds.PixelData = _ct_pixels()
            path = directory / f"s{s:02d}-{i:05d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    return paths


def clone(
    template: Path, directory: Path, count: int, patient_id: str = "SYN0001", patient_name: str = "SYNTHETIC^PATIENT"
) -> list[Path]:
    """`count` copies of `template` in one new series of one new study, new UIDs, same pixels."""
    directory.mkdir(parents=True, exist_ok=True)
    source = dcmread(template)
    study_uid, series_uid = generate_uid(), generate_uid()
    paths = []
    for i in range(count):
        uid = generate_uid()
        source.SOPInstanceUID = uid
        source.file_meta.MediaStorageSOPInstanceUID = uid
        source.StudyInstanceUID, source.SeriesInstanceUID = study_uid, series_uid
        source.PatientID, source.PatientName, source.InstanceNumber = patient_id, patient_name, i + 1
        path = directory / f"{template.stem}-{i:05d}.dcm"
        source.save_as(path)
        paths.append(path)
    return paths


def deflated(template: Path, path: Path, padding: int = 0, **long_values: int) -> Path:
    """`template` saved as `path` in Deflated Explicit VR Little Endian, under a new SOP Instance
    UID; with `padding` zero bytes in a private element before the pixel data, and each of
    `long_values` (keyword: characters) that long (as UN, which pydicom writes unchecked)."""
    ds = dcmread(template)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    if padding:
        ds.private_block(0x0009, "EXCHANGE TESTS", create=True).add_new(0x10, "OB", bytes(padding))
    for keyword, length in long_values.items():
        ds.add_new(keyword, "UN", b"A" * length)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


@contextlib.contextmanager
def peak_memory() -> Iterator[list[int]]:
    """The most Python held at once inside the block, every thread's (tracemalloc: zlib's
    output and pydicom's values are there; a C decoder's own buffers are not), as `[bytes]`."""
    found: list[int] = []
    tracemalloc.start()
    try:
        yield found
    finally:
        found.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
