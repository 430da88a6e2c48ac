"""Study-level C-FIND: what staff name (an accession number, a study UID, or a patient ID
with a date) and what the PACS answers, as plain values; the answers are the PACS's text,
shown escaped wherever they land."""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from exchange.errors import REFUSED
from exchange.pacs.network import PENDING, SUCCESS, PacsError, association, describe, own_ae, status_of, status_text
from exchange.site import Dicom, PacsNode

MAX_MATCHES = 200  # more than staff can choose from: the query must be narrowed
# Exact matching only: a wildcard or a backslash (a value separator) in what staff type
# would ask the PACS for other studies than the one named.
_NO_WILDCARDS = r"[^*?\\\x00-\x1f\x7f]"
ACCESSION = re.compile(rf"^{_NO_WILDCARDS}{{1,16}}$")  # SH
PATIENT_ID = re.compile(rf"^{_NO_WILDCARDS}{{1,64}}$")  # LO
STUDY_UID = re.compile(r"^(?=.{1,64}$)(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")  # UI


class QueryError(PacsError):
    status = REFUSED


@dataclass(frozen=True)
class StudyQuery:
    """What staff asked for. One of: accession, study_uid, or patient_id (with an optional
    date or date range, YYYY-MM-DD[..YYYY-MM-DD])."""

    accession: str | None = None
    study_uid: str | None = None
    patient_id: str | None = None
    date: str | None = None

    def __post_init__(self) -> None:
        if self.accession is None and self.study_uid is None and self.patient_id is None:
            raise QueryError("name the study: --accession, --study-uid, or --patient-id (with --date)")
        if self.date is not None and self.patient_id is None:
            raise QueryError("--date goes with --patient-id")
        for option, value, pattern, what in (
            ("--accession", self.accession, ACCESSION, "1-16 characters, no wildcards (* ?) or backslash"),
            ("--patient-id", self.patient_id, PATIENT_ID, "1-64 characters, no wildcards (* ?) or backslash"),
            ("--study-uid", self.study_uid, STUDY_UID, "a DICOM UID: digits and dots, at most 64 characters"),
        ):
            if value is not None and not pattern.match(value):
                raise QueryError(f"{option} {value!r}: must be {what}")
        if self.date is not None:
            self.dicom_date()  # said now, before the PACS is asked

    def dicom_date(self) -> str:
        """The date (range) as DICOM DA matching wants it: YYYYMMDD or YYYYMMDD-YYYYMMDD."""
        parts = self.date.split("..") if self.date else []
        if not 1 <= len(parts) <= 2:
            raise QueryError(f"--date {self.date!r}: must be YYYY-MM-DD or YYYY-MM-DD..YYYY-MM-DD")
        try:
            days = [datetime.date.fromisoformat(part.strip()) for part in parts]
        except ValueError:
            raise QueryError(f"--date {self.date!r}: must be YYYY-MM-DD or YYYY-MM-DD..YYYY-MM-DD") from None
        if len(days) == 2 and days[0] > days[1]:
            raise QueryError(f"--date {self.date!r}: the range ends before it starts")
        return "-".join(day.strftime("%Y%m%d") for day in days)

    def shown(self) -> str:
        return ", ".join(f"{key.replace('_', ' ')} {value}" for key, value in self.fields().items())

    def fields(self) -> dict[str, str]:
        """What was asked, for messages and the audit line."""
        asked = {"accession": self.accession, "study_uid": self.study_uid, "patient_id": self.patient_id}
        if self.date:
            asked["date"] = self.date
        return {key: value for key, value in asked.items() if value is not None}

    def identifier(self) -> Dataset:
        keys = Dataset()
        keys.QueryRetrieveLevel = "STUDY"
        keys.AccessionNumber = self.accession or ""
        keys.StudyInstanceUID = self.study_uid or ""
        keys.PatientID = self.patient_id or ""
        keys.StudyDate = self.dicom_date() if self.date else ""
        # Only what a PACS keeps in its study index: asking for more makes some (Orthanc) read an
        # image file for every match, slow, and a failed C-FIND if one file is unreadable.
        for returned in (
            "PatientName", "PatientBirthDate", "StudyTime", "StudyDescription",
            "ModalitiesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
            "SOPClassesInStudy",
        ):  # fmt: skip
            setattr(keys, returned, "")
        return keys


@dataclass(frozen=True)
class StudyMatch:
    """One study as the PACS describes it."""

    study_uid: str
    patient_id: str
    patient_name: str
    birth_date: str
    study_date: str
    accession: str
    modalities: str
    description: str
    series: int | None
    instances: int | None  # NumberOfStudyRelatedInstances: what a complete retrieve brings
    sop_classes: tuple[str, ...] = ()  # SOPClassesInStudy, where the PACS answers it: what C-GET must take

    @classmethod
    def from_answer(cls, answer: Dataset) -> StudyMatch:
        def text(keyword: str) -> str:
            value = answer.get(keyword)
            if value is None:
                return ""
            return "\\".join(str(v) for v in value) if isinstance(value, MultiValue) else str(value)

        def count(keyword: str) -> int | None:
            try:
                return int(answer.get(keyword)) if answer.get(keyword) not in (None, "") else None
            except (TypeError, ValueError):
                return None

        return cls(
            study_uid=text("StudyInstanceUID"),
            patient_id=text("PatientID"),
            patient_name=text("PatientName"),
            birth_date=text("PatientBirthDate"),
            study_date=text("StudyDate"),
            accession=text("AccessionNumber"),
            modalities=text("ModalitiesInStudy"),
            description=text("StudyDescription"),
            series=count("NumberOfStudyRelatedSeries"),
            instances=count("NumberOfStudyRelatedInstances"),
            sop_classes=tuple(uid for uid in text("SOPClassesInStudy").split("\\") if STUDY_UID.match(uid)),
        )


def find_studies(name: str, node: PacsNode, dicom: Dicom, query: StudyQuery) -> list[StudyMatch]:
    """The studies the PACS matches; PacsError on a failure status, or too many to choose from."""
    ae = own_ae(dicom, node)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    matches: list[StudyMatch] = []
    with association(name, node, dicom, ae) as assoc:
        for reply, answer in assoc.send_c_find(query.identifier(), StudyRootQueryRetrieveInformationModelFind):
            code = status_of(reply)
            if code in PENDING and answer is not None:
                match = StudyMatch.from_answer(answer)
                if STUDY_UID.match(match.study_uid):  # a study without a usable UID cannot be retrieved
                    matches.append(match)
                if len(matches) > MAX_MATCHES:
                    assoc.abort()
                    raise PacsError(
                        f"{describe(name, node)}: more than {MAX_MATCHES} studies match {query.shown()}; "
                        "narrow the query (--study-uid, or --patient-id with --date)",
                        status=REFUSED,
                    )
            elif code == SUCCESS:
                break
            else:
                said = status_text("find", code) if code is not None else "no answer (timed out or aborted)"
                raise PacsError(f"{describe(name, node)}: C-FIND of {query.shown()} failed: {said}")
    return matches
