"""Patient reconciliation on import, after IHE's Import Reconciliation Workflow (RAD TF-1 21):
a received study is filed under the hospital's own patient ID. What the sender called the
patient is checked against what the PACS knows under that ID (name and birth date) before
anything is sent; then every instance's PatientID and IssuerOfPatientID become the local ones,
the received ones are kept in OtherPatientIDsSequence, the name and birth date become the
PACS's (where it knows one of each), and every value replaced is kept in
OriginalAttributesSequence (PS3.3 C.12.1: "COERCE"), so the PACS holds where the study came from."""

from __future__ import annotations

import copy
import datetime
import unicodedata
import warnings
from dataclasses import dataclass, field

from pydicom.charset import encode_string
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from exchange import untrusted
from exchange.errors import REFUSED
from exchange.pacs.network import PacsError
from exchange.pacs.store import KnownPatient

# The attributes a reconciliation replaces (their received values kept in OriginalAttributesSequence).
COERCED = ("PatientID", "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence", "PatientName", "PatientBirthDate")


class ReconcileError(PacsError):
    """What was received does not fit the local patient; nothing was sent."""

    status = REFUSED


def name_key(value: str) -> tuple[str, ...]:
    """A DICOM person name (PN) as compared: its first (alphabetic) component group, components
    family, given and middle (prefix and suffix left out: "Dr", "jr"), each without case,
    accents of compatibility forms or extra spaces; components left empty at the end dropped."""
    alphabetic = unicodedata.normalize("NFKC", str(value)).split("=")[0]
    parts = [" ".join(part.split()).casefold() for part in alphabetic.split("^")[:3]]
    while parts and not parts[-1]:
        parts.pop()
    return tuple(parts)


def same_name(one: str, other: str) -> bool:
    """Family and given names the same; a middle name counts only where both have one."""
    a, b = name_key(one), name_key(other)
    a, b = (a + ("", "", ""))[:3], (b + ("", "", ""))[:3]
    return a[:2] == b[:2] and (not a[2] or not b[2] or a[2] == b[2])


def _shown_name(value: str) -> str:
    return untrusted.printable(value) or "(none)"


@dataclass(frozen=True)
class Reconciliation:
    """The decision: the local ID, and what the instances get."""

    local_id: str
    received_id: str
    issuer: str | None  # the site's issuer of the local IDs; None: IssuerOfPatientID removed
    name: str | None  # the PACS's name for the patient (written), None: the received one kept
    birth_date: str | None  # likewise
    known: bool  # the PACS knows the local ID
    differences: list[str] = field(default_factory=list)  # what did not match (refused unless forced)
    notes: list[str] = field(default_factory=list)  # what could not be compared
    forced: bool = False
    modifying_system: str = ""  # the exchange's AE title, in OriginalAttributesSequence

    def fields(self) -> dict:
        """For the audit line."""
        return {
            "local_id": self.local_id,
            "received_id": self.received_id,
            "known_to_pacs": self.known,
            "forced": self.forced,
            **({"differences": self.differences} if self.differences else {}),
        }


@dataclass(frozen=True)
class Received:
    """The one patient of an upload, as the sender named them."""

    patient_id: str
    name: str
    birth_date: str


def received_patient(headers: list[dict]) -> Received:
    """The upload's one patient; ReconcileError if it holds more than one (another PatientID,
    name or birth date: two sources, maybe two people)."""
    ids = sorted({str(h.get("PatientID", "")) for h in headers})
    names = list(dict.fromkeys(str(h.get("PatientName", "")) for h in headers))
    dates = sorted({str(h.get("PatientBirthDate", "")) for h in headers} - {""})
    distinct_names = {name_key(n) for n in names if name_key(n)}
    if len(ids) != 1 or len(distinct_names) > 1 or len(dates) > 1:
        shown = "; ".join(
            [f"patient IDs {', '.join(untrusted.printable(i) for i in ids)}"] * (len(ids) != 1)
            + [f"names {', '.join(_shown_name(n) for n in names)}"] * (len(distinct_names) > 1)
            + [f"birth dates {', '.join(dates)}"] * (len(dates) > 1)
        )
        raise ReconcileError(
            f"--patient-id reconciles one patient, and the upload holds more than one ({shown}); "
            "nothing was sent: import each patient's studies on their own"
        )
    return Received(ids[0], next((n for n in names if name_key(n)), ""), dates[0] if dates else "")


def decide(
    local_id: str,
    received: Received,
    known: KnownPatient,
    issuer: str | None,
    force: bool,
    modifying_system: str,
) -> Reconciliation:
    """Check the received patient against what the PACS knows of `local_id`; ReconcileError on
    a mismatch (or an ID the PACS does not know, or nothing to compare) without `force`."""
    received_name, received_date = received.name, received.birth_date
    differences, notes = [], []
    if not known.studies:
        differences.append(f"the PACS knows no patient with ID {untrusted.printable(local_id)}")
    else:
        if not received_name or not known.names:
            notes.append("names not compared: " + ("none received" if not received_name else "the PACS has none"))
        elif not any(same_name(received_name, n) for n in known.names):
            differences.append(
                f"name: received {_shown_name(received_name)}, the PACS has "
                + " or ".join(_shown_name(n) for n in known.names)
            )
        if not received_date or not known.birth_dates:
            notes.append("birth dates not compared: " + ("none received" if not received_date else "the PACS has none"))
        elif received_date not in known.birth_dates:
            differences.append(f"birth date: received {received_date}, the PACS has {' or '.join(known.birth_dates)}")
        if not differences and len(notes) == 2:
            differences.append("neither name nor birth date could be compared")
    if differences and not force:
        raise ReconcileError(
            f"the upload's patient {untrusted.printable(received.patient_id)} cannot be filed as local patient "
            f"{untrusted.printable(local_id)}: {'; '.join(differences)}; nothing was sent. "
            "If it is the same patient all the same, run again with --force-reconcile"
        )
    # The PACS's own values, where it has one of each: one patient record, not two spellings.
    one_name = known.names[0] if len({name_key(n) for n in known.names}) == 1 else None
    one_date = known.birth_dates[0] if len(known.birth_dates) == 1 else None
    return Reconciliation(
        local_id,
        received.patient_id,
        issuer,
        one_name,
        one_date,
        bool(known.studies),
        differences,
        notes,
        force,
        modifying_system,
    )


def _encodable(value: str, encodings: str | list[str]) -> bool:
    """Whether pydicom writes `value` in these character sets as it is (it would put in "?" instead)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            encode_string(value, [encodings] if isinstance(encodings, str) else list(encodings))
        except (UserWarning, UnicodeError, LookupError, ValueError):
            return False
    return True


def coerce(dataset: Dataset, plan: Reconciliation, now: datetime.datetime | None = None) -> list[str]:
    """The data set filed under the local patient (see the module's text); what could not be
    written as the PACS has it (not encodable in the data set's character set) is said, and kept."""
    said: list[str] = []
    original = Dataset()
    for keyword in COERCED:
        if keyword in dataset:
            original[keyword] = copy.deepcopy(dataset[keyword])  # its own element: the data set's changes below
    received = Dataset()
    received.PatientID = str(dataset.get("PatientID", ""))
    if dataset.get("IssuerOfPatientID"):
        received.IssuerOfPatientID = dataset.IssuerOfPatientID
    if "IssuerOfPatientIDQualifiersSequence" in dataset:  # it qualified the received issuer
        received.IssuerOfPatientIDQualifiersSequence = dataset.IssuerOfPatientIDQualifiersSequence
        del dataset.IssuerOfPatientIDQualifiersSequence
    received.TypeOfPatientID = "TEXT"
    others = Sequence(list(dataset.get("OtherPatientIDsSequence", [])))
    if not any(
        str(item.get("PatientID", "")) == received.PatientID
        and str(item.get("IssuerOfPatientID", "")) == str(received.get("IssuerOfPatientID", ""))
        for item in others
    ):
        others.append(received)
    dataset.OtherPatientIDsSequence = others
    dataset.PatientID = plan.local_id
    if plan.issuer:
        dataset.IssuerOfPatientID = plan.issuer
    elif "IssuerOfPatientID" in dataset:
        del dataset.IssuerOfPatientID  # the sender's issuer does not issue the local ID
    if plan.name is not None:
        if _encodable(plan.name, dataset.get("SpecificCharacterSet") or "ISO_IR 6"):
            dataset.PatientName = plan.name
        else:
            said.append(
                "the PACS's patient name cannot be written in the instance's character set; the received one kept"
            )
    if plan.birth_date is not None:
        dataset.PatientBirthDate = plan.birth_date
    modification = Dataset()
    modification.ModifiedAttributesSequence = Sequence([original])
    modification.AttributeModificationDateTime = (now or datetime.datetime.now(datetime.UTC)).strftime(
        "%Y%m%d%H%M%S+0000"
    )
    modification.ModifyingSystem = plan.modifying_system
    modification.SourceOfPreviousValues = str(received.get("IssuerOfPatientID", ""))
    modification.ReasonForTheAttributeModification = "COERCE"
    dataset.OriginalAttributesSequence = Sequence([*dataset.get("OriginalAttributesSequence", []), modification])
    return said
