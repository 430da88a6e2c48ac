"""Benchmark: a busy department's year of access records, written and asked for one patient.

On this machine (no host: the trail is a folder and a SQLite file), in a tmp folder on the real disk:
- write: a year of records (2 million by default: 228 an hour) through TrailWriter.append, one
  writer and one append per hour as the hourly `exchange trail ingest` does, each month in its own
  file; the cost per record against a link issue's time (its median in bench/README.md, measured on
  the test host: a host run is not needed for a ratio of 10%), and one record appended alone
  (a writer opened for it: the ingest of a quiet hour);
- the ended months compressed, as the purge does;
- a patient: Trail.query(patient_id=...) against `zgrep -F` for the ID over the same month files.
Targets: the write cost per record at most 0.1x a link issue; the patient at most 0.1x zgrep.

    .venv/bin/python -m bench.trail [--records 2000000] [--patients 200000] [--folder DIR]
"""

from __future__ import annotations

import argparse
import datetime
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

from exchange.trail.record import AccessRecord
from exchange.trail.store import Trail

LINK_ISSUE_MS = 306.9  # bench/README.md, link issue latency, the fourth session's median on the test host
TARGET_WRITE = 0.1
TARGET_PATIENT = 0.1
UTC = datetime.UTC
EVENTS = (
    ("download", 0.35),
    ("web-view", 0.2),
    ("sftp-login", 0.15),
    ("web-login", 0.1),
    ("package-made", 0.08),
    ("link-issued", 0.05),
    ("upload", 0.04),
    ("pacs-retrieve", 0.03),
)


class Clock:
    def __init__(self) -> None:
        self.moment = datetime.datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime.datetime:
        return self.moment


def records_of_hour(rng: random.Random, hour: datetime.datetime, count: int, patients: int) -> list[AccessRecord]:
    """Records as the ingest makes them: accounts, masked recipients, addresses, 1 to 3 patients."""
    names, weights = zip(*EVENTS, strict=True)
    made = []
    for second in sorted(rng.randrange(3600) for _ in range(count)):
        event = rng.choices(names, weights)[0]
        partner = rng.randrange(60)
        ids = tuple(f"PAT{rng.randrange(patients):07d}" for _ in range(rng.choice((1, 1, 1, 2, 3))))
        moment = hour + datetime.timedelta(seconds=second)
        made.append(
            AccessRecord(
                time=moment.isoformat(timespec="seconds"),
                local_time=moment.astimezone(datetime.timezone(datetime.timedelta(hours=1))).isoformat(),
                event=event,
                account=f"partner-{partner:02d}",
                actor=f"Ziekenhuis {partner:02d}" if event != "package-made" else f"staff-{rng.randrange(40):02d}",
                access_point={"address": f"10.{partner}.{rng.randrange(256)}.{rng.randrange(256)}", "via": "sftp"},
                patient_ids=ids,
                study_uids=tuple(f"1.2.826.0.1.3680043.8.498.{rng.getrandbits(60)}" for _ in ids),
                details={"file": f"/download/study-{rng.getrandbits(32):08x}.zip", "bytes": rng.randrange(1 << 31)},
                source=f"audit:{1000 + partner}:{rng.getrandbits(30)}",
            )
        )
    return made


def write_year(trail: Trail, clock: Clock, total: int, patients: int) -> tuple[float, int]:
    """(seconds in TrailWriter.append and its writer, records), one append per hour of the year."""
    rng = random.Random(18)
    hours = 365 * 24
    spent, written = 0.0, 0
    start = datetime.datetime(2026, 1, 1, tzinfo=UTC)
    for number in range(hours):
        hour = start + datetime.timedelta(hours=number)
        count = total * (number + 1) // hours - written
        batch = records_of_hour(rng, hour, count, patients)
        clock.moment = hour + datetime.timedelta(minutes=59)
        began = time.perf_counter()
        with trail.writing() as writer:
            writer.append(batch, positions={"audit": batch[-1].source.split(":", 1)[1]} if batch else None)
        spent += time.perf_counter() - began
        written += count
        if number % (24 * 30) == 0:
            print(f"  {hour:%Y-%m-%d}: {written} records, {spent:.1f} s in appends", file=sys.stderr)
    return spent, written


def single_appends(trail: Trail, clock: Clock, count: int) -> list[float]:
    rng = random.Random(7)
    times = []
    for _ in range(count):
        batch = records_of_hour(rng, clock.moment.replace(minute=0, second=0), 1, 1000)
        began = time.perf_counter()
        with trail.writing() as writer:
            writer.append(batch)
        times.append(time.perf_counter() - began)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2_000_000)
    parser.add_argument("--patients", type=int, default=200_000)
    parser.add_argument("--folder", type=Path, default=None, help="Where the trail goes (default: a tmp folder)")
    arguments = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="trail-bench-", dir=arguments.folder))
    try:
        clock = Clock()
        trail = Trail(str(base / "trail"), str(base / "run"), clock=clock)
        print(f"writing {arguments.records} records over 2026 in {base}", file=sys.stderr)
        spent, written = write_year(trail, clock, arguments.records, arguments.patients)
        per_record_ms = spent / written * 1000
        singles = single_appends(trail, clock, 200)
        began = time.perf_counter()
        compressed = trail.compress_ended_months(datetime.datetime(2026, 12, 31, 23, tzinfo=UTC))
        compress_s = time.perf_counter() - began
        began = time.perf_counter()
        verified = trail.verify()
        verify_s = time.perf_counter() - began
        files = sorted(str(path) for path in (base / "trail").glob("2026-*"))
        sizes = {Path(path).name: os.path.getsize(path) for path in files}
        index_bytes = sum(os.path.getsize(path) for path in (base / "trail").glob("index.sqlite*"))
        rng = random.Random(3)
        asked = [f"PAT{rng.randrange(arguments.patients):07d}" for _ in range(5)]
        query_s, grep_s, found = [], [], []
        for patient in asked:
            began = time.perf_counter()
            records = trail.query(patient_id=patient)
            query_s.append(time.perf_counter() - began)
            began = time.perf_counter()
            grep = subprocess.run(["zgrep", "-c", "-F", f'"{patient}"', *files], capture_output=True, text=True)
            grep_s.append(time.perf_counter() - began)
            lines = sum(int(line.rsplit(":", 1)[1]) for line in grep.stdout.splitlines())
            found.append((patient, len(records), lines))
        write_ratio = per_record_ms / LINK_ISSUE_MS
        patient_ratio = median(query_s) / median(grep_s)
        print(f"records written            {written} ({len(compressed)} months compressed in {compress_s:.1f} s)")
        print(f"write, one append an hour  {spent:.1f} s: {per_record_ms:.4f} ms per record")
        print(
            f"one record alone           median {median(singles) * 1000:.2f} ms "
            f"(p90 {sorted(singles)[int(len(singles) * 0.9)] * 1000:.2f} ms)"
        )
        print(f"per record / link issue    {per_record_ms:.4f} / {LINK_ISSUE_MS} ms = {write_ratio:.5f}x")
        print(f"one record / link issue    {median(singles) * 1000 / LINK_ISSUE_MS:.4f}x")
        print(
            f"month files                {sum(sizes.values()) / 1e6:.1f} MB ({len(sizes)} files), index {index_bytes / 1e6:.1f} MB"
        )
        print(f"verify                     {verify_s:.1f} s, intact: {verified.intact}, {verified.records} records")
        for (patient, records, lines), q, g in zip(found, query_s, grep_s, strict=True):
            print(
                f"patient {patient}      query {q * 1000:.2f} ms ({records} records), zgrep {g:.2f} s ({lines} lines)"
            )
        print(
            f"patient / zgrep (medians)  {median(query_s) * 1000:.2f} ms / {median(grep_s):.2f} s = {patient_ratio:.5f}x"
        )
        same = all(records == lines for _, records, lines in found)
        print(f"query and zgrep agree      {same}")
        met = write_ratio <= TARGET_WRITE and patient_ratio <= TARGET_PATIENT and same and verified.intact
        print("targets met" if met else "TARGET MISSED")
        return 0 if met else 1
    finally:
        trail_folder = base / "trail"
        if trail_folder.exists():  # the months are +a/+i: lifted to clean up
            subprocess.run(["chattr", "-R", "-a", "-i", str(trail_folder)], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
