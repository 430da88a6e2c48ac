"""The index beside the chained files: SQLite, so that a patient's, an account's or a staff
member's records over years are found without reading (and unzipping) every month.

The chain is the record; the index a copy (rebuilt from the chain when lost, and said: see
exchange.trail.store; caught up when behind), except that it alone knows where the chain ended. Each
record's row keeps its canonical JSON (a query reads no month file), its month and line (where
verify and recovery look), and its line's hash (so verify also sees the chain's last line edited
or removed, which no later line would name). Patients are a table of their own, one row per
(patient, record), so a patient is one index lookup. The JSON is deflated with a dictionary of
what every record spells alike (its keys, the events): 440 bytes become about 125.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import sqlite3
import zlib
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from exchange.trail.record import AccessRecord, canonical

# The index's format: an index of another one is dropped and rebuilt from the chain.
FORMAT = 1
# What records spell alike, most alike last (zlib looks back from the end): never to change
# within a FORMAT, or the index could not be read.
_SHARED = (
    "package-made link-issued link-password-resent credentials-issued reminder-sent web-login web-login-failed "
    "sftp-login download upload web-view pacs-retrieve pacs-import file-purged link-revoked link-expired "
    "account-removed trail-read"  # the events of FORMAT 1 as they were: EVENTS may grow, this may not
    + canonical(
        {
            "access_point": {"address": "10.0.0.", "agent": "Mozilla/5.0 (", "auth": "SHA256:", "via": "sftp"},
            "account": "link-",
            "actor": "",
            "details": {
                "bytes": 0, "complete": True, "file": "/download/", "offset": 0, "package": ".zip", "sha256": "",
            },
            "event": "download",
            "local_time": "2026-01-01T00:00:00+01:00",
            "outcome": "ok",
            "patient_ids": [""],
            "source": "audit:",
            "study_uids": ["1.2.826.0.1.3680043."],
            "time": "2026-01-01T00:00:00+00:00",
        }
    )
).encode()  # fmt: skip


def _pack(data: str) -> bytes:
    packer = zlib.compressobj(6, zdict=_SHARED)
    return packer.compress(data.encode()) + packer.flush()


def _unpack(blob: bytes) -> AccessRecord:
    unpacker = zlib.decompressobj(zdict=_SHARED)
    return AccessRecord.from_dict(json.loads(unpacker.decompress(blob) + unpacker.flush()))


SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    n INTEGER PRIMARY KEY,
    month TEXT NOT NULL,
    line INTEGER NOT NULL,
    digest TEXT NOT NULL,
    time TEXT NOT NULL,
    event TEXT NOT NULL,
    account TEXT,
    actor TEXT,
    package TEXT,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS records_time ON records (time);
CREATE INDEX IF NOT EXISTS records_account ON records (account, time);
CREATE INDEX IF NOT EXISTS records_actor ON records (actor, time);
CREATE INDEX IF NOT EXISTS records_package ON records (account, package) WHERE package IS NOT NULL;
CREATE TABLE IF NOT EXISTS patients (
    patient_id TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (patient_id, n)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS positions (log TEXT PRIMARY KEY, position TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def time_key(moment: datetime.datetime) -> str:
    """A sortable UTC text for a time; naive times are refused (whose zone would they be?)."""
    if moment.tzinfo is None:
        raise ValueError(f"{moment.isoformat()}: a time without its zone")
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")


def record_time_key(record: AccessRecord) -> str:
    moment = record.moment
    if moment.tzinfo is None:  # records are UTC
        moment = moment.replace(tzinfo=datetime.UTC)
    return time_key(moment)


@dataclass(frozen=True)
class Row:
    """One chained line as the index keeps it."""

    n: int
    month: str
    line: int
    digest: str
    record: AccessRecord


@dataclass(frozen=True)
class Tail:
    n: int  # the last line's sequence number (0: none yet)
    digest: str
    month: str | None
    line: int  # its line in its month file


def connect(path: str, *, read_only: bool = False) -> sqlite3.Connection:
    if read_only:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    else:
        if not os.path.exists(path):  # root-only before SQLite writes anything into it
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
        connection = sqlite3.connect(path, isolation_level=None)
        connection.execute("PRAGMA journal_mode=WAL")  # readers do not wait for the writer
        connection.execute("PRAGMA synchronous=NORMAL")  # the chain is fsynced; the index can be rebuilt
        connection.executescript(SCHEMA)
        if meta(connection, "format") != FORMAT:
            with transaction(connection):
                if connection.execute("SELECT 1 FROM records LIMIT 1").fetchone():  # another format's: rebuilt
                    connection.execute("DELETE FROM patients")
                    connection.execute("DELETE FROM records")
                set_meta(connection, "format", FORMAT)
    connection.execute("PRAGMA busy_timeout=10000")
    return connection


@contextlib.contextmanager
def transaction(connection: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield connection
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def add(connection: sqlite3.Connection, rows: Iterable[Row]) -> None:
    """Index rows (inside the caller's transaction)."""
    records = []
    patients = []
    for row in rows:
        record = row.record
        package = record.details.get("package") if record.event == "package-made" else None
        records.append(
            (
                row.n,
                row.month,
                row.line,
                row.digest,
                record_time_key(record),
                record.event,
                record.account,
                record.actor,
                package if isinstance(package, str) else None,
                _pack(canonical(record.as_dict())),
            )
        )
        patients.extend((patient, row.n) for patient in set(record.patient_ids))
    connection.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", records)
    connection.executemany("INSERT INTO patients VALUES (?, ?)", patients)


def tail(connection: sqlite3.Connection) -> Tail | None:
    found = connection.execute("SELECT n, digest, month, line FROM records ORDER BY n DESC LIMIT 1").fetchone()
    return Tail(*found) if found else None


def month_lines(connection: sqlite3.Connection, month: str) -> int:
    found = connection.execute("SELECT max(line) FROM records WHERE month = ?", (month,)).fetchone()
    return found[0] or 0


def digest_of(connection: sqlite3.Connection, n: int) -> str | None:
    found = connection.execute("SELECT digest FROM records WHERE n = ?", (n,)).fetchone()
    return found[0] if found else None


def set_positions(connection: sqlite3.Connection, positions: dict[str, str]) -> None:
    connection.executemany("INSERT OR REPLACE INTO positions VALUES (?, ?)", positions.items())


def position(connection: sqlite3.Connection, log: str) -> str | None:
    found = connection.execute("SELECT position FROM positions WHERE log = ?", (log,)).fetchone()
    return found[0] if found else None


def set_state(connection: sqlite3.Connection, state: dict[str, Any]) -> None:
    connection.executemany(
        "INSERT OR REPLACE INTO state VALUES (?, ?)", ((key, json.dumps(value)) for key, value in state.items())
    )


def state(connection: sqlite3.Connection, key: str) -> Any:
    found = connection.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
    return json.loads(found[0]) if found else None


def set_meta(connection: sqlite3.Connection, key: str, value: Any) -> None:
    connection.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))


def meta(connection: sqlite3.Connection, key: str) -> Any:
    found = connection.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return json.loads(found[0]) if found else None


def remove_before(connection: sqlite3.Connection, first_kept: str) -> None:
    """Drop the rows of months before `first_kept` (inside the caller's transaction)."""
    connection.execute(
        "DELETE FROM patients WHERE n IN (SELECT n FROM records WHERE month < ?)",
        (first_kept,),
    )
    connection.execute("DELETE FROM records WHERE month < ?", (first_kept,))


def query(
    connection: sqlite3.Connection,
    *,
    patient_id: str | None = None,
    account: str | None = None,
    actor: str | None = None,
    events: Collection[str] | None = None,
    since: datetime.datetime | None = None,
    until: datetime.datetime | None = None,
) -> list[AccessRecord]:
    """Records by event time ascending (then sequence); since inclusive, until exclusive."""
    where: list[str] = []
    arguments: list[Any] = []
    source = "records r"
    if patient_id is not None:
        source = "patients p JOIN records r ON r.n = p.n"
        where.append("p.patient_id = ?")
        arguments.append(patient_id)
    for column, value in (("account", account), ("actor", actor)):
        if value is not None:
            where.append(f"r.{column} = ?")
            arguments.append(value)
    if events is not None:
        chosen = sorted(set(events))
        if not chosen:
            return []
        where.append(f"r.event IN ({', '.join('?' * len(chosen))})")
        arguments.extend(chosen)
    if since is not None:
        where.append("r.time >= ?")
        arguments.append(time_key(since))
    if until is not None:
        where.append("r.time < ?")
        arguments.append(time_key(until))
    sql = f"SELECT r.data FROM {source}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY r.time, r.n"
    return [_unpack(data) for (data,) in connection.execute(sql, arguments)]


def package_rows(connection: sqlite3.Connection, account: str, name: str | None = None) -> list[AccessRecord]:
    """An account's package-made records (of one package name), oldest first."""
    sql = "SELECT data FROM records WHERE account = ? AND package IS NOT NULL"
    arguments: list[Any] = [account]
    if name is not None:
        sql += " AND package = ?"
        arguments.append(name)
    sql += " ORDER BY n"
    return [_unpack(data) for (data,) in connection.execute(sql, arguments)]
