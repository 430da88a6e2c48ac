"""`exchange import PATH --to-pacs NAME [--patient-id LOCAL-ID]`: a received upload (a zip or a
folder) into a PACS, as staff would do it by hand with a DICOM tool, but only what passed
`exchange inspect`, and exactly that:

1. inspected (exchange.dicom.media) with the staff member's rights; any problem refuses the
   import, nothing is sent;
2. with --patient-id, reconciled (exchange.pacs.reconcile): one received patient, checked
   against what the PACS knows under the local ID, refused on a mismatch unless forced;
3. what the PACS already holds (same SOP Instance UID) is left out and named (C-FIND, IMAGE level);
4. every other instance is read again through the descriptor inspection opened, at most the size
   inspected, and refused if it is no longer what was inspected (the upload folder is the
   partner's, who may rewrite a file meanwhile): another size, or another SOP Instance UID,
   Study Instance UID or PatientID; then sent (C-STORE) and its status kept;
5. only if every instance is in the PACS afterwards (there before, or stored now and listed by a
   C-FIND after the C-STORE: a PACS may answer success and keep nothing), the upload moves
   to imported/<account>/ (exchange.imported); otherwise it stays, and running the same command
   again sends what is missing;
6. one `pacs-import` audit record, whatever the outcome.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset

from exchange import auditlog, locks, paths, untrusted
from exchange.dicom.dicomfiles import READ_ERRORS, Instance
from exchange.dicom.media import inspect_media
from exchange.errors import FAILED, REFUSED
from exchange.imported import NotMoved, UploadPlace, move_imported, upload_place
from exchange.invoker import Invoker
from exchange.layout import Layout
from exchange.pacs import reconcile, store
from exchange.pacs.network import PacsError, describe
from exchange.pacs.query import STUDY_UID, StudyQuery
from exchange.site import Dicom

CHECKED = ("SOPInstanceUID", "StudyInstanceUID", "PatientID")  # must be as inspected


class ImportFailed(PacsError):
    """The import was refused or did not complete; the message says what was sent and what is left."""


class Changed(Exception):
    """An instance is no longer what was inspected."""


@dataclass
class Imported:
    """How an import went, for the summary and the audit line."""

    pacs: str
    path: str  # as staff named it (printable)
    place: UploadPlace | None = None
    instances: int = 0
    studies: list[str] = field(default_factory=list)
    received_patients: list[str] = field(default_factory=list)
    reconciliation: reconcile.Reconciliation | None = None
    stored: int = 0
    warnings: Counter[str] = field(default_factory=Counter)  # status named -> instances
    duplicates: int = 0  # already in the PACS: not sent
    repeated: list[str] = field(default_factory=list)  # a second file of one SOP Instance UID in the upload
    failed: list[str] = field(default_factory=list)  # "file: why"
    not_sent: int = 0  # after a stop: neither sent nor already there
    notes: list[str] = field(default_factory=list)  # what the reconciliation could not write (once each)
    unreached: list[str] = field(default_factory=list)  # why an association to send on failed
    sending: bool = False  # past the checks: instances may be in the PACS now
    moved_to: str | None = None

    @property
    def complete(self) -> bool:
        return not self.failed and not self.not_sent


def import_upload(
    layout: Layout,
    dicom: Dicom,
    path: Path,
    pacs: str | None,
    who: Invoker | None,
    patient_id: str | None = None,
    force_reconcile: bool = False,
    say: Callable[[str], None] = print,
    progress: Callable[[str, int, int], None] = lambda stage, done, total: None,
) -> Imported:
    """Import the upload at `path` (see the module's text); ImportFailed (or PacsError) unless every
    instance is in the PACS afterwards. The audit record is written whatever happens."""
    name, node = dicom.node(pacs)
    if patient_id is not None:
        StudyQuery(patient_id=patient_id)  # a local ID that cannot be asked for exactly: said before anything is read
    result = Imported(name, untrusted.printable(path), place=upload_place(layout, str(path)))
    try:
        with _one_at_a_time(say), contextlib.ExitStack() as keep:
            report = inspect_media(path, layout.policy.accounts.max_folder_depth, who, keep=keep)
            if report.problems:
                raise ImportFailed(
                    f"{result.path}: refused by inspection, nothing was sent:\n"
                    + "\n".join(f"  PROBLEM: {problem}" for problem in report.problems)
                )
            if unfiled := [i.source.label for i in report.instances if not _fileable(i.header)]:
                raise ImportFailed(
                    f"{result.path}: refused, nothing was sent: a PACS cannot file an instance without a valid "
                    f"Study and Series Instance UID: {', '.join(unfiled[:10])}{' ...' if len(unfiled) > 10 else ''}"
                )
            instances = _unique(report.instances, result)
            if not instances:
                raise ImportFailed(f"{result.path}: no DICOM instances in it; nothing was sent", status=REFUSED)
            result.instances = len(instances)
            result.studies = sorted({str(i.header.get("StudyInstanceUID", "")) for i in instances})
            result.received_patients = sorted({str(i.header.get("PatientID", "")) for i in instances})
            say(f"{result.path}: {len(instances)} DICOM instances of {len(result.studies)} studies, inspected: ok")
            for line in result.repeated:
                say(f"  left out (a second file of one instance): {line}")
            if patient_id is not None:
                received = reconcile.received_patient([i.header for i in instances])
                known = store.patient_in_pacs(name, node, dicom, patient_id)
                result.reconciliation = reconcile.decide(
                    patient_id, received, known, dicom.issuer_of_patient_id, force_reconcile, dicom.ae_title
                )
                _say_reconciliation(result.reconciliation, say)
            progress("asking the PACS what it holds", 0, 0)
            held = store.instances_in_pacs(name, node, dicom, {_series(i) for i in instances})
            to_send = [i for i in instances if i.header["SOPInstanceUID"] not in held]
            result.duplicates = len(instances) - len(to_send)
            if result.duplicates:
                say(f"  {result.duplicates} instances already in {describe(name, node)}: not sent again")
            result.sending = True
            stored = _send(name, node, dicom, to_send, result, say, progress)
            _confirm(name, node, dicom, stored, result, say)
            if result.complete:
                _move(layout, report.top_fd, result, say)
    except BaseException as error:
        _audit(result, dicom, error)
        raise
    _audit(result, dicom)
    if not result.complete:
        raise ImportFailed(_incomplete(result, name, node), status=FAILED)
    return result


@contextlib.contextmanager
def _one_at_a_time(say: Callable[[str], None]):
    """One import at a time: two of the same upload would both send it."""
    try:
        with locks.held(paths.PACS_IMPORT_LOCK, wait=False, folder=paths.TOOL_RUN_DIR):
            yield
            return
    except locks.Busy:
        pass
    say("another import into PACS is running; waiting for it to end ...")
    with locks.held(paths.PACS_IMPORT_LOCK, wait=True, folder=paths.TOOL_RUN_DIR):
        yield


def _fileable(header: dict) -> bool:
    return all(STUDY_UID.match(str(header.get(key, ""))) for key in ("StudyInstanceUID", "SeriesInstanceUID"))


def _unique(instances: list[Instance], result: Imported) -> list[Instance]:
    """One instance per SOP Instance UID; a second file of the same one is named and left out."""
    first: dict[str, Instance] = {}
    for instance in instances:
        uid = instance.header["SOPInstanceUID"]
        if uid in first:
            result.repeated.append(f"{instance.source.label}: same SOP Instance UID as {first[uid].source.label}")
        else:
            first[uid] = instance
    return list(first.values())


def _say_reconciliation(plan: reconcile.Reconciliation, say: Callable[[str], None]) -> None:
    shown = untrusted.printable
    say(
        f"  reconciled: patient {shown(plan.received_id)} is filed as local patient {shown(plan.local_id)}"
        + (f" (issuer {shown(plan.issuer)})" if plan.issuer else "")
        + "; the received ID is kept in OtherPatientIDsSequence"
    )
    for difference in plan.differences:
        say(f"  FORCED (--force-reconcile) despite: {difference}")
    for note in plan.notes:
        say(f"  note: {note}")


def read_inspected(instance: Instance) -> Dataset:
    """The instance, read again through the descriptor inspection opened, at most the size
    inspected; Changed if it is not what was inspected."""
    source = instance.source
    try:
        if source.fd is not None and os.fstat(source.fd).st_size != source.size:
            raise Changed(f"its size is now {os.fstat(source.fd).st_size} bytes, {source.size} when inspected")
        with source.open() as handle:
            data = handle.read(source.size + 1)  # a zip member is checked against its CRC at its end
    except READ_ERRORS as error:
        raise Changed(f"cannot be read as inspected ({untrusted.printable(error)})") from None
    if len(data) != source.size:
        raise Changed(f"{len(data)} bytes read, {source.size} when inspected")
    try:
        dataset = dcmread(io.BytesIO(data))
    except Exception as error:  # noqa: BLE001 (the sender's file: anything may be wrong with it now)
        raise Changed(f"no longer readable DICOM ({untrusted.printable(error) or type(error).__name__})") from None
    for keyword in CHECKED:
        now, then = str(dataset.get(keyword, "")), str(instance.header.get(keyword, ""))
        if now != then:
            raise Changed(
                f"its {keyword} is now {untrusted.printable(now)!r}, {untrusted.printable(then)!r} when inspected"
            )
    syntax = str(dataset.file_meta.get("TransferSyntaxUID", "")) if hasattr(dataset, "file_meta") else ""
    if syntax != instance.transfer_syntax or str(dataset.get("SOPClassUID", "")) != instance.header["SOPClassUID"]:
        raise Changed("its SOP class or transfer syntax is not the one inspected")
    return dataset


def _send(name, node, dicom: Dicom, instances: list[Instance], result: Imported, say, progress) -> list[Instance]:
    """C-STORE of every instance, grouped by presentation context; stops at the first changed file.
    A group whose association fails is named and left; the other groups still go. What the PACS
    answered success (or a warning) for."""
    keys = {id(i): (i.header["SOPClassUID"], i.transfer_syntax) for i in instances}
    answered: set[int] = set()
    stored_ones: list[Instance] = []

    def dataset_of(instance: Instance) -> Dataset:
        try:
            dataset = read_inspected(instance)
        except Changed as change:
            answered.add(id(instance))
            result.failed.append(f"{instance.source.label}: changed since it was inspected: {change}")
            say(f"  REFUSED: {result.failed[-1]}; nothing more is sent")
            raise
        if result.reconciliation is not None:
            for line in reconcile.coerce(dataset, result.reconciliation):
                if line not in result.notes:
                    result.notes.append(line)
                    say(f"  note: {line}")
        return dataset

    def done(instance: Instance, stored: store.Stored) -> None:
        answered.add(id(instance))
        progress("storing into PACS", len(answered), len(instances))
        label = instance.source.label
        if stored.ok:
            stored_ones.append(instance)
            result.stored += 1
        if stored.outcome == "warning":
            result.warnings[stored.detail] += 1
            say(f"  stored with a warning: {label}: {stored.detail}")
        elif not stored.ok:
            result.failed.append(f"{label}: {stored.detail}")
            say(f"  NOT STORED: {label}: {stored.detail}")

    for group in store.context_groups(keys.values()):
        members = set(group)
        items = [(i, keys[id(i)]) for i in instances if keys[id(i)] in members]
        try:
            store.store_group(name, node, dicom, group, items, dataset_of, done)
        except Changed:
            break
        except PacsError as error:  # no association for this group: its instances were not sent
            result.unreached.append(untrusted.printable(error))
            left = [i for i, _key in items if id(i) not in answered]
            answered.update(id(i) for i in left)
            result.failed += [f"{i.source.label}: not sent (no association, below)" for i in left]
            say(f"  NOT SENT: {len(left)} instances: {result.unreached[-1]}")
    result.not_sent = len(instances) - len(answered)
    return stored_ones


def _confirm(name, node, dicom: Dicom, stored: list[Instance], result: Imported, say) -> None:
    """What the PACS answered success for, asked for again (C-FIND): one it does not list is not
    counted as in the PACS (a PACS may say success and keep nothing, or not yet)."""
    if not stored:
        return
    listed = store.instances_in_pacs(name, node, dicom, {_series(i) for i in stored})
    for instance in stored:
        if instance.header["SOPInstanceUID"] not in listed:
            result.stored -= 1
            result.failed.append(
                f"{instance.source.label}: the PACS answered success but does not list it (C-FIND) afterwards"
            )
            say(f"  NOT CONFIRMED: {result.failed[-1]}")


def _series(instance: Instance) -> tuple[str, str]:
    return str(instance.header.get("StudyInstanceUID", "")), str(instance.header.get("SeriesInstanceUID", ""))


def _move(layout: Layout, top_fd: int | None, result: Imported, say) -> None:
    if result.place is None:
        say(f"  not moved: {result.path} is not in an account's upload folder; it stays where it is")
        return
    try:
        result.moved_to = move_imported(layout, result.place, os.fstat(top_fd))
    except NotMoved as why:
        say(f"  not moved: {why}")
        return
    say(f"  moved to {untrusted.printable(result.moved_to)} (kept there for staff until retention removes it)")


def _incomplete(result: Imported, name, node) -> str:
    missing = len(result.failed) + result.not_sent
    shown = "\n".join(f"  {line}" for line in result.failed[:20])
    more = f"\n  ... and {len(result.failed) - 20} more" if len(result.failed) > 20 else ""
    unreached = "".join(f"\n  no association: {why}" for why in dict.fromkeys(result.unreached))
    if result.not_sent:
        unreached += f"\n  {result.not_sent} more not sent: the import stopped there"
    return (
        f"{describe(name, node)}: the import of {result.path} is incomplete: {missing} of {result.instances} instances "
        f"are not in the PACS ({result.stored} stored now, {result.duplicates} there before):\n{shown}{more}{unreached}\n"
        f"The upload stays where it is. Once the cause is fixed, run the same command again: what the PACS "
        "holds now is not sent twice."
    )


def _outcome(result: Imported, error: BaseException | None) -> str:
    """refused or failed (nothing sent), imported (every instance in the PACS), incomplete, interrupted."""
    if isinstance(error, KeyboardInterrupt | SystemExit):
        return "interrupted"
    if result.sending:
        return "imported" if error is None and result.complete else "incomplete"
    return "refused" if isinstance(error, ImportFailed | reconcile.ReconcileError) else "failed"


def _audit(result: Imported, dicom: Dicom, error: BaseException | None = None) -> None:
    node = dicom.pacs[result.pacs]
    plan = result.reconciliation
    auditlog.record(
        "pacs-import",
        pacs=result.pacs,
        pacs_ae=node.ae_title,
        path=result.path,
        account=result.place.account if result.place else None,
        by=auditlog.actor(),
        studies=result.studies,
        patients={"received": result.received_patients, "local": plan.local_id if plan else None},
        instances=result.instances,
        stored=result.stored,
        warnings=sum(result.warnings.values()),
        duplicates=result.duplicates,
        failed=len(result.failed),
        not_sent=result.not_sent,
        reconciled=plan.fields() if plan else False,
        outcome=_outcome(result, error),
        **({"moved_to": result.moved_to} if result.moved_to else {}),
        **({"detail": untrusted.printable(error)} if error is not None else {}),
    )
