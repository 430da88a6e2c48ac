"""What the view page shows of a study, whatever holds it: a study package's zip
(exchange.portal.package_view) or a folder of DICOM files (exchange.portal.folder_view)."""

from __future__ import annotations

from dataclasses import dataclass

# The sender's DICOM text a series carries (STACKS.JSON's names, exchange.dicom.webcontent.stacks).
TEXTS = ("patient_id", "patient_name", "study_date", "study_description", "modality", "series_number",
         "series_description")  # fmt: skip


class NotViewable(Exception):
    """This file or folder cannot be shown (no study in it, or damaged); the message says why."""


@dataclass(frozen=True)
class Picture:
    name: str  # a zip's entry, or a DICOM file's path in the folder
    width: int  # 0 when not known before it is rendered
    height: int
    frame: int = 0  # of a multi-frame file


@dataclass(frozen=True)
class SeriesStack:
    number: int  # 1, 2, ... in the study's order
    texts: dict[str, str]  # the sender's DICOM text (TEXTS): shown escaped, as every other value
    images: int
    frames: int
    pictures: tuple[Picture, ...]
    problems: dict[str, int]  # why pictures cannot be shown, and how many
