"""One study from a PACS into a root-only folder: C-MOVE to the exchange's own storage SCP
(listening only while it retrieves, accepting only the PACS it asked and the study it asked
for), or C-GET on the exchange's own association; what arrived is counted against the PACS's
own count, and an incomplete retrieve is refused, not packaged.

Instances are written as they come (pynetdicom hands over each encoded data set with its file
meta information as received: the sender's transfer syntax, byte for byte), each into a new
file by the folder's descriptor (O_EXCL|O_NOFOLLOW); the folder is root's, 0700, and removed
afterwards whatever happens (exchange.pacs.workspace).
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, StoragePresentationContexts, evt
from pynetdicom.pdu_primitives import SCP_SCU_RoleSelectionNegotiation
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet, StudyRootQueryRetrieveInformationModelMove

from exchange.pacs.network import (
    PENDING,
    SUCCESS,
    PacsError,
    association,
    describe,
    own_ae,
    server_tls,
    status_of,
    status_text,
)
from exchange.pacs.query import StudyMatch
from exchange.site import Dicom, PacsNode

REFUSED_OUT_OF_RESOURCES = 0xA700
REFUSED_NOT_UNDERSTOOD = 0xC000
# C-GET: the images come on the exchange's own association, in presentation contexts it
# proposed; the PACS may send an instance only in a context of its SOP class and transfer
# syntax (or transcode it, which a PACS may not do for lossy JPEG 2000, say). So for the SOP
# classes the PACS names in the study, one context per transfer syntax below, and the PACS
# sends every instance as it stores it; else (no SOPClassesInStudy, or too many classes for
# the 128 contexts of an association) one context per common storage class, uncompressed.
GET_TRANSFER_SYNTAXES = (
    ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLosslessSV1,
    JPEGLossless, JPEGLSLossless, JPEGLSNearLossless, JPEG2000Lossless, JPEG2000, RLELossless,
    DeflatedExplicitVRLittleEndian,
)  # fmt: skip
MAX_CONTEXTS = 127  # of 128: one is the query model's


@dataclass
class Retrieved:
    instances: int = 0
    bytes: int = 0
    turned_away: Counter[str] = field(default_factory=Counter)  # why instances were not kept, how many
    failed: int | None = None  # the PACS's count of sub-operations that failed
    final: str = ""  # the PACS's final status, named


class _Receiver:
    """The C-STORE handler: keeps instances of the one study, up to the count the PACS gave."""

    def __init__(
        self, folder: int, prefix: str, match: StudyMatch, pacs_ae: str, progress: Callable[[int, int], None]
    ) -> None:
        self.folder = folder
        self.prefix = prefix  # one per study: the files of all studies share the folder
        self.match = match
        self.pacs_ae = pacs_ae
        self.progress = progress
        self.got = Retrieved()
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def on_store(self, event) -> int:
        # C-MOVE: the PACS called us; C-GET: the images come on our own association to it.
        peer = event.assoc.acceptor if event.assoc.is_requestor else event.assoc.requestor
        if peer.ae_title.strip() != self.pacs_ae:
            return self._turn_away(REFUSED_NOT_UNDERSTOOD, f"sent by another AE ({peer.ae_title!r})")
        try:
            dataset = event.dataset
            study, instance = str(dataset.get("StudyInstanceUID", "")), str(dataset.get("SOPInstanceUID", ""))
        except Exception as error:  # noqa: BLE001 (what the PACS sent cannot be read: said, not kept)
            return self._turn_away(REFUSED_NOT_UNDERSTOOD, f"unreadable data set ({type(error).__name__})")
        if study != self.match.study_uid:
            return self._turn_away(REFUSED_NOT_UNDERSTOOD, f"an instance of another study ({study!r})")
        data = event.encoded_dataset(include_meta=True)
        with self._lock:
            if instance in self._seen:
                return SUCCESS  # sent twice: kept once
            if self.match.instances is not None and self.got.instances >= self.match.instances:
                return self._turn_away(REFUSED_OUT_OF_RESOURCES, "more instances than the PACS counted")
            name = f"{self.prefix}{self.got.instances + 1:06d}.dcm"
            try:
                _write_new(self.folder, name, data)
            except OSError as error:  # e.g. the disk is full: refused, counted, said
                self.got.turned_away[f"not written ({error.strerror})"] += 1
                return REFUSED_OUT_OF_RESOURCES
            self._seen.add(instance)
            self.got.instances += 1
            self.got.bytes += len(data)
            self.progress(self.got.instances, self.match.instances or 0)
        return SUCCESS

    def _turn_away(self, code: int, why: str) -> int:
        with self._lock:
            self.got.turned_away[why] += 1
        return code


def _write_new(folder: int, name: str, data: bytes) -> None:
    descriptor = os.open(
        name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=folder
    )
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(descriptor, view) :]
    except OSError:
        os.unlink(name, dir_fd=folder)
        raise
    finally:
        os.close(descriptor)


def _identifier(match: StudyMatch) -> Dataset:
    keys = Dataset()
    keys.QueryRetrieveLevel = "STUDY"
    keys.StudyInstanceUID = match.study_uid
    return keys


def retrieve_studies(
    name: str,
    node: PacsNode,
    dicom: Dicom,
    matches: list[StudyMatch],
    folder: int,
    progress: Callable[[int, int, int], None] = lambda number, done, total: None,
) -> list[Retrieved]:
    """Every instance of each study of `matches` into the folder `folder` (a descriptor), one
    study after the other; PacsError unless each retrieve is complete: the PACS's final status
    Success and as many instances as it counted. `progress(number, done, total)`: study
    `number` (from 1) has `done` of its `total` instances."""
    got = []
    with _destination(name, node, dicom) as destination:
        for number, match in enumerate(matches, start=1):
            receiver = _Receiver(folder, f"{number:03d}-", match, node.ae_title, functools.partial(progress, number))
            if destination is None:
                final = _get(name, node, dicom, match, receiver)
            else:
                destination.receiver = receiver
                final = _move(name, node, dicom, match)
            got.append(_complete(name, node, match, receiver.got, final))
    return got


def _complete(name: str, node: PacsNode, match: StudyMatch, got: Retrieved, final: Dataset | None) -> Retrieved:
    code = status_of(final)
    got.final = status_text(node.retrieve, code) if code is not None else "none (timed out or aborted)"
    got.failed = (
        int(final.NumberOfFailedSuboperations) if final is not None and "NumberOfFailedSuboperations" in final else None
    )
    expected = match.instances
    if code == SUCCESS and not got.failed and (expected is None or got.instances == expected):
        return got
    verb = "C-MOVE" if node.retrieve == "move" else "C-GET"
    counted = f"of the {expected} the PACS counted" if expected is not None else "(the PACS gave no count)"
    away = "; ".join(f"{count} {why}" for why, count in got.turned_away.most_common(5))
    detail = f"; turned away: {away}" if away else ""
    failed = f", {got.failed} failed at the PACS" if got.failed else ""
    raise PacsError(
        f"{describe(name, node)}: the retrieve of study {match.study_uid} is incomplete: {got.instances} instances "
        f"{counted} arrived{failed}; {verb} ended with {got.final}{detail}. Nothing was packaged."
    )


class _Destination:
    """The exchange's storage SCP for C-MOVE: one for all the studies of a retrieve (a PACS may
    keep its association to a destination open for the next move, as Orthanc does for 5 s);
    it takes associations only from the PACS asked, and hands each C-STORE to the receiver of
    the study being moved."""

    def __init__(self, name: str, node: PacsNode, dicom: Dicom) -> None:
        self.receiver: _Receiver | None = None
        scp = own_ae(dicom, node)
        scp.require_calling_aet = [node.ae_title]  # any other AE is rejected at the association
        for context in AllStoragePresentationContexts:
            scp.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        try:
            self.server = scp.start_server(
                ("", dicom.retrieve_port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)],
                ssl_context=server_tls(node, dicom) if node.tls else None,
            )  # fmt: skip
        except OSError as error:
            raise PacsError(
                f"cannot listen on the retrieve port {dicom.retrieve_port} for {describe(name, node)}: {error.strerror}"
            ) from None

    def _on_store(self, event) -> int:
        receiver = self.receiver
        return receiver.on_store(event) if receiver is not None else REFUSED_NOT_UNDERSTOOD


@contextlib.contextmanager
def _destination(name: str, node: PacsNode, dicom: Dicom) -> Iterator[_Destination | None]:
    if node.retrieve != "move":
        yield None  # C-GET: the images come on the exchange's own association
        return
    destination = _Destination(name, node, dicom)
    try:
        yield destination
    finally:
        destination.server.shutdown()


def _move(name: str, node: PacsNode, dicom: Dicom, match: StudyMatch) -> Dataset | None:
    scu = own_ae(dicom, node)
    scu.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    with association(name, node, dicom, scu) as assoc:
        return _final(assoc.send_c_move(_identifier(match), dicom.ae_title, StudyRootQueryRetrieveInformationModelMove))


def _get(name: str, node: PacsNode, dicom: Dicom, match: StudyMatch, receiver: _Receiver) -> Dataset | None:
    scu = own_ae(dicom, node)
    scu.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    classes = match.sop_classes
    if classes and len(classes) * len(GET_TRANSFER_SYNTAXES) <= MAX_CONTEXTS:
        for sop_class in classes:
            for syntax in GET_TRANSFER_SYNTAXES:
                scu.add_requested_context(sop_class, syntax)
    else:
        classes = [context.abstract_syntax for context in StoragePresentationContexts[:MAX_CONTEXTS]]
        for sop_class in classes:
            scu.add_requested_context(sop_class)
    roles = []
    for sop_class in classes:
        role = SCP_SCU_RoleSelectionNegotiation()
        role.sop_class_uid, role.scp_role = sop_class, True
        roles.append(role)
    handlers = [(evt.EVT_C_STORE, receiver.on_store)]
    with association(name, node, dicom, scu, ext_neg=roles, evt_handlers=handlers) as assoc:
        return _final(assoc.send_c_get(_identifier(match), StudyRootQueryRetrieveInformationModelGet))


def _final(responses) -> Dataset | None:
    """The pending replies are progress; the first other one is the outcome (None: no reply,
    the association timed out or was aborted)."""
    for reply, _answer in responses:
        code = status_of(reply)
        if code not in PENDING:
            return reply if code is not None else None
    return None
