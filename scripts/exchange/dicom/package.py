"""Study packages: one zip with a DICOMDIR, the DICOM files, README.TXT, INDEX.HTM and the
site's viewer, written straight into an account's download folder.

Layout (DICOM PS3.12 Annex V, IHE PDI): DICOMDIR at the root, the instances under DICOM/
with conformant File IDs, copied byte for byte. Entries whose pixel data is already
compressed (JPEG, JPEG-LS, JPEG 2000, RLE, video) are stored; the rest are deflated at a
fast level. The zip is streamed (bounded memory, ZIP64 when needed) as a nameless file in the download
folder (O_TMPFILE), hashed while it is written, and named when complete, so a recipient never
sees half a package. Staff may change the download folder: root writes there only through the
folder's descriptor (exchange.safefs), so no name swapped meanwhile redirects it.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import queue
import re
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from exchange import auditlog, handed_in, observe, safefs, untrusted
from exchange.auditlog import actor
from exchange.dicom import previews, webcontent
from exchange.dicom.dicomdir import DicomDirError, Tree, build_tree, dicomdir_bytes, summary
from exchange.dicom.dicomfiles import Scan, Source, scan
from exchange.dicom.zipstream import Entry, SourceError, write_entries
from exchange.errors import REFUSED, ExchangeError
from exchange.invoker import Invoker
from exchange.layout import Layout
from exchange.links import LinkError, LinkStore
from exchange.messaging.messages import Messages
from exchange.policy import Policy

DEFLATE_LEVEL = 1  # fast: DICOM pixel data gains little from harder work


class PackageError(ExchangeError):
    """Nothing was written; the message says why."""


@dataclass
class Package:
    path: Path
    sha256: str
    files: int
    bytes: int
    tree: Tree
    scan: Scan
    views: list[webcontent.SeriesView]


class _HashingWriter:
    """The zip's file, hashed as it is written, on a thread of its own (hashlib releases the
    GIL). Unseekable on purpose: zipfile then streams every entry with a data descriptor and
    never goes back, so the hash is the file's."""

    WRITEBACK_EVERY = 32 << 20

    def __init__(self, handle) -> None:
        self.handle = handle
        self.position = 0
        self._written_back = 0
        self._digest = hashlib.sha256()
        self._queue: queue.Queue[bytes | tuple[int, int] | None] = queue.Queue(maxsize=16)
        self._thread = threading.Thread(target=self._hash, name="sha256", daemon=True)
        self._thread.start()

    def _hash(self) -> None:
        while (item := self._queue.get()) is not None:
            if isinstance(item, bytes):
                self._digest.update(item)
                continue
            source, size = item  # a file the kernel copied: hashed from the page cache
            done = 0
            while done < size and (chunk := os.pread(source, min(1 << 20, size - done), done)):
                self._digest.update(chunk)
                done += len(chunk)

    def copy_file(self, source: int, size: int, label: str) -> None:
        """Append a whole open file by the kernel (sendfile: no copy through Python)."""
        self.handle.flush()
        sent = 0
        while sent < size:
            count = os.sendfile(self.handle.fileno(), source, sent, size - sent)
            if count == 0:
                raise OSError(f"{label}: shorter than its {size} bytes (changed while packing?)")
            sent += count
        self._queue.put((source, size))
        self.position += size

    def write(self, data) -> int:
        data = bytes(data)
        self._queue.put(data)
        self.position += len(data)
        written = self.handle.write(data)
        if self.position - self._written_back >= self.WRITEBACK_EVERY:
            # Start writing to disk now, not all at the final fsync; and keep the page cache
            # for the server's other work (DONTNEED starts writeback of dirty pages on Linux).
            self.handle.flush()
            os.posix_fadvise(
                self.handle.fileno(), self._written_back, self.position - self._written_back, os.POSIX_FADV_DONTNEED
            )
            self._written_back = self.position
        return written

    def tell(self) -> int:
        return self.position

    def seekable(self) -> bool:
        return False

    def flush(self) -> None:
        self.handle.flush()

    def hexdigest(self) -> str:
        self._queue.put(None)
        self._thread.join()
        return self._digest.hexdigest()


def download_folder(policy: Policy, account: str, now: float | None = None) -> Path:
    """The account's download folder; the account must be a partner or link account that can
    still log in: a package for a locked partner or an ended link would reach nobody."""
    layout = Layout(policy)
    kind = layout.kind_of(account)
    if not kind:
        raise PackageError(
            f"{account}: no partner or link account of that name (see `exchange link list`)", status=REFUSED
        )
    now = time.time() if now is None else now
    expiry = (observe.shadow().get(account) or {}).get("expire")
    if expiry is not None and expiry <= now // 86400:  # shadow's days
        since = observe.shadow_day(expiry).date().isoformat()
        if kind == "partner":
            raise PackageError(
                f"partner {account} is locked (account expired {since}) and cannot log in; nothing was written",
                status=REFUSED,
            )
        raise PackageError(
            f"link {account} has ended (account expired {since}) and cannot log in; nothing was written "
            "(issue a new link: `exchange link issue`)",
            status=REFUSED,
        )
    # A link ends at its record's time; its account expires at the next day (shadow counts days).
    end = link_end(account) if kind == "link" else None
    if end is not None and end.timestamp() <= now:
        raise PackageError(
            f"link {account} has ended ({end.isoformat()}) and cannot log in; nothing was written "
            "(issue a new link: `exchange link issue`)",
            status=REFUSED,
        )
    return Path(layout.chroot(kind, account)) / policy.accounts.download_folder


def link_end(account: str, store: LinkStore | None = None) -> datetime.datetime | None:
    """A link account's end, when its account and files go whatever their age (README.TXT says
    so); None for a partner (no link record), or a link whose record cannot be read."""
    try:
        record = (store or LinkStore()).get(account)
    except LinkError:
        return None
    return record.expires if record else None


def examine(
    handed: handed_in.HandedIn, strict: bool, allow_multiple_patients: bool, progress: Callable[[str], None]
) -> tuple[Scan, Tree]:
    """Scan what was handed in and build the directory tree, or refuse with every reason."""
    found = scan(handed, progress)
    problems = [f"  {line}" for line in found.broken]
    if strict:
        problems += [f"  {label}: not DICOM (--strict)" for label in found.not_dicom]
        problems += [f"  {line} (--strict)" for line in found.duplicates]
    if problems:
        raise PackageError("refused, nothing was written:\n" + "\n".join(problems))
    if not found.instances:
        raise PackageError("no DICOM files found in " + ", ".join(handed.named))
    try:
        tree = build_tree(found.instances)
    except DicomDirError as error:
        raise PackageError(f"refused, nothing was written: {untrusted.printable(error)}") from None
    names = {
        patient_id: sorted(
            {str(i.header.get("PatientName") or "") for i in found.instances if i.header.get("PatientID") == patient_id}
        )
        for patient_id in tree.patients
    }
    clashing = {patient_id: n for patient_id, n in names.items() if len(n) > 1}
    if clashing and not allow_multiple_patients:
        detail = untrusted.printable("; ".join(f"PatientID {pid}: {' / '.join(n)}" for pid, n in clashing.items()))
        raise PackageError(
            f"refused: one PatientID with different patient names ({detail}); the same ID from two sources may be "
            "two people (--allow-multiple-patients if this is one patient)"
        )
    if len(tree.patients) > 1 and not allow_multiple_patients:
        ids = untrusted.printable(", ".join(sorted(tree.patients)))
        raise PackageError(
            f"refused: the images belong to {len(tree.patients)} patients (PatientID {ids}); a package for one "
            "patient must never carry another's images (--allow-multiple-patients if this is intended)"
        )
    return found, tree


def _entry(name: str, stored: bool, when: datetime.datetime) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=when.timetuple()[:6])
    info.external_attr = 0o644 << 16
    info.compress_type = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
    # ZipInfo's level: `compress_level` from Python 3.13, `_compresslevel` before.
    setattr(info, "compress_level" if hasattr(info, "compress_level") else "_compresslevel", DEFLATE_LEVEL)
    return info


def _viewer_sources(
    viewer: Path | None, windows_viewer: str | None, who: Invoker | None, max_depth: int, keep: contextlib.ExitStack
) -> list[tuple[str, Source]]:
    """The viewer folder's files, opened with `who`'s rights; `windows_viewer` (site data: what
    the messages tell recipients to start) must be a file at its root, or the package is refused."""
    if viewer is None:
        return []
    if not windows_viewer:
        raise PackageError(
            f"viewer folder {viewer}: the site names no windows_viewer, so the messages tell recipients the "
            "package holds no viewer; set windows_viewer in the site data; nothing was written"
        )
    try:
        handed = keep.enter_context(handed_in.open_named([viewer], who, max_depth))
    except handed_in.MissingPaths:
        raise PackageError(f"viewer folder {viewer}: no such folder; nothing was written") from None
    if any(file.relative == "" for file in handed.files):
        raise PackageError(f"viewer folder {viewer}: not a directory; nothing was written")
    if handed.problems:
        lines = "\n".join(f"  {unusable.label}: {unusable.problem}" for unusable in handed.problems)
        raise PackageError(f"viewer folder {viewer}: refused, nothing was written:\n{lines}")
    if windows_viewer not in {file.relative for file in handed.files}:
        raise PackageError(
            f"viewer folder {viewer}: no {windows_viewer} at its root, which the messages tell recipients to start "
            "(site windows_viewer); nothing was written"
        )
    found = []
    for file in handed.files:
        relative = file.relative
        own = ("DICOM/", f"{webcontent.FOLDER}/")
        if relative.upper() in ("DICOMDIR", "README.TXT", "INDEX.HTM") or relative.upper().startswith(own):
            raise PackageError(
                f"viewer folder {viewer}: {untrusted.printable(relative)} would collide with the package's own files"
            )
        found.append((relative, Source.file(file)))
    return found


def package_name(label: str, now: datetime.datetime) -> str:
    clean = re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-.")[:60] or "study"
    return f"{clean}-{now:%Y%m%d-%H%M%S}.zip"


def make_package(
    policy: Policy,
    messages: Messages,
    account: str,
    folder: Path,
    paths: list[Path],
    label: str = "",
    viewer: Path | None = None,
    strict: bool = False,
    allow_multiple_patients: bool = False,
    progress: Callable[[str, int, int], None] = lambda stage, done, total: None,
    link_ends: datetime.datetime | None = None,
    who: Invoker | None = None,
    viewer_who: Invoker | None = None,
) -> Package:
    """`paths` are opened with `who`'s rights, `viewer` with `viewer_who`'s (None: the tool's
    own); `link_ends`: for a link account, the link's end, when its files go whatever their age."""
    depth = policy.accounts.max_folder_depth
    with contextlib.ExitStack() as keep:  # every handed-in file stays open until the zip is written
        viewer_files = _viewer_sources(viewer, messages.site.windows_viewer, viewer_who, depth, keep)
        try:
            handed = keep.enter_context(handed_in.open_named(paths, who, depth))
        except handed_in.MissingPaths as missing:
            raise PackageError(str(missing)) from None
        except OSError as error:  # more files than the system lets one process open
            raise PackageError(f"refused, nothing was written: {untrusted.printable(error)}") from None
        found, tree = examine(handed, strict, allow_multiple_patients, lambda label: progress("reading headers", 0, 0))
        return _write(policy, messages, account, folder, label, found, tree, viewer_files, progress, link_ends)


def _write(
    policy: Policy,
    messages: Messages,
    account: str,
    folder: Path,
    label: str,
    found: Scan,
    tree: Tree,
    viewer_files: list[tuple[str, Source]],
    progress: Callable[[str, int, int], None],
    link_ends: datetime.datetime | None,
) -> Package:
    now = datetime.datetime.now(messages.site.zone)  # the name, the zip's times and README: the site's clock
    context = {"patients": summary(tree), "label": label, "now": now, "policy": policy, "ends": link_ends}
    try:
        directory = dicomdir_bytes(tree)
    except DicomDirError as error:
        raise PackageError(f"refused, nothing was written: {untrusted.printable(error)}") from None
    readme = messages.document("package-readme.txt.j2", viewer=bool(viewer_files), **context)
    documents = {"DICOMDIR": directory, "README.TXT": readme.replace("\n", "\r\n").encode("utf-8")}
    views = webcontent.plan(tree)
    # Forked before any thread of ours starts; renders while the DICOM files are packed.
    with previews.RenderPool(webcontent.jobs(views)) as renderer:
        images = list(tree.images())
        total = sum(image.instance.source.size for image in images)
        visible_name = package_name(label or _patient_label(tree), now)
        try:
            download = safefs.open_dir(str(folder))  # staff may change the folder: everything goes through this
        except OSError as error:
            raise PackageError(f"packing failed, nothing was left: {untrusted.printable(error)}") from None
        package = checksum = None
        published = None
        try:
            # Nameless while written (0600 where it cannot be): nobody reaches half a package.
            package = safefs.NewFile.create(download, 0o600)
            with os.fdopen(os.dup(package.fd), "wb") as handle:
                writer = _HashingWriter(handle)
                with zipfile.ZipFile(writer, "w", allowZip64=True) as archive:
                    for name, data in documents.items():
                        archive.writestr(_entry(name, stored=False, when=now), data)
                    entries = [
                        Entry(_entry("/".join(image.file_id), image.instance.compressed, now), image.instance.source)
                        for image in images
                    ] + [Entry(_entry(relative, stored=False, when=now), source) for relative, source in viewer_files]
                    write_entries(
                        archive, entries, level=DEFLATE_LEVEL, progress=lambda done: progress("packing", done, total)
                    )
                    count = len(renderer.pictures)
                    rendered = renderer.results(lambda done: progress("previews", done, count))
                    for name, jpeg in webcontent.pictures(views, rendered):
                        archive.writestr(_entry(name, stored=True, when=now), jpeg)  # JPEG: stored, read in place
                    shipped = messages.site.windows_viewer if viewer_files else None
                    for name, data in webcontent.documents(messages, views, shipped, **context).items():
                        archive.writestr(_entry(name, stored=False, when=now), data)
                handle.flush()
                os.fsync(handle.fileno())
            # Staff (the group) and the account (other) read it; nobody but root changes it.
            os.fchmod(package.fd, 0o644)
            digest = writer.hexdigest()
            published = _publish(package, download, visible_name)  # complete: the recipient may see it from now on
            checksum = safefs.NewFile.create(download, 0o644)
            os.write(checksum.fd, f"{digest}  {published}\n".encode())
            os.fsync(checksum.fd)
            checksum.publish(f"{published}.sha256")
            size = os.fstat(package.fd).st_size
        except BaseException as error:
            if checksum is not None:
                checksum.discard()
                checksum = None
            if package is not None:  # named, but its checksum could not follow: not a package to offer
                package.discard(published)
                package = None
            if isinstance(error, SourceError):
                raise PackageError(f"refused, nothing was left: {error}") from None
            if isinstance(error, OSError):  # the disk full, a name taken meanwhile: named, not a traceback
                raise PackageError(f"packing failed, nothing was left: {untrusted.printable(error)}") from None
            raise
        finally:
            for new in (package, checksum):
                if new is not None:
                    new.close()
            os.close(download)
        final = folder / published
        studies = [study for patient in tree.patients.values() for study in patient.studies.values()]
        auditlog.record(
            "study-packaged",
            by=actor(),
            account=account,
            package=published,
            sha256=digest,
            patient_ids=sorted(tree.patients),
            study_uids=[study.uid for study in studies],
            accession_numbers=sorted({str(s.header.get("AccessionNumber") or "") for s in studies} - {""}),
            files=len(images),
            bytes=size,
        )
        return Package(final, digest, len(images), size, tree, found, views)


def _publish(package: safefs.NewFile, download: int, name: str) -> str:
    """Give the complete package its visible name, never another's: a second one of the same
    label in the same second gets "-2", and so on; a name whose checksum's name is taken is
    passed over too."""
    stem = name.removesuffix(".zip")
    for attempt in range(1, 100):
        candidate = name if attempt == 1 else f"{stem}-{attempt}.zip"
        if _taken(download, f"{candidate}.sha256"):
            continue
        try:
            package.publish(candidate)  # unlike rename, fails when the name is taken
        except FileExistsError:
            continue
        return candidate
    raise PackageError(f"no free name for {name}; nothing was left")


def _taken(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _patient_label(tree: Tree) -> str:
    patient = next(iter(tree.patients.values()))
    study = next(iter(patient.studies.values()))
    return f"{study.header.get('StudyDate') or 'study'}"
