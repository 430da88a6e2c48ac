"""C-STORE into a PACS, and the C-FINDs before it: which instances the PACS already holds
(IMAGE level, per series of each study: a hierarchical query names the study and the series),
and what it knows of a patient (study level, by PatientID). Every instance's status is kept:
stored, stored with a warning (named), or failed (named, PS3.4's meaning)."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import status
from pynetdicom.association import Association
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from exchange.pacs.network import PENDING, SUCCESS, PacsError, association, describe, own_ae, status_of, status_text
from exchange.pacs.query import StudyQuery
from exchange.site import Dicom, PacsNode

MAX_CONTEXTS = 128  # presentation contexts in one association (PS3.8: odd IDs 1 to 255)
STREAMS = 2  # associations sending at once (`exchange import`): as import stations do
MAX_ANSWERS = 100_000  # C-FIND answers to one question; a PACS that sends more is not believed
T = TypeVar("T")


@dataclass(frozen=True)
class Stored:
    """What the PACS answered to one instance's C-STORE."""

    outcome: str  # "stored", "warning" (stored, with a warning) or "failed"
    detail: str = ""  # the status, named; or why it was not sent

    @property
    def ok(self) -> bool:
        return self.outcome != "failed"


def _answers(assoc: Association, keys: Dataset, name: str, node: PacsNode, what: str) -> Iterator[Dataset]:
    """The C-FIND answers (Study Root); PacsError on a failure status or no answer."""
    count = 0
    for reply, answer in assoc.send_c_find(keys, StudyRootQueryRetrieveInformationModelFind):
        code = status_of(reply)
        if code in PENDING:
            count += 1
            if count > MAX_ANSWERS:
                raise PacsError(f"{describe(name, node)}: C-FIND of {what}: more than {MAX_ANSWERS} answers")
            if answer is not None:
                yield answer
        elif code == SUCCESS:
            return
        else:
            said = status_text("find", code) if code is not None else "no answer (timed out or aborted)"
            raise PacsError(f"{describe(name, node)}: C-FIND of {what} failed: {said}")


def _finder(dicom: Dicom, node: PacsNode):
    ae = own_ae(dicom, node)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    return ae


@dataclass(frozen=True)
class KnownPatient:
    """What the PACS holds under one PatientID, over its studies (several values: several records)."""

    studies: int
    names: tuple[str, ...]  # as the PACS has them, each once, empty ones left out
    birth_dates: tuple[str, ...]


def patient_in_pacs(name: str, node: PacsNode, dicom: Dicom, patient_id: str) -> KnownPatient:
    """Study-level C-FIND by PatientID (exact, validated as `exchange pacs find` does)."""
    keys = StudyQuery(patient_id=patient_id).identifier()
    studies, names, dates = 0, {}, {}
    with association(name, node, dicom, _finder(dicom, node)) as assoc:
        for answer in _answers(assoc, keys, name, node, f"patient ID {patient_id}"):
            if str(answer.get("PatientID", "")) != patient_id:
                continue  # a PACS that matches loosely: not this patient
            studies += 1
            names.setdefault(str(answer.get("PatientName", "") or ""), None)
            dates.setdefault(str(answer.get("PatientBirthDate", "") or ""), None)
    return KnownPatient(studies, tuple(n for n in names if n), tuple(d for d in dates if d))


def instances_in_pacs(name: str, node: PacsNode, dicom: Dicom, series: Iterable[tuple[str, str]]) -> set[str]:
    """The SOP Instance UIDs the PACS holds in these (study UID, series UID) pairs."""
    held: set[str] = set()
    with association(name, node, dicom, _finder(dicom, node)) as assoc:
        for study_uid, series_uid in sorted(set(series)):
            keys = Dataset()
            keys.QueryRetrieveLevel = "IMAGE"
            keys.StudyInstanceUID = study_uid
            keys.SeriesInstanceUID = series_uid
            keys.SOPInstanceUID = ""
            for answer in _answers(assoc, keys, name, node, f"the images of series {series_uid}"):
                uid = str(answer.get("SOPInstanceUID", "") or "")
                if uid:
                    held.add(uid)
    return held


def _offered(syntax: str) -> list[str]:
    """The transfer syntaxes offered for instances in `syntax`: a compressed one as it is (it is
    sent as received, never transcoded); an uncompressed one also as the two that every PACS
    accepts (pydicom re-encodes the data set, the values unchanged)."""
    if UID(syntax).is_compressed:
        return [syntax]
    return list(dict.fromkeys([syntax, ExplicitVRLittleEndian, ImplicitVRLittleEndian]))


def context_groups(pairs: Iterable[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """The (SOP class, transfer syntax) pairs to send, in groups of at most MAX_CONTEXTS: one
    association each."""
    ordered = sorted(set(pairs))
    return [ordered[at : at + MAX_CONTEXTS] for at in range(0, len(ordered), MAX_CONTEXTS)]


def category(code: int) -> str:
    """Success, Warning, Failure, ... of a C-STORE status (PS3.4 B.2.3)."""
    return status.STORAGE_SERVICE_CLASS_STATUS.get(code, (status.code_to_category(code), ""))[0]


def store_group(
    name: str,
    node: PacsNode,
    dicom: Dicom,
    group: list[tuple[str, str]],
    items: list[tuple[T, tuple[str, str]]],
    dataset_of: Callable[[T], Dataset],
    done: Callable[[T, Stored], None],
    streams: int = STREAMS,
) -> None:
    """C-STORE of each item, with its (SOP class, transfer syntax) in `group`, on up to `streams`
    associations at once, each taking the next item when its last is answered (PacsError if none
    is had). `dataset_of(item)` reads it (an error it raises stops every stream and is raised
    here); `done(item, stored)` is told each outcome. Both are called one at a time."""
    waiting = deque(items)
    turn = threading.Lock()  # dataset_of, done and the queue: one stream at a time
    stop = threading.Event()
    failures: list[BaseException] = []
    sent_on: list[bool] = []

    def stream() -> None:
        try:
            ae = own_ae(dicom, node)
            for sop_class, syntax in group:
                ae.add_requested_context(sop_class, _offered(syntax))
            with association(name, node, dicom, ae) as assoc:
                sent_on.append(True)
                accepted = {(c.abstract_syntax, c.transfer_syntax[0]) for c in assoc.accepted_contexts}
                while not stop.is_set():
                    with turn:
                        if not waiting:
                            return
                        item, (sop_class, syntax) = waiting.popleft()
                        dataset = dataset_of(item) if _sendable(accepted, sop_class, syntax) else None
                    if dataset is None:
                        stored = Stored(
                            "failed",
                            f"not sent: the PACS accepted SOP class {sop_class} in none of the transfer syntaxes "
                            f"offered ({', '.join(_offered(syntax))})",
                        )
                    elif not assoc.is_established:  # left for another stream, or named by the caller
                        with turn:
                            waiting.appendleft((item, (sop_class, syntax)))
                        raise PacsError(f"{describe(name, node)}: the association ended (aborted or timed out)")
                    else:
                        stored = _store_one(assoc, dataset)
                    with turn:
                        done(item, stored)
        except BaseException as failure:  # noqa: BLE001 - raised again by the caller's thread below
            failures.append(failure)
            if not isinstance(failure, PacsError):
                stop.set()  # a changed file: nothing more is sent

    # A second association only for more than a few instances: a PACS files each in turn, and
    # two at once hide its wait for one; the second is taken only if the PACS grants it.
    threads = [
        threading.Thread(target=stream, name=f"c-store-{n}") for n in range(max(1, min(streams, len(items) // 8)))
    ]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            while thread.is_alive():
                thread.join(0.2)  # Ctrl-C and SIGTERM reach this thread: it stops the others
    except BaseException:
        stop.set()
        for thread in threads:
            thread.join()
        raise
    stopped = [failure for failure in failures if not isinstance(failure, PacsError)]
    if stopped:
        raise stopped[0]
    if failures and (not sent_on or waiting):
        raise failures[0]  # no association at all (or none left to send the rest): named by the caller


def _sendable(accepted: set[tuple[str, str]], sop_class: str, syntax: str) -> bool:
    """An accepted context for it: its own transfer syntax, or (uncompressed) any uncompressed one."""
    compressed = UID(syntax).is_compressed
    return any(
        accepted_class == sop_class
        and (accepted_syntax == syntax or not (compressed or UID(accepted_syntax).is_compressed))
        for accepted_class, accepted_syntax in accepted
    )


def _store_one(assoc: Association, dataset: Dataset) -> Stored:
    try:
        reply = assoc.send_c_store(dataset)
    except (ValueError, AttributeError) as error:  # pynetdicom could not encode it for any context
        return Stored("failed", f"not sent: {error}")
    code = status_of(reply)
    if code is None:
        return Stored("failed", "no answer (timed out or aborted)")
    if code == SUCCESS:
        return Stored("stored")
    said = status_text("store", code)
    return Stored("warning", said) if category(code) == "Warning" else Stored("failed", said)
