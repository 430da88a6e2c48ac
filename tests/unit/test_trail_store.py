"""The access trail's store in a tmp folder: the chain across months, the index and its recovery,
verify finding an edited or removed record at its place, compression and retention. chattr may
be unavailable here (overlay, tmpfs): the tests that need it say so and skip."""

from __future__ import annotations

import datetime
import gzip
import json
import os
import stat

import pytest

from exchange.trail import chain, index
from exchange.trail.record import AccessRecord
from exchange.trail.store import Break, PackageManifest, Trail, TrailWriter

UTC = datetime.UTC


class Clock:
    def __init__(self, moment: datetime.datetime) -> None:
        self.moment = moment

    def __call__(self) -> datetime.datetime:
        return self.moment


def record(time: str, event: str = "download", account: str = "partner-a", **fields) -> AccessRecord:
    return AccessRecord(time=time, event=event, account=account, actor=fields.pop("actor", "Ziekenhuis A"), **fields)


def package(time: str, account: str, name: str, sha: str, patients: tuple[str, ...]) -> AccessRecord:
    return record(
        time,
        "package-made",
        account,
        actor="staff-jdoe",
        patient_ids=patients,
        study_uids=tuple(f"1.2.3.{p}" for p in patients),
        details={"package": name, "sha256": sha, "bytes": 1234, "files": 3},
    )


@pytest.fixture
def clock():
    return Clock(datetime.datetime(2026, 11, 20, 9, 0, tzinfo=UTC))


@pytest.fixture
def trail(tmp_path, clock):
    return Trail(str(tmp_path / "trail"), str(tmp_path / "run"), clock=clock)


def file_lines(trail: Trail, name: str) -> list[bytes]:
    path = os.path.join(trail.folder, name)
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "rb") as stream:
        return stream.read().splitlines()


def rewrite(trail: Trail, name: str, lines: list[bytes]) -> None:
    """What someone with root and no scruples would do: the file written again."""
    path = os.path.join(trail.folder, name)
    for flag in (chain.APPEND_ONLY, chain.IMMUTABLE):
        chain.set_flag(os.open(trail.folder, os.O_RDONLY), name, flag, False)
    os.unlink(path)
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "wb") as stream:
        stream.write(b"".join(line + b"\n" for line in lines))


def write_months(trail: Trail, clock: Clock, months: list[tuple[int, int]], per_month: int = 3) -> None:
    for year, month in months:
        clock.moment = datetime.datetime(year, month, 10, 12, 0, tzinfo=UTC)
        with trail.writing() as writer:
            writer.append(
                [record(f"{year}-{month:02d}-10T12:00:{i:02d}+00:00", patient_ids=(f"P{i}",)) for i in range(per_month)]
            )


def test_append_writes_chained_canonical_lines_root_only(trail):
    with trail.writing() as writer:
        writer.append([record("2026-11-20T08:00:00+00:00"), record("2026-11-20T08:01:00+00:00")])
    with trail.writing() as writer:
        writer.append([record("2026-11-20T08:02:00+00:00")])
    lines = file_lines(trail, "2026-11.jsonl")
    decoded = [json.loads(line) for line in lines]
    assert [d["n"] for d in decoded] == [1, 2, 3]
    assert decoded[0]["previous"] == "0" * 64
    assert decoded[1]["previous"] == chain.digest(lines[0])
    assert decoded[2]["previous"] == chain.digest(lines[1])
    assert decoded[2]["record"] == record("2026-11-20T08:02:00+00:00").as_dict()
    assert stat.S_IMODE(os.stat(trail.folder).st_mode) == 0o700
    for name in ("2026-11.jsonl", "index.sqlite"):
        assert stat.S_IMODE(os.stat(os.path.join(trail.folder, name)).st_mode) == 0o600
    assert trail.verify().intact


def test_the_chain_goes_on_across_months_in_the_month_written(trail, clock):
    write_months(trail, clock, [(2026, 10), (2026, 11), (2027, 1)])
    assert trail.months() == ["2026-10", "2026-11", "2027-01"]
    last_of_october = file_lines(trail, "2026-10.jsonl")[-1]
    first_of_november = json.loads(file_lines(trail, "2026-11.jsonl")[0])
    assert first_of_november["n"] == 4
    assert first_of_november["previous"] == chain.digest(last_of_october)
    # A late record (its event in October) goes into the month it is written in.
    with trail.writing() as writer:
        writer.append([record("2026-10-31T23:59:59+00:00")])
    assert json.loads(file_lines(trail, "2027-01.jsonl")[-1])["n"] == 10
    verified = trail.verify()
    assert verified.intact and verified.records == 10
    assert verified.months == ["2026-10", "2026-11", "2027-01"]


def test_an_index_behind_the_chain_is_caught_up_with_positions_from_the_sources(trail):
    with trail.writing() as writer:
        writer.append([record("2026-11-20T08:00:00+00:00", source="audit:11:100")], positions={"audit": "11:100"})
    # A crash between the chain's append and the index's commit: lines beyond the index.
    line = chain.encode(
        2,
        chain.digest(file_lines(trail, "2026-11.jsonl")[-1]),
        record("2026-11-20T08:05:00+00:00", patient_ids=("P9",), source="audit:11:250").as_dict(),
    )
    with open(os.path.join(trail.folder, "2026-11.jsonl"), "ab") as stream:
        stream.write(line + b"\n")
    assert trail.query(patient_id="P9") == []  # the reader takes no lock and indexes nothing
    with trail.writing() as writer:
        assert writer.position("audit") == "11:250"
        writer.append([record("2026-11-20T08:10:00+00:00", source="audit:11:400")], positions={"audit": "11:400"})
    assert [r.time for r in trail.query(patient_id="P9")] == ["2026-11-20T08:05:00+00:00"]
    assert [json.loads(line)["n"] for line in file_lines(trail, "2026-11.jsonl")] == [1, 2, 3]
    assert trail.verify().intact


def test_a_lost_index_is_rebuilt_from_the_chain(trail, clock):
    write_months(trail, clock, [(2026, 10), (2026, 11)])
    os.unlink(trail.index_path)
    assert [r.time for r in trail.query(patient_id="P1")] == ["2026-10-10T12:00:01+00:00", "2026-11-10T12:00:01+00:00"]


def test_a_write_cut_short_is_stepped_over_and_named(trail):
    with trail.writing() as writer:
        writer.append([record("2026-11-20T08:00:00+00:00")])
    with open(os.path.join(trail.folder, "2026-11.jsonl"), "ab") as stream:
        stream.write(b'{"n":2,"previous":"ab')  # power lost mid-write
    with trail.writing() as writer:
        writer.append([record("2026-11-20T08:10:00+00:00")])
    lines = file_lines(trail, "2026-11.jsonl")
    assert json.loads(lines[2])["n"] == 2 and json.loads(lines[2])["previous"] == chain.digest(lines[0])
    assert trail.verify().breaks == [Break("2026-11.jsonl", 2, "not a trail line")]
    connection = index.connect(trail.index_path, read_only=True)
    assert connection.execute("SELECT n, line FROM records ORDER BY n").fetchall() == [(1, 1), (2, 3)]
    connection.close()


def test_query_filters_by_patient_account_actor_events_and_time(trail):
    with trail.writing() as writer:
        writer.append(
            [
                record("2026-11-20T10:00:00+00:00", "web-view", "partner-a", patient_ids=("P1", "P2")),
                record("2026-11-20T08:00:00+00:00", "download", "partner-a", patient_ids=("P1",)),
                record("2026-11-21T08:00:00+00:00", "download", "partner-b", patient_ids=("P2",), actor="Lab B"),
                record("2026-11-22T08:00:00+01:00", "sftp-login", "partner-b", actor="Lab B"),
            ]
        )
    times = lambda found: [r.time for r in found]  # noqa: E731
    # By event time, not by the order written.
    assert times(trail.query(patient_id="P1")) == ["2026-11-20T08:00:00+00:00", "2026-11-20T10:00:00+00:00"]
    assert times(trail.query(account="partner-b")) == ["2026-11-21T08:00:00+00:00", "2026-11-22T08:00:00+01:00"]
    assert times(trail.query(actor="Lab B", events={"sftp-login"})) == ["2026-11-22T08:00:00+01:00"]
    assert trail.query(events=()) == []
    assert times(trail.query(patient_id="P2", events={"download", "web-view"})) == [
        "2026-11-20T10:00:00+00:00",
        "2026-11-21T08:00:00+00:00",
    ]
    since = datetime.datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
    until = datetime.datetime(2026, 11, 22, 7, 0, tzinfo=UTC)  # exclusive: the +01:00 login is 07:00 UTC
    assert times(trail.query(since=since, until=until)) == ["2026-11-20T10:00:00+00:00", "2026-11-21T08:00:00+00:00"]
    with pytest.raises(ValueError, match="without its zone"):
        trail.query(since=datetime.datetime(2026, 11, 20))
    assert trail.query(patient_id="P3") == []


def test_no_trail_yet_is_an_empty_trail(tmp_path):
    trail = Trail(str(tmp_path / "none"), str(tmp_path / "run"))
    assert trail.query(patient_id="P1") == [] and trail.packages("partner-a") == []
    assert trail.verify().intact and trail.months() == []
    assert not os.path.exists(tmp_path / "none")


def test_packages_and_package_come_from_package_made_records(trail):
    with trail.writing() as writer:
        writer.append(
            [
                package("2026-11-20T08:00:00+00:00", "partner-a", "ct.zip", "a" * 64, ("P1",)),
                package("2026-11-20T09:00:00+00:00", "partner-b", "ct.zip", "b" * 64, ("P2",)),
                record("2026-11-20T09:30:00+00:00", details={"package": "ct.zip"}),  # a download is no manifest
                package("2026-11-20T10:00:00+00:00", "partner-a", "ct.zip", "c" * 64, ("P1", "P3")),
                package("2026-11-20T11:00:00+00:00", "partner-a", "mr.zip", "d" * 64, ("P4",)),
            ],
            state={"recipients": {"link-aaaa": "j***@example.org"}},
        )
        assert writer.package("partner-a", "ct.zip") == PackageManifest(
            account="partner-a",
            name="ct.zip",
            sha256="c" * 64,
            size=1234,
            patient_ids=("P1", "P3"),
            study_uids=("1.2.3.P1", "1.2.3.P3"),
            made="2026-11-20T10:00:00+00:00",
        )
        assert writer.package("partner-a", "nothing.zip") is None
        assert writer.state("recipients") == {"link-aaaa": "j***@example.org"}
        assert writer.state("never") is None
    assert [(p.name, p.sha256[0]) for p in trail.packages("partner-a")] == [
        ("ct.zip", "a"),
        ("ct.zip", "c"),
        ("mr.zip", "d"),
    ]


def test_verify_finds_an_edited_record_at_its_line(trail, clock):
    write_months(trail, clock, [(2026, 10), (2026, 11)], per_month=4)
    lines = file_lines(trail, "2026-10.jsonl")
    lines[1] = lines[1].replace(b'"P1"', b'"P7"')
    rewrite(trail, "2026-10.jsonl", lines)
    assert trail.verify().breaks == [Break("2026-10.jsonl", 2, "record changed (line 3 names another hash for it)")]
    # The last line of a month is named by the next month's first.
    lines = file_lines(trail, "2026-10.jsonl")
    lines[1] = lines[1].replace(b'"P7"', b'"P1"')
    lines[3] = lines[3].replace(b'"P3"', b'"P8"')
    rewrite(trail, "2026-10.jsonl", lines)
    assert trail.verify().breaks == [
        Break("2026-10.jsonl", 4, "record changed (line 1 of 2026-11.jsonl names another hash for it)")
    ]


def test_verify_finds_the_last_record_edited_or_removed_through_the_index(trail):
    with trail.writing() as writer:
        writer.append([record(f"2026-11-20T08:00:0{i}+00:00", patient_ids=("P1",)) for i in range(3)])
    lines = file_lines(trail, "2026-11.jsonl")
    rewrite(trail, "2026-11.jsonl", [*lines[:2], lines[2].replace(b'"P1"', b'"P2"')])
    assert trail.verify().breaks == [Break("2026-11.jsonl", 3, "record changed (the index names another hash for it)")]
    rewrite(trail, "2026-11.jsonl", lines[:2])
    assert trail.verify().breaks == [
        Break("2026-11.jsonl", 3, "1 record missing at the end (the index has sequence up to 3)")
    ]
    # The next record continues after the index: the gap stays visible.
    with trail.writing() as writer:
        writer.append([record("2026-11-20T09:00:00+00:00")])
    assert trail.verify().breaks == [Break("2026-11.jsonl", 3, "1 record missing before it (sequence 4 follows 2)")]


def test_verify_finds_a_removed_record_at_its_line_in_a_compressed_month(trail, clock):
    write_months(trail, clock, [(2026, 10), (2026, 11)], per_month=5)
    assert trail.compress_ended_months(datetime.datetime(2026, 11, 30, tzinfo=UTC)) == ["2026-10"]
    lines = file_lines(trail, "2026-10.jsonl.gz")
    rewrite(trail, "2026-10.jsonl.gz", lines[:1] + lines[3:])  # lines 2 and 3 removed
    assert trail.verify().breaks == [Break("2026-10.jsonl.gz", 2, "2 records missing before it (sequence 4 follows 1)")]
    rewrite(trail, "2026-10.jsonl.gz", [*lines[:4], b"garbage"])
    assert trail.verify().breaks == [Break("2026-10.jsonl.gz", 5, "not a trail line")]


def test_ended_months_are_compressed_the_current_one_not(trail, clock):
    write_months(trail, clock, [(2026, 9), (2026, 10), (2026, 11)])
    before = {m: file_lines(trail, f"{m}.jsonl") for m in ("2026-09", "2026-10")}
    assert trail.compress_ended_months(datetime.datetime(2026, 11, 1, tzinfo=UTC)) == ["2026-09", "2026-10"]
    assert sorted(name for name in os.listdir(trail.folder) if not name.startswith("index.")) == [
        "2026-09.jsonl.gz",
        "2026-10.jsonl.gz",
        "2026-11.jsonl",
    ]
    for month, lines in before.items():
        assert file_lines(trail, f"{month}.jsonl.gz") == lines
        assert stat.S_IMODE(os.stat(os.path.join(trail.folder, f"{month}.jsonl.gz")).st_mode) == 0o600
    assert trail.compress_ended_months(datetime.datetime(2026, 11, 1, tzinfo=UTC)) == []
    verified = trail.verify()
    assert verified.intact and verified.records == 9
    assert [r.time[:7] for r in trail.query(patient_id="P0")] == ["2026-09", "2026-10", "2026-11"]


def test_a_compression_cut_short_after_its_rename_is_finished(trail, clock):
    write_months(trail, clock, [(2026, 10), (2026, 11)])
    folder = os.open(trail.folder, os.O_RDONLY)
    with gzip.open(os.path.join(trail.folder, "2026-10.jsonl.gz"), "wb") as stream:
        stream.write(b"".join(line + b"\n" for line in file_lines(trail, "2026-10.jsonl")))
    assert chain.month_files(folder) == [("2026-10", "2026-10.jsonl"), ("2026-11", "2026-11.jsonl")]
    assert trail.compress_ended_months(datetime.datetime(2026, 11, 1, tzinfo=UTC)) == ["2026-10"]
    assert chain.month_files(folder) == [("2026-10", "2026-10.jsonl.gz"), ("2026-11", "2026-11.jsonl")]
    assert trail.verify().intact


def test_old_months_are_removed_with_their_index_rows_and_the_chain_still_verifies(trail, clock):
    write_months(trail, clock, [(2026, 8), (2026, 9), (2026, 10), (2026, 11)])
    trail.compress_ended_months(datetime.datetime(2026, 11, 1, tzinfo=UTC))
    assert trail.remove_months_before("2026-10") == ["2026-08", "2026-09"]
    assert trail.months() == ["2026-10", "2026-11"]
    assert [r.time[:7] for r in trail.query(patient_id="P0")] == ["2026-10", "2026-11"]
    assert trail.remove_months_before("2026-10") == []
    verified = trail.verify()
    assert verified.intact and verified.records == 7  # and the removal's own record
    # The retention removes whole months only: a month file removed by hand is still found.
    folder = os.open(trail.folder, os.O_RDONLY)
    with chain.lifted(folder, "2026-10.jsonl.gz"):
        os.unlink("2026-10.jsonl.gz", dir_fd=folder)
    assert trail.verify().breaks == [
        Break("2026-11.jsonl", 1, "3 records missing at the start (the first is sequence 10, the trail starts at 7)")
    ]


def test_the_chain_goes_on_after_every_month_was_removed(trail, clock):
    write_months(trail, clock, [(2020, 1)])
    clock.moment = datetime.datetime(2026, 11, 20, tzinfo=UTC)
    assert trail.remove_months_before("2021-12") == ["2020-01"]
    with trail.writing() as writer:
        writer.append([record("2026-11-20T08:00:00+00:00")])
    assert json.loads(file_lines(trail, "2026-11.jsonl")[0])["n"] == 4
    assert trail.verify().intact


def test_the_current_month_is_append_only_and_ended_months_immutable_where_the_filesystem_allows(trail, clock):
    write_months(trail, clock, [(2026, 10), (2026, 11)])
    trail.compress_ended_months(datetime.datetime(2026, 11, 1, tzinfo=UTC))
    folder = os.open(trail.folder, os.O_RDONLY)
    fd = os.open("2026-11.jsonl", os.O_RDONLY, dir_fd=folder)
    current = chain.flags(fd)
    os.close(fd)
    if current is None or not current & chain.APPEND_ONLY:
        pytest.skip("chattr is not available in this tmp folder (the audit control TRAIL-01 checks it on a host)")
    with pytest.raises(PermissionError):
        os.open("2026-11.jsonl", os.O_WRONLY | os.O_TRUNC, dir_fd=folder)
    fd = os.open("2026-10.jsonl.gz", os.O_RDONLY, dir_fd=folder)
    assert chain.flags(fd) & chain.IMMUTABLE
    os.close(fd)
    assert trail.remove_months_before("2026-11") == ["2026-10"]  # lifted for the moment needed


def test_time_keys_sort_across_zones():
    assert index.time_key(
        datetime.datetime(2026, 11, 22, 8, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=1)))
    ) < (index.time_key(datetime.datetime(2026, 11, 22, 7, 30, tzinfo=UTC)))


def test_the_folder_must_be_roots_own(trail):
    os.mkdir(trail.folder, 0o755)
    with trail.writing():
        pass
    assert stat.S_IMODE(os.stat(trail.folder).st_mode) == 0o700


def test_exchange_trail_verify_says_intact_or_names_each_break(trail, clock, monkeypatch, audit_socket):
    from typer.testing import CliRunner

    from exchange import cli, paths

    monkeypatch.setattr(paths, "TRAIL_DIR", trail.folder)
    monkeypatch.setattr(paths, "TOOL_RUN_DIR", trail.run_dir)
    write_months(trail, clock, [(2026, 10), (2026, 11)])
    result = CliRunner().invoke(cli.app, ["trail", "verify"])
    assert (result.exit_code, result.stdout) == (0, "intact: 6 records in 2 months (first 2026-10, last 2026-11)\n")
    lines = file_lines(trail, "2026-10.jsonl")
    rewrite(trail, "2026-10.jsonl", [lines[0], lines[1].replace(b"P1", b"P7"), lines[2]])
    result = CliRunner().invoke(cli.app, ["trail", "verify"])
    assert result.exit_code == 1
    assert result.stdout == (
        "broken: 6 records in 2 months (first 2026-10, last 2026-11), 1 break\n"
        "2026-10.jsonl line 2: record changed (line 3 names another hash for it)\n"
    )
    assert [(r["event"], r["records"], r["breaks"]) for r in audit_socket.records()] == [
        ("trail-verified", 6, 0),
        ("trail-verified", 6, 1),
    ]


def test_an_index_of_another_format_is_rebuilt_from_the_chain(trail, clock):
    write_months(trail, clock, [(2026, 11)])
    connection = index.connect(trail.index_path)
    index.set_meta(connection, "format", index.FORMAT - 1)
    connection.execute("UPDATE records SET data = X'00'")  # what this version could not read
    connection.close()
    with trail.writing():
        pass
    assert [r.patient_ids for r in trail.query(account="partner-a")] == [("P0",), ("P1",), ("P2",)]


def test_a_new_month_after_every_month_was_compressed_goes_on_without_reading_the_chain_again(
    trail, clock, monkeypatch
):
    write_months(trail, clock, [(2026, 10), (2026, 11)])
    clock.moment = datetime.datetime(2026, 12, 1, 0, 30, tzinfo=UTC)
    assert trail.compress_ended_months(clock.moment) == ["2026-10", "2026-11"]

    def scan(*arguments):
        raise AssertionError("the index was up to date: no month needs reading again")

    monkeypatch.setattr(TrailWriter, "_scan", scan)
    with trail.writing() as writer:
        writer.append([record("2026-12-01T00:29:00+00:00")])
    assert json.loads(file_lines(trail, "2026-12.jsonl")[0])["n"] == 7
    assert trail.verify().intact


def test_verify_waits_for_the_writer(trail):
    import threading

    found = []
    with trail.writing() as writer:
        writer.append([record("2026-11-20T08:00:00+00:00")])
        reader = threading.Thread(target=lambda: found.append(trail.verify()))
        reader.start()
        reader.join(0.5)
        assert found == []  # an append half written is not read as a break
        writer.append([record("2026-11-20T08:01:00+00:00")])
    reader.join(10)
    assert found[0].intact and found[0].records == 2


INDEX_MISSING = Break("index.sqlite", 0, "index missing: the end of the chain cannot be checked against it")


def unlink_month(trail: Trail, name: str) -> None:
    """A month file removed by hand, its flags lifted first (what root without scruples does)."""
    folder = os.open(trail.folder, os.O_RDONLY)
    with chain.lifted(folder, name):
        os.unlink(name, dir_fd=folder)
    os.close(folder)


def test_verify_finds_the_first_month_removed_without_a_retention_removal(trail, clock):
    write_months(trail, clock, [(2026, 9), (2026, 10), (2026, 11)])
    unlink_month(trail, "2026-09.jsonl")
    missing = Break(
        "2026-10.jsonl", 1, "3 records missing at the start (the first is sequence 4, the trail starts at 1)"
    )
    assert trail.verify().breaks == [missing]
    os.unlink(trail.index_path)  # the chain alone says so too
    assert trail.verify().breaks == [INDEX_MISSING, missing]


@pytest.mark.parametrize("cut", ["last month", "last 2 lines"])
def test_verify_without_the_index_is_not_intact(trail, clock, cut):
    write_months(trail, clock, [(2026, 9), (2026, 10), (2026, 11)])
    if cut == "last month":
        unlink_month(trail, "2026-11.jsonl")
    else:
        rewrite(trail, "2026-11.jsonl", file_lines(trail, "2026-11.jsonl")[:-2])
    os.unlink(trail.index_path)
    verified = trail.verify()
    assert not verified.intact and verified.breaks == [INDEX_MISSING]


def test_the_index_start_is_kept_from_the_first_append(trail):
    with trail.writing() as writer:
        writer.append([record("2026-11-20T08:00:00+00:00")])
    connection = index.connect(trail.index_path, read_only=True)
    assert index.meta(connection, "start") == {"n": 1, "previous": chain.GENESIS}
    connection.close()


def test_a_retention_removal_is_a_record_of_the_chain_and_verify_checks_the_start_against_it(trail, clock):
    write_months(trail, clock, [(2026, 8), (2026, 9), (2026, 10), (2026, 11)])
    clock.moment = datetime.datetime(2026, 11, 20, tzinfo=UTC)
    assert trail.remove_months_before("2026-10") == ["2026-08", "2026-09"]
    last = json.loads(file_lines(trail, "2026-11.jsonl")[-1])
    first_kept = json.loads(file_lines(trail, "2026-10.jsonl")[0])
    assert last["n"] == 13 and last["record"]["event"] == "trail-months-removed"
    assert last["record"]["details"] == {
        "months": ["2026-08", "2026-09"],
        "first_kept": "2026-10",
        "start": {"n": 7, "previous": first_kept["previous"]},
    }
    assert trail.verify().intact and trail.verify().records == 7
    os.unlink(trail.index_path)  # without the index, the chain's own record says where it starts
    assert trail.verify().breaks == [INDEX_MISSING]
    with trail.writing():  # rebuilt
        pass
    assert trail.verify().intact
    # A month removed by hand after the retention's is still found, with the index and without.
    unlink_month(trail, "2026-10.jsonl")
    missing = Break(
        "2026-11.jsonl", 1, "3 records missing at the start (the first is sequence 10, the trail starts at 7)"
    )
    assert trail.verify().breaks == [missing]
    os.unlink(trail.index_path)
    assert trail.verify().breaks == [INDEX_MISSING, missing]


def test_a_rebuilt_index_is_said_on_stderr_and_in_the_audit_log(trail, clock, capsys, audit_socket):
    write_months(trail, clock, [(2026, 10), (2026, 11)])
    assert capsys.readouterr().err == ""
    assert [r for r in audit_socket.records() if r["event"] == "trail-index-rebuilt"] == []
    os.unlink(trail.index_path)
    assert len(trail.query(patient_id="P1")) == 2
    assert capsys.readouterr().err == (
        f"warning: the trail's index {trail.index_path} was missing and is rebuilt from the chain (6 records): "
        "a cut end of the chain can no longer be found by trail verify\n"
    )
    (rebuilt,) = [r for r in audit_socket.records() if r["event"] == "trail-index-rebuilt"]
    assert (rebuilt["records"], rebuilt["last"], rebuilt["months"]) == (6, 6, ["2026-10", "2026-11"])
    trail.query(patient_id="P1")
    assert capsys.readouterr().err == ""  # once


def test_exchange_trail_verify_without_the_index_exits_1(trail, clock, monkeypatch):
    from typer.testing import CliRunner

    from exchange import cli, paths

    monkeypatch.setattr(paths, "TRAIL_DIR", trail.folder)
    monkeypatch.setattr(paths, "TOOL_RUN_DIR", trail.run_dir)
    write_months(trail, clock, [(2026, 10), (2026, 11)])
    os.unlink(trail.index_path)
    result = CliRunner().invoke(cli.app, ["trail", "verify"])
    assert result.exit_code == 1
    assert result.stdout == (
        "broken: 6 records in 2 months (first 2026-10, last 2026-11), 1 break\n"
        "index.sqlite: index missing: the end of the chain cannot be checked against it\n"
    )


def test_a_retention_removal_cut_short_after_its_record_is_no_break_and_finished_by_the_next(trail, clock, monkeypatch):
    write_months(trail, clock, [(2026, 8), (2026, 9), (2026, 10)])
    clock.moment = datetime.datetime(2026, 11, 20, tzinfo=UTC)

    def crash(*arguments):
        raise KeyboardInterrupt  # the power lost after the record, before a file went

    with monkeypatch.context() as patched:
        patched.setattr(chain, "lifted", crash)
        with pytest.raises(KeyboardInterrupt):
            trail.remove_months_before("2026-10")
    assert trail.months() == ["2026-08", "2026-09", "2026-10", "2026-11"]
    assert trail.verify().intact  # the months it named still there: nothing is missing
    assert trail.remove_months_before("2026-10") == ["2026-08", "2026-09"]
    verified = trail.verify()
    assert verified.intact and verified.records == 5
