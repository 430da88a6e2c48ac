"""The access trail as the tools use it: records appended (chained, fsynced, then indexed),
queried through the index, verified against the chain, compressed and removed by month.

One writer at a time (TRAIL_LOCK); readers take no lock. The chain is appended to before the
index is committed: a crash between the two leaves lines beyond the index, which the next
writer indexes (and takes the ingest positions from their records' `source`), so a record is
never lost and never written twice.
"""

from __future__ import annotations

import contextlib
import datetime
import gzip
import os
import shutil
import stat
import sys
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from exchange import locks, paths
from exchange.errors import ExchangeError
from exchange.trail import chain, index
from exchange.trail.record import AccessRecord

_REBUILD_BATCH = 10_000


class TrailError(ExchangeError):
    """The trail's folder or files are not as they must be; the message says what."""


@dataclass(frozen=True)
class PackageManifest:
    """What a package held, from its package-made record: downloads of it are mapped by it."""

    account: str
    name: str
    sha256: str
    size: int
    patient_ids: tuple[str, ...]
    study_uids: tuple[str, ...]
    made: str  # UTC ISO


@dataclass(frozen=True)
class Break:
    file: str  # e.g. "2026-11.jsonl.gz", or the index ("index.sqlite", line 0)
    line: int  # 1-based line in that file; 0: the file as a whole
    problem: str


INDEX_MISSING = "index missing: the end of the chain cannot be checked against it"


@dataclass(frozen=True)
class Verified:
    records: int
    months: list[str]
    breaks: list[Break]

    @property
    def intact(self) -> bool:
        return not self.breaks


def manifest(record: AccessRecord) -> PackageManifest:
    details = record.details
    return PackageManifest(
        account=record.account or "",
        name=str(details.get("package", "")),
        sha256=str(details.get("sha256", "")),
        size=int(details.get("bytes") or 0),
        patient_ids=record.patient_ids,
        study_uids=record.study_uids,
        made=record.time,
    )


def _month(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m")


def _source_position(source: str | None) -> tuple[str, str] | None:
    """("<log>", "<inode>:<offset>") of a record's source "<log>:<inode>:<offset>"."""
    if not source:
        return None
    parts = source.rsplit(":", 2)
    return (parts[0], f"{parts[1]}:{parts[2]}") if len(parts) == 3 else None


def _last(lines: Iterator[bytes]) -> bytes | None:
    last = None
    for last in lines:  # noqa: B007 (the last one is wanted)
        pass
    return last


class Trail:
    def __init__(
        self,
        folder: str = paths.TRAIL_DIR,
        run_dir: str = paths.TOOL_RUN_DIR,
        *,
        clock: Callable[[], datetime.datetime] | None = None,
    ) -> None:
        self.folder = folder
        self.run_dir = run_dir
        self.clock = clock or (lambda: datetime.datetime.now(datetime.UTC))
        self.index_path = os.path.join(folder, paths.TRAIL_INDEX)

    def _open_folder(self, create: bool) -> int | None:
        """The folder's descriptor, checked to be this user's (root's) and 0700; None if missing."""
        if create:
            with contextlib.suppress(FileExistsError):
                os.mkdir(self.folder, 0o700)
        try:
            fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as error:
            raise TrailError(f"{self.folder}: cannot open the trail's folder: {error.strerror}") from None
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            os.close(fd)
            raise TrailError(f"{self.folder}: owned by uid {st.st_uid}, not root: the trail is root's alone")
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.fchmod(fd, 0o700)
        return fd

    @contextlib.contextmanager
    def writing(self) -> Iterator[TrailWriter]:
        """The one writer: waits for the lock, makes the folder if needed, brings the index up to the chain."""
        with locks.held(paths.TRAIL_LOCK, wait=True, folder=self.run_dir):
            fd = self._open_folder(create=True)
            assert fd is not None
            try:
                lost = not os.path.exists(self.index_path) and bool(chain.month_files(fd))
                connection = index.connect(self.index_path)
                try:
                    writer = TrailWriter(self, fd, connection)
                    writer._recover()
                    if lost:
                        self._rebuilt(fd, connection)
                    yield writer
                finally:
                    connection.close()
            finally:
                os.close(fd)

    def _rebuilt(self, folder_fd: int, connection: Any) -> None:
        """A lost index, rebuilt from the chain, is said: what the chain lost at its end before
        (the last lines cut, the last month removed) the index can no longer show, so the
        rebuild itself must (the command's stderr and the audit log, `trail-index-rebuilt`)."""
        from exchange import auditlog

        records = connection.execute("SELECT count(*) FROM records").fetchone()[0]
        last = index.tail(connection)
        print(
            f"warning: the trail's index {self.index_path} was missing and is rebuilt from the chain "
            f"({records} records): a cut end of the chain can no longer be found by trail verify",
            file=sys.stderr,
        )
        auditlog.record(
            "trail-index-rebuilt",
            by=auditlog.actor(),
            records=records,
            last=last.n if last else 0,
            months=[month for month, _ in chain.month_files(folder_fd)],
        )

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Any]:
        """A read-only index connection; None if there is no trail yet. A lost index is rebuilt first (and said)."""
        fd = self._open_folder(create=False)
        if fd is None:
            yield None
            return
        os.close(fd)
        if not os.path.exists(self.index_path):
            with self.writing():
                pass
        connection = index.connect(self.index_path, read_only=True)
        try:
            yield connection
        finally:
            connection.close()

    def query(
        self,
        *,
        patient_id: str | None = None,
        account: str | None = None,
        actor: str | None = None,
        events: Collection[str] | None = None,
        since: datetime.datetime | None = None,
        until: datetime.datetime | None = None,
    ) -> list[AccessRecord]:
        """Records by event time ascending; since inclusive, until exclusive (aware datetimes)."""
        for moment in (since, until):
            if moment is not None:
                index.time_key(moment)  # ValueError on a naive time, before anything is read
        with self._reading() as connection:
            if connection is None:
                return []
            return index.query(
                connection,
                patient_id=patient_id,
                account=account,
                actor=actor,
                events=events,
                since=since,
                until=until,
            )

    def packages(self, account: str) -> list[PackageManifest]:
        """Every package made for the account, oldest first."""
        with self._reading() as connection:
            if connection is None:
                return []
            return [manifest(record) for record in index.package_rows(connection, account)]

    def verify(self) -> Verified:
        """Every month file read in order, each line's hash checked against the next line and the
        index. Under the writer's lock: an append or a compression under way is no break."""
        with locks.held(paths.TRAIL_LOCK, wait=True, folder=self.run_dir):
            return self._verify()

    def _verify(self) -> Verified:
        fd = self._open_folder(create=False)
        if fd is None:
            return Verified(0, [], [])
        lost: list[Break] = []
        try:
            start = None
            connection = None
            if os.path.exists(self.index_path):
                connection = index.connect(self.index_path, read_only=True)
            elif chain.month_files(fd):  # the end of the chain is known to the index only
                lost.append(Break(paths.TRAIL_INDEX, 0, INDEX_MISSING))
            try:
                known: Any = ()
                if connection is not None:
                    anchor = index.meta(connection, "start")
                    start = (anchor["n"], anchor["previous"]) if anchor else None
                    known = connection.execute("SELECT n, digest FROM records ORDER BY n")
                walk = chain.check(fd, start, known)
            finally:
                if connection is not None:
                    connection.close()
        finally:
            os.close(fd)
        return Verified(walk.records, walk.months, lost + [Break(p.file, p.line, p.problem) for p in walk.problems])

    def months(self) -> list[str]:
        """ "YYYY-MM", oldest first."""
        fd = self._open_folder(create=False)
        if fd is None:
            return []
        try:
            return [month for month, _ in chain.month_files(fd)]
        finally:
            os.close(fd)

    def month_states(self) -> list[tuple[str, bool]]:
        """("YYYY-MM", compressed) oldest first: what the purge plans by."""
        fd = self._open_folder(create=False)
        if fd is None:
            return []
        try:
            return [(month, name.endswith(".gz")) for month, name in chain.month_files(fd)]
        finally:
            os.close(fd)

    def remove_months_before(self, first_kept: str) -> list[str]:
        """Older month files and their index rows removed (the retention); the removed months."""
        with self.writing() as writer:
            return writer._remove_months_before(first_kept)

    def compress_ended_months(self, now: datetime.datetime) -> list[str]:
        """Months ended before `now` gzipped (then immutable); the compressed months."""
        with self.writing() as writer:
            return writer._compress_before(_month(now))


class TrailWriter:
    """Appends under the trail's lock; made by Trail.writing()."""

    def __init__(self, trail: Trail, folder_fd: int, connection: Any) -> None:
        self._trail = trail
        self._fd = folder_fd
        self._db = connection
        self._n = 0  # the last sequence number given, in the chain or the index
        self._previous = chain.GENESIS  # the hash of the chain's last trail line
        self._month: str | None = None  # the last month file
        self._lines = 0  # lines in that file

    # -- recovery --

    def _recover(self) -> None:
        """Index the chain's lines beyond the index; learn where the chain ends."""
        tail = index.tail(self._db)
        anchor = index.meta(self._db, "start")
        if anchor:
            self._n, self._previous = anchor["n"] - 1, anchor["previous"]
        files = chain.month_files(self._fd)
        if not files:
            if tail:
                self._n = max(self._n, tail.n)
            return
        month, name = files[-1]
        if tail and tail.month == month:
            # A compressed last month (a new month with no record yet) is unzipped, not decoded.
            last = chain.last_line(self._fd, name) if not name.endswith(".gz") else _last(chain.lines(self._fd, name))
            decoded = chain.decode(last) if last is not None else None
            if last is not None and decoded and decoded[0] == tail.n and chain.digest(last) == tail.digest:
                self._n, self._previous, self._month, self._lines = tail.n, tail.digest, month, tail.line
                return
        self._scan(files, tail)

    def _scan(self, files: list[tuple[str, str]], tail: index.Tail | None) -> None:
        indexed_n = tail.n if tail else 0
        rows: list[index.Row] = []
        positions: dict[str, str] = {}
        with index.transaction(self._db):
            for month, name in files:
                if tail and month < tail.month:
                    continue
                number = 0
                for number, line in enumerate(chain.lines(self._fd, name), start=1):
                    decoded = chain.decode(line)
                    if decoded is None:
                        continue  # a write cut short; verify names it, the chain steps over it
                    n, _, data = decoded
                    hashed = chain.digest(line)
                    self._previous = hashed
                    self._n = max(self._n, n)
                    if n <= indexed_n:
                        continue
                    try:
                        record = AccessRecord.from_dict(data)
                    except (KeyError, TypeError, ValueError):
                        continue  # not a record: verify names the line; nothing to index
                    rows.append(index.Row(n, month, number, hashed, record))
                    if (position := _source_position(record.source)) is not None:
                        positions[position[0]] = position[1]
                    if len(rows) >= _REBUILD_BATCH:
                        index.add(self._db, rows)
                        rows = []
                self._month, self._lines = month, number
            index.add(self._db, rows)
            index.set_positions(self._db, positions)
        self._n = max(self._n, indexed_n)

    # -- appending --

    def _current_file(self) -> tuple[int, str, bool]:
        """The descriptor of the month file to append to (the month written in), its month, and
        whether its last line was cut short (a crash mid-write)."""
        month = _month(self._trail.clock())
        if self._month is not None and self._month > month:
            month = self._month  # the clock went back: the files stay in the chain's order
        if month != self._month:
            self._lines = 0
        name = chain.plain_name(month)
        names = set(os.listdir(self._fd))
        if chain.compressed_name(month) in names and name not in names:
            raise TrailError(f"{self._trail.folder}/{chain.compressed_name(month)}: the month written in is compressed")
        new = name not in names
        fd = os.open(name, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=self._fd)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_nlink != 1:
            os.close(fd)
            raise TrailError(f"{self._trail.folder}/{name}: not the trail's own plain file")
        if new:
            os.fsync(self._fd)
            chain.set_flag(self._fd, name, chain.APPEND_ONLY, True)
        torn = st.st_size > 0 and os.pread(fd, 1, st.st_size - 1) != b"\n"
        self._month = month
        return fd, month, torn

    def append(
        self,
        records: Sequence[AccessRecord],
        positions: Mapping[str, str] | None = None,
        state: Mapping[str, Any] | None = None,
    ) -> None:
        """Records chained into the current month file and fsynced, then indexed together with
        the ingest positions and state in one SQLite transaction."""
        rows: list[index.Row] = []
        if records:
            fd, month, torn = self._current_file()
            try:
                data = [b"\n"] if torn else []  # a cut-short line ends; the chain steps over it
                n, previous, number = self._n, self._previous, self._lines  # a cut-short line is counted
                for record in records:
                    n, number = n + 1, number + 1
                    line = chain.encode(n, previous, record.as_dict())
                    previous = chain.digest(line)
                    data.append(line + b"\n")
                    rows.append(index.Row(n, month, number, previous, record))
                view = memoryview(b"".join(data))
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            self._n, self._previous, self._lines = n, previous, number
        with index.transaction(self._db):
            index.add(self._db, rows)
            if rows and rows[0].n == 1:  # the chain's start, kept from its first line on
                index.set_meta(self._db, "start", {"n": 1, "previous": chain.GENESIS})
            index.set_positions(self._db, dict(positions or {}))
            index.set_state(self._db, dict(state or {}))

    def position(self, log: str) -> str | None:
        return index.position(self._db, log)

    def state(self, key: str) -> Any:
        return index.state(self._db, key)

    def package(self, account: str, name: str) -> PackageManifest | None:
        """The latest package of that name made for the account."""
        found = index.package_rows(self._db, account, name)
        return manifest(found[-1]) if found else None

    def packages(self, account: str) -> list[PackageManifest]:
        """Every package made for the account, oldest first."""
        return [manifest(row) for row in index.package_rows(self._db, account)]

    # -- retention --

    def _remove_months_before(self, first_kept: str) -> list[str]:
        """The retention's removal, first written into the chain itself (a `trail-months-removed`
        record naming the months and where the chain now starts: verify checks the start against
        it, with the index or without), then the files, then their index rows."""
        files = chain.month_files(self._fd)
        removed = [month for month, _ in files if month < first_kept]
        if not removed:
            return []
        anchor = None
        for month, name in files:
            if month >= first_kept:
                for line in chain.lines(self._fd, name):
                    if (decoded := chain.decode(line)) is not None:
                        anchor = {"n": decoded[0], "previous": decoded[1]}
                        break
                if anchor is not None:
                    break
        if anchor is None:  # nothing kept: the record itself is the chain's first line
            anchor = {"n": self._n + 1, "previous": self._previous}
        now = self._trail.clock().astimezone(datetime.UTC)
        self.append(
            [
                AccessRecord(
                    time=now.isoformat(timespec="seconds"),
                    event=chain.REMOVED,
                    account=None,
                    actor=None,
                    access_point={"via": "server"},
                    details={"months": removed, "first_kept": first_kept, "start": anchor},
                )
            ]
        )
        for month in removed:
            for file in (chain.plain_name(month), chain.compressed_name(month)):
                with contextlib.suppress(FileNotFoundError), chain.lifted(self._fd, file):
                    os.unlink(file, dir_fd=self._fd)
        os.fsync(self._fd)
        with index.transaction(self._db):
            index.remove_before(self._db, first_kept)
            index.set_meta(self._db, "start", anchor)
        return removed

    def _compress_before(self, current: str) -> list[str]:
        compressed: list[str] = []
        names = set(os.listdir(self._fd))
        for month, name in chain.month_files(self._fd):
            if month >= current or name.endswith(".gz"):
                continue
            target = chain.compressed_name(month)
            if target in names and self._same(name, target):
                pass  # a compression cut short after its rename: only the plain file is left to go
            else:
                self._write_compressed(name, target, replace=target in names)
            with chain.lifted(self._fd, name):
                os.unlink(name, dir_fd=self._fd)
            os.fsync(self._fd)
            if self._month == month:
                self._month, self._lines = None, 0
            compressed.append(month)
        return compressed

    def _same(self, plain: str, compressed: str) -> bool:
        try:
            return list(chain.lines(self._fd, plain)) == list(chain.lines(self._fd, compressed))
        except (OSError, EOFError, gzip.BadGzipFile):
            return False

    def _write_compressed(self, name: str, target: str, replace: bool) -> None:
        part = f".{target}.part"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(part, dir_fd=self._fd)
        out = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=self._fd)
        source = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._fd)
        with open(source, "rb") as reading, open(out, "wb") as raw:
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as packed:
                shutil.copyfileobj(reading, packed, 1 << 20)
            raw.flush()
            os.fsync(raw.fileno())
        if replace:  # a broken earlier attempt: its flag lifted to be replaced
            chain.set_flag(self._fd, target, chain.IMMUTABLE, False)
        os.rename(part, target, src_dir_fd=self._fd, dst_dir_fd=self._fd)
        os.fsync(self._fd)
        chain.set_flag(self._fd, target, chain.IMMUTABLE, True)
