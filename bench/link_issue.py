"""Benchmark: how long staff wait for `exchange link issue`, and whether it slows as links pile up.

On a fresh, deployed Debian 12 test host (messages to the outbox, so no network is timed),
measured on the host itself (no ssh round trip in the numbers):
- baseline: the floor any issue pays, the tool's start (`exchange --version`) plus the bare
  system work, `useradd` + `chpasswd` of a random password;
- issue latency: 50 single `exchange link issue` runs, median and 90th percentile;
- sequence: 100 issues one after another (150 link accounts at the end), total time, and the
  median of its last 10 against its first 10.
Targets: the median issue at most 3x the baseline (beyond the floor the issue validates, makes
the chroot, its log socket with an rsyslog restart, the expiry, the record, renders and sends
two messages and writes an audit line), and the last 10 of the sequence at most 1.5x its first 10.

    .venv/bin/python -m bench.link_issue [--single 50] [--sequence 100]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from statistics import median

from tests import testhost
from tests.e2e.conftest import write_inventory
from tests.pyinfra_run import pyinfra
from tests.sites import outbox_site

TARGET_ISSUE_RATIO = 3.0
TARGET_GROWTH = 1.5

# Runs on the test host with its python3: times each command, prints JSON.
ON_HOST = r"""
import json, secrets, statistics, subprocess, sys, time

def timed(argv, stdin=None):
    start = time.perf_counter()
    subprocess.run(argv, input=stdin, text=True, check=True, capture_output=True)
    return time.perf_counter() - start

def issue(n):
    return timed(["exchange", "link", "issue", "--email", f"bench{n}@example.org", "--phone", f"+3161{n:07d}"])

def baseline(n):
    name = f"bench-base-{n}"
    start = time.perf_counter()
    subprocess.run(["exchange", "--version"], check=True, capture_output=True)
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)
    subprocess.run(["chpasswd"], input=f"{name}:{secrets.token_urlsafe(16)}Aa1-\n", text=True, check=True)
    elapsed = time.perf_counter() - start
    subprocess.run(["userdel", name], check=True)
    return elapsed

single, sequence = int(sys.argv[1]), int(sys.argv[2])
base = [baseline(n) for n in range(single)]
singles = [issue(n) for n in range(single)]
start = time.perf_counter()
chain = [issue(1000 + n) for n in range(sequence)]
total = time.perf_counter() - start
print(json.dumps({"baseline": base, "single": singles, "sequence": chain, "sequence_total": total}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--single", type=int, default=50)
    parser.add_argument("--sequence", type=int, default=100)
    args = parser.parse_args()
    testhost.interrupt_on_sigterm()
    with testhost.session_directory(), tempfile.TemporaryDirectory() as tmp:
        host = testhost.boot("bench-links", log=lambda message: print(message, file=sys.stderr))
        try:
            inventory = write_inventory(Path(tmp), [host], site=outbox_site())
            deployed = pyinfra("-y", str(inventory), "deploy.py", timeout=1800)
            if deployed.returncode != 0:
                raise SystemExit(f"deploy failed:\n{deployed.stdout[-3000:]}{deployed.stderr[-3000:]}")
            ran = host.ssh(f"python3 - {args.single} {args.sequence} <<'BENCH'\n{ON_HOST}\nBENCH", timeout=3600)
            data = json.loads(ran.stdout)
        finally:
            testhost.shutdown(host)

    def p90(values):
        return sorted(values)[int(0.9 * (len(values) - 1))]

    base, single, chain = median(data["baseline"]), median(data["single"]), data["sequence"]
    first, last = median(chain[:10]), median(chain[-10:])
    ratio, growth = single / base, last / first
    print(f"baseline start+useradd+chpasswd median {base * 1000:7.1f} ms")
    print(
        f"link issue (n={args.single:>3})         median {single * 1000:7.1f} ms   p90 {p90(data['single']) * 1000:7.1f} ms"
    )
    print(
        f"{args.sequence} issues in sequence        total {data['sequence_total']:7.1f} s    "
        f"first 10 {first * 1000:6.1f} ms   last 10 {last * 1000:6.1f} ms"
    )
    ok = ratio <= TARGET_ISSUE_RATIO and growth <= TARGET_GROWTH
    print(
        f"issue / baseline = {ratio:.1f}x (target <= {TARGET_ISSUE_RATIO}x); last 10 / first 10 = {growth:.2f}x "
        f"(target <= {TARGET_GROWTH}x): {'meets' if ok else 'MISSES'} the targets"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
