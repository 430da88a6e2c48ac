"""The access trail's store on a real host: records written by the installed tools' code,
`exchange trail verify` finding an edited and a removed record at their place, the first month
removed by hand and the index removed, `exchange purge` removing a month past
`audit.retention_years` and keeping the month after it, and the auditors' controls TRAIL-01..03."""

from __future__ import annotations

import json

import pytest

from exchange import paths
from exchange.policy import load_policy
from roles import REPO
from tests.e2e.test_audit import run_audit

pytestmark = pytest.mark.e2e
YEARS = load_policy(REPO / "policies.yaml").policy.audit.retention_years

# Runs on the host in the tools' venv: three records in each of three months, each written in its
# month (the clock the store is given), through exchange.trail.store. Prints the months.
WRITE = r"""
import datetime, json, sys
from exchange.trail.record import AccessRecord
from exchange.trail.store import Trail

years = int(sys.argv[1])
today = datetime.datetime.now(datetime.UTC)
kept = today.replace(year=today.year - years, day=1, hour=12, minute=0, second=0, microsecond=0)
removed = (kept - datetime.timedelta(days=1)).replace(day=1)  # the month before: its last day is past
moments = {"removed": removed, "kept": kept, "current": today}
for moment in moments.values():
    trail = Trail(clock=lambda moment=moment: moment)
    with trail.writing() as writer:
        writer.append([
            AccessRecord(time=moment.isoformat(timespec="seconds"), event="download", account="alice-clinic",
                         actor="alice-clinic radiology", patient_ids=(f"PAT{n}",), details={"bytes": n})
            for n in range(3)
        ])
print(json.dumps({name: f"{moment:%Y-%m}" for name, moment in moments.items()}))
"""


@pytest.fixture(scope="module")
def months(own_exchange):
    result = own_exchange.host.ssh(f"{paths.TOOLS_VENV}/bin/python - {YEARS} <<'EOF'\n{WRITE}\nEOF")
    return json.loads(result.stdout)


def verify(host):
    result = host.ssh("exchange trail verify", check=False)
    return result.returncode, result.stdout.splitlines()


def test_records_written_by_the_tools_verify_intact(own_exchange, months):
    assert verify(own_exchange.host) == (
        0,
        [f"intact: 9 records in 3 months (first {months['removed']}, last {months['current']})"],
    )
    files = own_exchange.host.ssh(f"stat -c '%n %U %a' {paths.TRAIL_DIR} {paths.TRAIL_DIR}/*.jsonl").stdout
    assert files.split("\n")[0] == f"{paths.TRAIL_DIR} root 700"
    assert all(line.endswith(" root 600") for line in files.splitlines()[1:])


def test_the_audit_finds_a_month_past_retention(own_exchange, months, tmp_path):
    _, controls = run_audit(own_exchange.host, tmp_path, "test_trail.py")
    assert {name: controls[name]["failed"] for name in ("TRAIL-01", "TRAIL-02", "TRAIL-03")} == {
        "TRAIL-01": False,
        "TRAIL-02": False,
        "TRAIL-03": True,
    }
    assert months["removed"] in controls["TRAIL-03"]["message"]


def test_purge_removes_the_month_past_retention_and_keeps_the_next(own_exchange, months, tmp_path):
    host = own_exchange.host
    before = host.ssh(f"ls {paths.TRAIL_DIR}").stdout
    planned = [json.loads(line) for line in host.ssh("exchange purge --dry-run").stdout.splitlines()]
    trail_steps = [(p["event"], p["month"]) for p in planned if p["event"].startswith("trail-")]
    assert trail_steps == [("trail-month-removed", months["removed"]), ("trail-month-compressed", months["kept"])]
    assert host.ssh(f"ls {paths.TRAIL_DIR}").stdout == before
    result = host.ssh("exchange purge")
    assert f"deleted access trail months {months['removed']} (older than {YEARS} years)" in result.stderr
    left = host.ssh(f"lsattr {paths.TRAIL_DIR}").stdout.split("\n")
    flags = {line.split()[1].rsplit("/", 1)[1]: line.split()[0] for line in left if ".jsonl" in line}
    assert set(flags) == {f"{months['kept']}.jsonl.gz", f"{months['current']}.jsonl"}
    assert "i" in flags[f"{months['kept']}.jsonl.gz"] and "a" in flags[f"{months['current']}.jsonl"]
    removed = host.ssh(f'grep -h \'"event": "trail-month-removed"\' {paths.AUDIT_LOG}').stdout.splitlines()
    assert [json.loads(line)["month"] for line in removed] == [months["removed"]]
    # The removal is a record of the chain itself: where the chain now starts.
    last = json.loads(host.ssh(f"tail -n 1 {paths.TRAIL_DIR}/{months['current']}.jsonl").stdout)
    assert (last["n"], last["record"]["event"]) == (10, "trail-months-removed")
    assert last["record"]["details"]["months"] == [months["removed"]]
    assert last["record"]["details"]["start"]["n"] == 4
    assert verify(host) == (0, [f"intact: 7 records in 2 months (first {months['kept']}, last {months['current']})"])
    _, controls = run_audit(host, tmp_path, "test_trail.py")
    assert {name: controls[name]["failed"] for name in ("TRAIL-01", "TRAIL-02", "TRAIL-03")} == dict.fromkeys(
        ("TRAIL-01", "TRAIL-02", "TRAIL-03"), False
    )


def test_verify_finds_an_edited_and_a_removed_record_at_their_place(own_exchange, months):
    host = own_exchange.host
    kept, current = f"{months['kept']}.jsonl.gz", f"{months['current']}.jsonl"
    # As someone with root would: the flags lifted, the second record of the current month changed
    # (another patient), the second of the compressed month taken out.
    host.ssh(
        f"""set -e
        cd {paths.TRAIL_DIR}
        chattr -a {current} && sed -i '2s/"PAT1"/"PAT9"/' {current} && chattr +a {current}
        chattr -i {kept} && zcat {kept} | sed 2d | gzip > {kept}.new && mv {kept}.new {kept} && chattr +i {kept}
        """
    )
    assert verify(host) == (
        1,
        [
            f"broken: 6 records in 2 months (first {months['kept']}, last {months['current']}), 2 breaks",
            f"{kept} line 2: 1 record missing before it (sequence 6 follows 4)",
            f"{current} line 2: record changed (line 3 names another hash for it)",
        ],
    )


def test_verify_finds_the_first_month_removed_and_the_index_missing(own_exchange, months):
    host = own_exchange.host
    kept, current = f"{months['kept']}.jsonl.gz", f"{months['current']}.jsonl"
    host.ssh(f"set -e; cd {paths.TRAIL_DIR}; chattr -i {kept}; rm {kept}")  # after the retention's removal
    changed = f"{current} line 2: record changed (line 3 names another hash for it)"  # the test before's
    missing = f"{current} line 1: 3 records missing at the start (the first is sequence 7, the trail starts at 4)"
    summary = f"4 records in 1 month (first {months['current']}, last {months['current']})"
    assert verify(host) == (1, [f"broken: {summary}, 2 breaks", missing, changed])
    # Without the index the chain's own record of the retention still says where it starts.
    host.ssh(f"cd {paths.TRAIL_DIR} && rm -f index.sqlite index.sqlite-wal index.sqlite-shm")
    index_missing = "index.sqlite: index missing: the end of the chain cannot be checked against it"
    assert verify(host) == (1, [f"broken: {summary}, 3 breaks", index_missing, missing, changed])
    # A report rebuilds the index, and says so: on stderr and in the audit log.
    result = host.ssh("exchange trail account alice-clinic", check=False)
    assert "index.sqlite was missing and is rebuilt from the chain (4 records)" in result.stderr
    rebuilt = host.ssh(f'grep -h \'"event": "trail-index-rebuilt"\' {paths.AUDIT_LOG}').stdout.splitlines()
    assert [json.loads(line)["records"] for line in rebuilt] == [4]
    assert verify(host)[1][1:] == [missing, changed]
