"""Contact sheets of uploaded studies for the upload notice (policy notices.upload_contact_sheets):
staff see what arrived before they import it, without opening a DICOM viewer.

Why it is made this way:
- No patient image goes out by e-mail, ever: the notice names where the sheet is on the server,
  and only staff can open it there ({accounts.root}/contact-sheets is root:staff 2750, each
  account's folder in it 0750, each sheet 0640 root:staff; partners and link accounts, chrooted
  to their own folders, never reach it).
- Not in the upload folder, even as a hidden file: that folder is its account's, so the sender
  could replace the sheet (a forged first look), and the next notice would announce it as an
  upload. Only root writes in the sheets folder, through descriptors all the same
  (exchange.safefs: each folder opened without following a symlink, the sheet nameless until
  complete, its owner and mode set on the descriptor, never replacing a name).
- Under the retention like everything in the exchange tree: a sheet carries the time of the newest
  file it shows (never a time ahead of now), so the purge removes it together with that upload,
  and the audit's retention control (RET-02) sees it.
- Root decodes nothing: the upload is read as `exchange inspect` reads it (the same caps: 50 GB,
  200x an entry, 200,000 entries; a zip bomb is never inflated, a symlink never followed), and
  the sheet is drawn by exchange.dicom.contactsheet's confined child as `nobody`.
- Bounded: at most MAX_SHEETS sheets a notice, each drawn in at most SHEET_SECONDS (so one sender
  delays the other accounts' notices by minutes at worst, never stops them); each sheet is made
  once (its name holds a digest of the files it shows, so a notice retried after a failed mail
  finds it made); a zip or folder still being uploaded waits for the notice of its last files.
- One bad upload costs only its own sheet: whatever goes wrong is said in that account's notice
  (and, if it is the server's fault, in the job's output), and every notice still goes out.

A sheet is made of each zip file and each folder at the top of the upload folder that holds a
newly announced file; loose files at the top get none (`exchange inspect` checks them).
"""

from __future__ import annotations

import contextlib
import grp
import hashlib
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from exchange import auditlog, paths, safefs, untrusted
from exchange.layout import Layout

MAX_SHEETS = 5  # a notice's; more media are named, for `exchange inspect`
SHEET_SECONDS = 120  # one sheet's drawing, at most (48 tiles of large radiographs take well under a minute)


@dataclass(frozen=True)
class SheetNote:
    """What the notice says of one zip or folder."""

    medium: str  # below the upload folder, as uploaded (the template shows it escaped)
    outcome: str  # "made", "pending", "too-many", "refused", "no-dicom", "failed"
    path: str = ""  # the sheet, when made
    detail: str = ""  # why not, in a few words
    problems: int = 0  # what the check found (the sheet then says "do not import")


def media(new: list) -> list[str]:
    """The zip files and folders at the top of the upload folder that hold a new upload."""
    found: list[str] = []
    for upload in new:
        top, _, below = upload.path.partition("/")
        if (below or top.lower().endswith(".zip")) and top not in found:
            found.append(top)
    return found


def contact_sheets(
    layout: Layout,
    account: str,
    folder: Path,
    uploads: list,
    new: list,
    pending: set[str],
    out: Callable[[str], None],
    failures: list[str],
) -> list[SheetNote]:
    """A sheet of every medium among the new uploads (`uploads`: every settled file of the
    folder; `pending`: the top-level names still being uploaded), each said in a note; a failure
    that is the server's, not the upload's, goes to `failures` too."""
    notes = []
    for index, medium in enumerate(media(new)):
        if index >= MAX_SHEETS:
            notes.append(SheetNote(medium, "too-many", detail=str(MAX_SHEETS)))
            continue
        if medium in pending:
            notes.append(SheetNote(medium, "pending"))
            continue
        files = [u for u in uploads if u.path == medium or u.path.startswith(f"{medium}/")]
        try:
            notes.append(_sheet(layout, account, folder, medium, files, out))
        except Exception as error:  # noqa: BLE001 - one upload's sheet never stops a notice
            shown = untrusted.printable(f"{folder}/{medium}")
            failures.append(f"{account}: contact sheet of {shown} not made: {untrusted.printable(error)}")
            notes.append(SheetNote(medium, "failed", detail="an error on the server (the job's output says which)"))
    return notes


def _name(medium: str, files: list) -> str:
    """The sheet's name: the medium's, tamed, and a digest of what it shows (made once)."""
    shown = sorted([u.path, u.size, u.mtime_ns] for u in files)
    digest = hashlib.sha256(json.dumps(shown).encode("utf-8", "surrogateescape")).hexdigest()[:12]
    clean = re.sub(r"[^A-Za-z0-9._-]+", "-", medium).strip("-.")[:60] or "upload"
    return f"{clean}-{digest}.jpg"


def _sheet(layout: Layout, account: str, folder: Path, medium: str, files: list, out: Callable) -> SheetNote:
    from exchange.dicom import contactsheet
    from exchange.dicom.dicomdir import DicomDirError, build_tree
    from exchange.dicom.media import inspect_media

    if not re.fullmatch(paths.UNIX_NAME, account):
        raise ValueError(f"{account!r} is no account name")  # never: the folders' names are root's
    group = layout.policy.accounts.staff_group
    try:
        staff = grp.getgrnam(group).gr_gid
    except KeyError:
        raise LookupError(f"no group {group} (policy accounts.staff_group) to give the sheet to") from None
    name = _name(medium, files)
    where = f"{layout.contact_sheets_dir()}/{account}/{name}"
    target = _account_folder(layout, account, staff)
    try:
        if safefs.exists(target, name):
            return SheetNote(medium, "made", where)
        with contextlib.ExitStack() as keep:
            report = inspect_media(folder / medium, layout.policy.accounts.max_folder_depth, None, keep=keep)
            problems = len(report.problems)
            if report.bomb:
                return SheetNote(medium, "refused", problems=problems)
            if not report.instances:
                return SheetNote(medium, "no-dicom", problems=problems)
            try:
                tree = build_tree(report.instances)
                sheet = contactsheet.make(
                    tree, f"{account}: {medium}", report.descriptors, None, problems=problems, timeout=SHEET_SECONDS
                )
            except (DicomDirError, contactsheet.SheetError) as error:
                return SheetNote(medium, "failed", detail=untrusted.printable(error), problems=problems)
        newest = min(max(u.mtime_ns for u in files), time.time_ns())
        _write(target, name, sheet.jpeg, staff, newest)
    finally:
        os.close(target)
    out(
        auditlog.record(
            "contact-sheet-made", account=account, medium=untrusted.printable(medium), sheet=where,
            series=sheet.series, by="purge",
        )
    )  # fmt: skip
    return SheetNote(medium, "made", where, problems=problems)


def _account_folder(layout: Layout, account: str, staff: int) -> int:
    """The account's sheets folder (made as needed): root's, group staff, through descriptors."""
    sheets = PurePosixPath(layout.contact_sheets_dir())
    with safefs.opened_dir(str(sheets.parent)) as root:
        top = safefs.make_dir(root, sheets.name, 0, staff, 0o2750)
    try:
        return safefs.make_dir(top, account, 0, staff, 0o750)
    finally:
        os.close(top)


def _write(dir_fd: int, name: str, data: bytes, staff: int, mtime_ns: int) -> None:
    """The sheet, whole, under its name (never replacing one: made by another run meanwhile,
    that one stays)."""
    new = safefs.NewFile.create(dir_fd, 0o640)
    try:
        os.fchown(new.fd, 0, staff)
        os.fchmod(new.fd, 0o640)
        view = memoryview(data)
        while view:
            view = view[os.write(new.fd, view) :]
        os.fsync(new.fd)
        os.utime(new.fd, ns=(mtime_ns, mtime_ns))  # it ages with what it shows
        new.publish(name)
    except FileExistsError:
        new.discard()
        return
    except BaseException:
        new.discard()
        raise
    new.close()
