"""The purge and the access trail: months older than `audit.retention_years` removed, each on
record; ended months compressed; the dry run shows exactly that and changes nothing."""

from __future__ import annotations

import datetime
import json
import os

from exchange import purge as purge_module
from exchange.trail.record import AccessRecord
from exchange.trail.store import Trail
from tests.unit.test_purge_local import tree  # noqa: F401 (a fixture)
from tests.unit.test_purge_plan import accounts_on_the_host

UTC = datetime.UTC
NOW = datetime.datetime(2026, 12, 4, 3, 0, tzinfo=UTC)


class Clock:
    moment = NOW

    def __call__(self) -> datetime.datetime:
        return self.moment


def trail_with(tmp_path, months: list[str]) -> Trail:
    clock = Clock()
    trail = Trail(str(tmp_path / "trail"), str(tmp_path / "run"), clock=clock)
    for month in months:
        clock.moment = datetime.datetime.fromisoformat(f"{month}-15T12:00:00+00:00")
        with trail.writing() as writer:
            writer.append([AccessRecord(time=clock.moment.isoformat(), event="web-login", account="a", actor="a")])
    return trail


def test_first_kept_month_keeps_a_month_until_its_last_day_is_past_the_retention():
    # Five years before 4 December 2026 is 4 December 2021: November 2021 ended before it.
    assert purge_module.first_kept_month(datetime.date(2026, 12, 4), 5) == "2021-12"
    assert purge_module.first_kept_month(datetime.date(2028, 2, 29), 5) == "2023-02"


def test_the_purge_removes_old_trail_months_compresses_ended_ones_and_the_dry_run_shows_it(
    tree,  # noqa: F811
    tmp_path,
    monkeypatch,
    audit_socket,
):
    layout, _ = tree
    accounts_on_the_host(monkeypatch)
    trail = trail_with(tmp_path, ["2021-10", "2021-11", "2021-12", "2026-11", "2026-12"])
    before = sorted(os.listdir(trail.folder))
    shown, done = [], []
    would = purge_module.purge(layout.policy, dry_run=True, out=shown.append, now=NOW.timestamp(), trail=trail)
    assert sorted(os.listdir(trail.folder)) == before
    did = purge_module.purge(layout.policy, out=done.append, now=NOW.timestamp(), trail=trail)
    trail_lines = [
        {k: v for k, v in json.loads(line).items() if k not in ("time", "dry_run")}
        for line in done
        if json.loads(line)["event"].startswith("trail-")
    ]
    assert trail_lines == [
        {"event": "trail-month-removed", "month": "2021-10", "retention_years": 5},
        {"event": "trail-month-removed", "month": "2021-11", "retention_years": 5},
        {"event": "trail-month-compressed", "month": "2021-12"},
        {"event": "trail-month-compressed", "month": "2026-11"},
    ]
    assert [json.loads(line)["event"] for line in shown if "trail-" in line] == [line["event"] for line in trail_lines]
    assert would == did and did.trail_removed == ["2021-10", "2021-11"]
    assert [r["month"] for r in audit_socket.records() if r["event"] == "trail-month-removed"] == ["2021-10", "2021-11"]
    assert trail.month_states() == [("2021-12", True), ("2026-11", True), ("2026-12", False)]
    assert trail.verify().intact
    again = purge_module.purge(layout.policy, out=lambda line: None, now=NOW.timestamp(), trail=trail)
    assert (again.trail_removed, again.trail_compressed) == ([], [])
