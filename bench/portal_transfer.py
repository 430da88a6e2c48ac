"""Benchmark: a 1 GiB download and upload through the web page against OpenSSH `sftp`.

On a fresh, deployed Debian 12 test host with the web page, for one partner account, in the
same run: `curl` over HTTPS through nginx and the portal (a browser-equivalent client: one
streamed GET, one multipart POST, the session cookie from a real login), and OpenSSH's `sftp`
(get and put, key login) against the same sshd and folders. Both clients write to /dev/null or
read the same local file (in the page cache). Each direction is run `--repeat` times (median).
The portal's memory: its peak RSS during each transfer (VmHWM after resetting it through
/proc/PID/clear_refs) against its RSS before. Where the time goes: the CPU seconds of each
transfer for the whole machine (/proc/stat; the test host shares its kernel), the client, and
the portal process; the rest is nginx, sshd and the kernel.
Targets: the portal at least 0.8x the throughput of `sftp` both ways; peak RSS during a 1 GiB
transfer at most 64 MB above the portal's RSS before it (flat, whatever the file size).

    .venv/bin/python -m bench.portal_transfer [--mib 1024] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import httpx

from exchange import paths
from tests import testhost
from tests.e2e.clients import portal_form, ssh_options
from tests.e2e.conftest import make_exchange
from tests.sites import outbox_site

TARGET_RATIO = 0.8
TARGET_RSS_GROWTH_MB = 64
PARTNER = "alice-clinic"


def portal_memory(host: testhost.TestHost, reset: bool) -> dict[str, int]:
    pid = host.ssh("systemctl show imaging-exchange-portal -p MainPID --value").stdout.strip()
    if reset:
        host.ssh(f"echo 5 > /proc/{pid}/clear_refs")
    status = host.ssh(f"cat /proc/{pid}/status").stdout
    return {key: int(re.search(rf"^{key}:\s+(\d+) kB", status, re.M)[1]) // 1024 for key in ("VmRSS", "VmHWM")}


TICKS = os.sysconf("SC_CLK_TCK")


def machine_cpu() -> float:
    """CPU seconds the whole machine has been busy (not idle, not waiting for the disk)."""
    user, nice, system, idle, iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / TICKS


def client_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def portal_cpu(host: testhost.TestHost) -> float:
    pid = host.ssh("systemctl show imaging-exchange-portal -p MainPID --value").stdout.strip()
    fields = host.ssh(f"cat /proc/{pid}/stat").stdout.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def timed(argv: list[str], cpu: list[dict], host: testhost.TestHost | None = None, **kwargs) -> float:
    """Seconds for `argv`; appends its CPU seconds (machine, client, portal when `host`) to `cpu`."""
    portal = portal_cpu(host) if host else 0.0
    machine, client = machine_cpu(), client_cpu()
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, **kwargs)
    seconds = time.perf_counter() - start
    used = {"machine": machine_cpu() - machine, "client": client_cpu() - client}
    if host:
        used["portal"] = portal_cpu(host) - portal
    cpu.append(used)
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    size = args.mib << 20
    testhost.interrupt_on_sigterm()
    with testhost.session_directory(), tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        host = testhost.boot("bench-portal", log=lambda message: print(message, file=sys.stderr))
        try:
            exchange = make_exchange(
                host, Path(tmp), site=outbox_site() | {"portal_url": host.portal_url}, portal=host.portal_data()
            )
            login = exchange.logins[PARTNER]
            chroot = f"/srv/exchange/partners/{PARTNER}"
            host.ssh(f"head -c {size} /dev/urandom > {chroot}/download/big.bin && chmod 644 {chroot}/download/big.bin")
            local = Path(tmp) / "big.bin"
            subprocess.run(["head", "-c", str(size), "/dev/urandom"], stdout=local.open("wb"), check=True)
            certificate = Path(tmp) / "portal.crt"
            certificate.write_text(host.ssh(f"cat {paths.TLS_CERTIFICATE}").stdout)

            with httpx.Client(base_url=host.portal_url, verify=ssl.create_default_context(cafile=certificate)) as web:
                response = portal_form(web, "/login", username=PARTNER, password=login.password)
                if response.status_code != 303:
                    raise SystemExit(f"web login failed: {response.status_code}")
                cookies = "; ".join(f"{name}={value}" for name, value in web.cookies.items())
                csrf = web.cookies["exchange_csrf"]

            curl = ["curl", "--fail", "--silent", "--show-error", "--cacert", str(certificate), "-b", cookies]
            sftp = ["sftp", "-q", "-P", str(host.port), *ssh_options(host, login.key), "-b", "-"]
            target = f"{PARTNER}@{host.hostname}"
            runs: dict[str, list[float]] = {"sftp get": [], "portal get": [], "sftp put": [], "portal put": []}
            memory: dict[str, list[dict]] = {"get": [], "put": []}
            cpu: dict[str, list[dict]] = {name: [] for name in runs}
            for n in range(args.repeat):
                runs["sftp get"].append(
                    timed([*sftp, target], cpu["sftp get"], input=b"get download/big.bin /dev/null\n")
                )
                before = portal_memory(host, reset=True)
                runs["portal get"].append(
                    timed(
                        [*curl, "-o", "/dev/null", f"{host.portal_url}/files/download/big.bin"], cpu["portal get"], host
                    )
                )
                memory["get"].append({"before": before["VmRSS"], "peak": portal_memory(host, reset=False)["VmHWM"]})

                put = f"put {local} upload/sftp-{n}.bin\n".encode()
                runs["sftp put"].append(timed([*sftp, target], cpu["sftp put"], input=put))
                before = portal_memory(host, reset=True)
                form = ["-F", f"csrf={csrf}", "-F", f"file=@{local};filename=web-{n}.bin"]  # the token first
                upload = [*curl, "-o", "/dev/null", *form, f"{host.portal_url}/files/upload"]
                runs["portal put"].append(timed(upload, cpu["portal put"], host))
                memory["put"].append({"before": before["VmRSS"], "peak": portal_memory(host, reset=False)["VmHWM"]})
                sizes = host.ssh(f"stat -c '%n %s' {chroot}/upload/*-{n}.bin").stdout.split()
                if sizes[1::2] != [str(size)] * 2:
                    raise SystemExit(f"an upload arrived incomplete: {sizes}")
                host.ssh(f"rm -f {chroot}/upload/*-{n}.bin")
        finally:
            testhost.shutdown(host)

    mb = size / 1e6
    result = {name: median(times) for name, times in runs.items()}
    ratios = {
        "get": result["sftp get"] / result["portal get"],
        "put": result["sftp put"] / result["portal put"],
    }
    growth = {way: max(m["peak"] - m["before"] for m in memory[way]) for way in memory}
    print(json.dumps({"runs": runs, "memory_mb": memory, "cpu_s": cpu}, indent=1), file=sys.stderr)
    cores = os.cpu_count() or 1
    print(f"{args.mib} MiB, median of {args.repeat} (MB/s; CPU seconds: machine busy = client + portal + the rest):")
    for name, seconds in result.items():
        used = {key: median(run[key] for run in cpu[name]) for key in cpu[name][0]}
        share = used["machine"] / (seconds * cores)
        parts = f"client {used['client']:4.1f}" + (f"  portal {used['portal']:4.1f}" if "portal" in used else "")
        print(
            f"  {name:<11} {seconds:6.2f} s  {mb / seconds:7.1f} MB/s   CPU: machine {used['machine']:4.1f} "
            f"({share:.0%} of {cores} cores)  {parts}"
        )
    ok = True
    for way in ("get", "put"):
        met = ratios[way] >= TARGET_RATIO and growth[way] <= TARGET_RSS_GROWTH_MB
        ok &= met
        print(
            f"  {way}: portal/sftp throughput {ratios[way]:.2f}x (target >= {TARGET_RATIO}x); "
            f"portal peak RSS +{growth[way]} MB (target <= {TARGET_RSS_GROWTH_MB} MB): {'met' if met else 'MISSED'}"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
