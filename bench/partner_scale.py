"""Benchmark: converge from scratch and the no-op re-run at 1, 100 and 500 partners.

Each size gets a fresh Debian 12 test host (tests/testhost.py). Timings are wall-clock
seconds of the real `pyinfra -y INVENTORY deploy.py` (converge) and of a second identical
run (no-op; its `--dry --json` plan is checked to hold no change). The target: the no-op
re-run at 500 partners costs at most 3x the no-op at 1 partner, both measured here in
the same run.

    .venv/bin/python -m bench.partner_scale [--sizes 1 100 500] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tests import testhost
from tests.e2e.conftest import partner_entry, write_inventory
from tests.pyinfra_run import changed_operations, pyinfra

TARGET_RATIO = 3.0


def timed_deploy(inventory: Path) -> float:
    start = time.perf_counter()
    result = pyinfra("-y", str(inventory), "deploy.py", timeout=3600)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"deploy failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return elapsed


def measure(size: int, repeat: int, workdir: Path) -> dict:
    host = testhost.boot(f"bench-{size}", log=lambda message: print(message, file=sys.stderr))
    try:
        partners = workdir / f"partners-{size}.yaml"
        partners.write_text(json.dumps({"partners": [partner_entry(f"partner-{i:04d}") for i in range(size)]}))
        inventory = write_inventory(workdir, [host], partners_file=str(partners))
        converge = timed_deploy(inventory)
        noops = [timed_deploy(inventory) for _ in range(repeat)]
        changes = {name: hosts for name, hosts in changed_operations(str(inventory)).items() if hosts}
        if changes:
            raise SystemExit(f"{size} partners: the re-run is not a no-op: {changes}")
        accounts = int(
            host.ssh("getent group exchange-partners | awk -F: '{print $4}' | tr ',' '\\n' | grep -c .").stdout
        )
        if accounts != size:
            raise SystemExit(f"{size} partners wanted, {accounts} on the host")
        return {
            "partners": size,
            "converge_s": round(converge, 1),
            "noop_s": round(statistics.median(noops), 2),
            "noop_runs_s": [round(n, 2) for n in noops],
        }
    finally:
        testhost.shutdown(host)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 100, 500])
    parser.add_argument("--repeat", type=int, default=3, help="no-op re-runs per size (median reported)")
    args = parser.parse_args()
    testhost.interrupt_on_sigterm()
    with testhost.session_directory(), tempfile.TemporaryDirectory() as tmp:
        rows = [measure(size, args.repeat, Path(tmp)) for size in args.sizes]
    baseline = rows[0]["noop_s"]
    print(f"{'partners':>8}  {'converge s':>10}  {'no-op s':>8}  {'no-op ratio':>11}")
    for row in rows:
        row["noop_ratio"] = round(row["noop_s"] / baseline, 2)
        print(f"{row['partners']:>8}  {row['converge_s']:>10}  {row['noop_s']:>8}  {row['noop_ratio']:>11}")
    worst = rows[-1]["noop_ratio"]
    verdict = "meets" if worst <= TARGET_RATIO else "MISSES"
    print(
        f"no-op at {rows[-1]['partners']} partners = {worst}x no-op at {rows[0]['partners']}: {verdict} the target (<= {TARGET_RATIO}x)"
    )
    print(json.dumps(rows))
    return 0 if worst <= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
