"""Benchmark: the web viewer (issue 16) against downloading the same JPEGs as plain files.

On a fresh, deployed Debian 12 test host with the web page, for one partner account: two
synthetic CT packages (`--slices`, `--big-slices` slices in one series; a series shows at most
200 pictures, so the big package differs by its zip's central directory, which the first view of
a session reads) and, beside them in the download folder, some of each package's pictures
extracted as plain `.jpg` files with the package's owner and mode: the same bytes, checked over
HTTP before anything is timed. One HTTP client (httpx over HTTPS through nginx, keep-alive, the
session cookie of a real login: each web session is the user's own SFTP session), interleaved
rounds (which side goes first alternates), medians of the ratios taken round by round:

  first image   a patient on the files page clicks View: a new login (not timed), the files page
                (timed, both sides; it starts reading the newest package's directory in the
                background), then the view page `/files/view/download/NAME` (the session's first
                view) and its first picture (the series' middle one: carried in the page as a
                data: URL, so no time of its own; a URL would be asked for and timed); against, in
                a session of its own after the same files page, the download of that same JPEG
                as a plain file (`/files/download/NAME.jpg`). Printed beside, not the target:
                against the files page plus the plain JPEG (a page and a picture on both sides),
                and the view page opened directly in a session of its own, no files page before
                it (a bookmark: the page reads the zip's directory itself).
  series page   in the same session: the series' page `?series=1` (the directory kept) and its
                first picture (in the page too), against the plain download of that picture.
  per image     in one session, after the series' page: pictures 1..`--plain` one at a time, in
                order, and the plain JPEGs of the same pictures one at a time.
  floor         in the same rounds, as many GETs of /brand/accent.css: what any request through
                nginx and the portal costs (no session, no SFTP, a line of CSS). Not a target: it
                tells how much of a two-request view (a page, then its picture) is that cost.
  memory        the portal's RSS (/proc/PID/status, through ssh) before, its peak during (VmHWM,
                reset by clear_refs) and after each of `--sessions` sessions, each viewing the big
                package's overview, its series page and every picture of it; the sessions stay
                logged in (the account's limit of sessions, 5, ends the oldest at each new login).

CPU, read on this machine (the test host shares its kernel, /proc): of the portal, of all the test
host's processes (nginx, sshd, sftp-server, the portal, ...), of this client, and of the machine
(/proc/stat); "the rest of the machine" is what others used meanwhile. Load averages before each
phase.

With `--browser`, also Debian's headless Chromium (Playwright, /usr/bin/chromium; nothing is
downloaded), a new login (browser context) a round: navigation to the view page until the response
end of its first picture, then to the series' page until that of its first stack picture (resource
timing: what a patient waits for, the page's styles and script included); against, on the loaded
files page, a new Image() of each plain JPEG from its start to its response end. Printed, not a
target: the same comparison as the first image's, in a browser.

Requests are paced below nginx's limits for one address (20 a second, 30 login posts a minute),
never inside a timed request. Targets (issue 16): the first image (of the view page, and of the
series' page) and each picture while paging at most 1.5x the plain download of the same JPEG; memory flat: no session's peak more than 16 MB above the RSS before it, and,
once the account's limit of sessions is reached, the RSS grows at most 2 MB a session. Exit
status 1 if a target is missed.

    .venv/bin/python -m bench.portal_view [--slices 200] [--big-slices 1000] [--plain 20]
                                          [--rounds 9] [--sessions 10] [--browser]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import resource
import shlex
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from urllib.parse import quote

import httpx

from bench.portal_transfer import machine_cpu, portal_memory
from exchange import paths
from tests import testhost
from tests.dicom_synth import ct_study
from tests.e2e.clients import portal_form
from tests.e2e.conftest import make_exchange
from tests.sites import outbox_site

TARGET_RATIO = 1.5
TARGET_PEAK_MB = 16
TARGET_GROWTH_MB = 2
PARTNER = "alice-clinic"
DOWNLOAD = f"/srv/exchange/partners/{PARTNER}/download"
CHROMIUM = "/usr/bin/chromium"
TICKS = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1

# Run on the host as root: series 1's pictures 1..count and the middle one (the overview's, as
# view.htm.j2 picks it) as plain files with the package's owner and mode, and what the zip holds.
EXTRACT = """
import json, os, sys, zipfile
package, prefix, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
folder, info = os.path.dirname(package), os.stat(package)
with zipfile.ZipFile(package) as archive:
    pictures = json.loads(archive.read("IHE_PDI/STACKS.JSON"))["series"][0]["pictures"]
    middle = (len(pictures) + 1) // 2
    plain = {}
    for index in sorted(set(range(1, min(count, len(pictures)) + 1)) | {middle}):
        path = os.path.join(folder, f"{prefix}-{index:03d}.jpg")
        with open(path, "xb") as out:
            out.write(archive.read(pictures[index - 1]["name"]))
        os.chown(path, info.st_uid, info.st_gid)
        os.chmod(path, info.st_mode & 0o777)
        plain[index] = os.path.basename(path)
    entries, directory = len(archive.infolist()), info.st_size - archive.start_dir
print(json.dumps({"pictures": len(pictures), "middle": middle, "entries": entries, "directory_bytes": directory,
                  "plain": plain, "mode": oct(info.st_mode & 0o777)}))
"""


def pack(host: testhost.TestHost, tmp: Path, slices: int, patient_id: str) -> str:
    """Staff pack a synthetic CT series of `slices` slices into the partner's download folder."""
    ct_study(tmp / patient_id, slices, patient_id=patient_id)
    source = f"/tmp/{patient_id}"
    tar = subprocess.Popen(["tar", "-C", str(tmp / patient_id), "-c", "."], stdout=subprocess.PIPE)
    subprocess.run(
        [*host.ssh_args(), f"rm -rf {source} && mkdir {source} && tar -C {source} -x"], stdin=tar.stdout, check=True
    )
    tar.stdout.close()
    if tar.wait() != 0:
        raise SystemExit("tar failed")
    out = host.ssh(f"exchange package --to {PARTNER} {source} --label 'CT {slices}'", timeout=900).stdout
    host.ssh(f"rm -rf {source}")
    return re.search(r"/download/(\S+\.zip)", out)[1]


class Cpu:
    """CPU seconds so far: the machine's, this client's, the test host's processes' (everything
    under its systemd-nspawn, their reaped children included, so logins that came and went
    count) and the portal's."""

    def __init__(self, host: testhost.TestHost) -> None:
        self.container = host.pid

    def now(self) -> dict[str, float]:
        processes = {}  # pid: (parent, CPU with reaped children, own CPU, is the portal)
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                command = (entry / "cmdline").read_bytes()
            except OSError:  # gone meanwhile
                continue
            utime, stime, cutime, cstime = (int(v) / TICKS for v in fields[11:15])
            own = utime + stime
            processes[int(entry.name)] = (int(fields[1]), own + cutime + cstime, own, b"exchange.portal.app" in command)
        inside: dict[int, bool] = {self.container: True}

        def is_inside(pid: int) -> bool:
            if pid not in inside:
                parent = processes.get(pid, (0,))[0]
                inside[pid] = parent > 1 and is_inside(parent)
            return inside[pid]

        host = sum(total for pid, (_, total, _, _) in processes.items() if is_inside(pid))
        portal = sum(own for pid, (_, _, own, is_portal) in processes.items() if is_portal and is_inside(pid))
        mine = resource.getrusage(resource.RUSAGE_SELF)
        return {"machine": machine_cpu(), "client": mine.ru_utime + mine.ru_stime, "host": host, "portal": portal}

    @staticmethod
    def used(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
        used = {key: after[key] - before[key] for key in before}
        used["rest"] = max(0.0, used["machine"] - used["client"] - used["host"])
        used["seconds"] = seconds
        return used


class Portal:
    """Logins and timed GETs, one HTTPS client (one keep-alive connection) per web session.

    Paced below nginx's limits per address (templates/webserver/nginx-site.conf.j2: 20 requests a
    second after a burst of 100; policies.yaml: 30 login posts a minute after a burst of 10), which
    a bench from one address would otherwise hit (a 429); the waits are between requests, never
    inside a timed one, and the same on both sides."""

    REQUEST_SPACING = 1 / 15  # seconds from one request's start to the next's
    LOGIN_SPACING = 2.2

    def __init__(self, host: testhost.TestHost, password: str, certificate: Path) -> None:
        self.host, self.password = host, password
        self.tls = ssl.create_default_context(cafile=certificate)
        self.last_request = self.last_login = 0.0

    def pace_login(self) -> None:
        time.sleep(max(0.0, self.last_login + self.LOGIN_SPACING - time.monotonic()))
        self.last_login = time.monotonic()

    def pace(self) -> None:
        time.sleep(max(0.0, self.last_request + self.REQUEST_SPACING - time.monotonic()))
        self.last_request = time.monotonic()

    def login(self) -> httpx.Client:
        web = httpx.Client(
            base_url=self.host.portal_url, verify=self.tls, timeout=120, headers={"accept-language": "en"}
        )
        self.pace_login()
        response = portal_form(web, "/login", username=PARTNER, password=self.password)
        if response.status_code != 303 or response.headers.get("location") != "/files":
            raise SystemExit(f"web login failed: {response.status_code} {response.headers.get('location')}")
        return web

    @staticmethod
    def logout(web: httpx.Client) -> None:
        if "exchange_csrf" in web.cookies:
            web.post("/logout", data={"csrf": web.cookies["exchange_csrf"]})
        web.close()

    def get(self, web: httpx.Client, url: str, kind: str) -> tuple[float, httpx.Response]:
        """Seconds until the whole answer is in (httpx reads the body before returning)."""
        self.pace()
        start = time.perf_counter()
        response = web.get(url)
        seconds = time.perf_counter() - start
        if response.status_code != 200 or not response.headers.get("content-type", "").startswith(kind):
            raise SystemExit(f"GET {url}: {response.status_code} {response.headers.get('content-type')}")
        return seconds, response


def view_url(package: str, series: int | None = None) -> str:
    return f"/files/view/download/{quote(package)}" + (f"?series={series}" if series else "")


def picture_url(package: str, index: int) -> str:
    return f"/files/picture/download/1/{index}/{quote(package)}"


def plain_url(name: str) -> str:
    return f"/files/download/{quote(name)}"


FIRST_IMG = re.compile(r'<img src="([^"]+)"')
INLINE = "data:image/jpeg;base64,"


def first_picture(portal: Portal, web: httpx.Client, page: httpx.Response) -> tuple[float, bytes]:
    """The page's first picture: carried in the page itself (a data: URL, no time of its own) or
    asked for by its URL; seconds and its bytes."""
    source = FIRST_IMG.search(page.text)[1]
    if source.startswith(INLINE):
        return 0.0, base64.b64decode(source.removeprefix(INLINE), validate=True)
    seconds, response = portal.get(web, source.replace("&amp;", "&"), "image/jpeg")
    return seconds, response.content


def check_bytes(portal: Portal, package: dict) -> None:
    """Before any timing: every plain JPEG is the very picture the viewer serves for it, and the
    overview's first picture is the one the plain copy was made of."""
    web = portal.login()
    try:
        middle, first = package["plain"][package["middle"]], package["plain"][1]
        for url, plain in ((view_url(package["name"]), middle), (view_url(package["name"], 1), first)):
            _, page = portal.get(web, url, "text/html")
            if first_picture(portal, web, page)[1] != portal.get(web, plain_url(plain), "image/jpeg")[1].content:
                raise SystemExit(f"the first picture of {url} is not {plain}")
        for index, name in package["plain"].items():
            picture = portal.get(web, picture_url(package["name"], index), "image/jpeg")[1].content
            if picture != portal.get(web, plain_url(name), "image/jpeg")[1].content:
                raise SystemExit(f"picture {index} of {package['name']} differs from {name}")
    finally:
        portal.logout(web)


def first_image(portal: Portal, package: dict, view_first: bool) -> dict[str, float]:
    """One round: a session that views the package for the first time, and one that downloads
    the same JPEGs as plain files; each logs in (not timed) and opens the files page first."""
    name, plain = package["name"], package["plain"]
    times = {}
    for which in ("view", "plain", "direct") if view_first else ("plain", "view", "direct"):
        web = portal.login()
        try:
            if which == "direct":  # no files page before: the view page reads the directory itself
                times["direct view page"], page = portal.get(web, view_url(name), "text/html")
                times["direct view picture"], _ = first_picture(portal, web, page)
                continue
            times[f"files page ({which})"], _ = portal.get(web, "/files", "text/html")
            if which == "view":
                times["view page"], page = portal.get(web, view_url(name), "text/html")
                times["view picture"], _ = first_picture(portal, web, page)
                times["series page"], page = portal.get(web, view_url(name, 1), "text/html")
                times["series picture 1"], _ = first_picture(portal, web, page)
            else:
                times["plain middle"], _ = portal.get(web, plain_url(plain[package["middle"]]), "image/jpeg")
                times["plain 1"], _ = portal.get(web, plain_url(plain[1]), "image/jpeg")
        finally:
            portal.logout(web)
    return times


FLOOR = "/brand/accent.css"  # the portal's cheapest answer: no session, no SFTP, a line of CSS
BLOCKS = ("picture", "plain", "floor")


def paging(portal: Portal, package: dict, count: int, round_number: int, cpu: Cpu) -> dict[str, list]:
    """One round in one session: after the series' page, pictures 1..count one at a time, the
    plain JPEGs of the same pictures one at a time, and as many requests of the floor (each
    round another block first); CPU of each block."""
    name, plain = package["name"], package["plain"]
    times: dict[str, list] = {key: [] for which in BLOCKS for key in (which, f"cpu {which}")}
    web = portal.login()
    try:
        portal.get(web, view_url(name, 1), "text/html")
        shift = round_number % len(BLOCKS)
        for which in BLOCKS[shift:] + BLOCKS[:shift]:
            before, start = cpu.now(), time.perf_counter()
            for index in range(1, count + 1):
                url = {"picture": picture_url(name, index), "plain": plain_url(plain[index]), "floor": FLOOR}[which]
                times[which].append(portal.get(web, url, "text/css" if which == "floor" else "image/jpeg")[0])
            times[f"cpu {which}"].append(Cpu.used(before, cpu.now(), time.perf_counter() - start))
    finally:
        portal.logout(web)
    return times


def memory(portal: Portal, package: dict, sessions: int) -> list[dict[str, int]]:
    """Session after session views every picture of `package`; each stays logged in."""
    found, open_sessions = [], []
    try:
        for _ in range(sessions):
            web = portal.login()
            open_sessions.append(web)
            before = portal_memory(portal.host, reset=True)
            portal.get(web, view_url(package["name"]), "text/html")
            portal.get(web, view_url(package["name"], 1), "text/html")
            for index in range(1, package["pictures"] + 1):
                portal.get(web, picture_url(package["name"], index), "image/jpeg")
            after = portal_memory(portal.host, reset=False)
            found.append({"before": before["VmRSS"], "peak": after["VmHWM"], "after": after["VmRSS"]})
    finally:
        for web in open_sessions:
            portal.logout(web)
    return found


BROWSER_SHOWN = """selector => {
  const image = document.querySelector(selector);
  const page = performance.getEntriesByType("navigation")[0].responseEnd;
  // A picture carried in the page (a data: URL) is in with the page's HTML: no request of its own.
  const entry = image.src.startsWith("data:") ? {responseEnd: page, startTime: page, requestStart: page}
                                              : performance.getEntriesByName(image.src)[0];
  return {loaded: image.complete && image.naturalWidth > 0, end: entry.responseEnd, asked: entry.startTime,
          request: entry.responseEnd - entry.requestStart, page: page};
}"""
BROWSER_PLAIN = """url => new Promise((done, failed) => {
  const start = performance.now();
  const image = new Image();
  image.onload = () => {
    const entry = performance.getEntriesByName(image.src).pop();
    done({start, end: entry.responseEnd, request: entry.responseEnd - entry.requestStart});
  };
  image.onerror = failed;
  image.src = url;
})"""
BROWSER_PAGES = {"overview": (None, "ul.series img"), "series": (1, ".stack-image")}


def browser_rounds(portal: Portal, package: dict, rounds: int) -> dict[str, list[float]]:
    """Headless Chromium, a new login (browser context) each round: navigation start to the
    response end of the view page's first picture, then of the series page's first stack picture
    (resource timing); against, on the loaded files page, the plain copy of each by an Image(),
    from its start to its response end."""
    from playwright.sync_api import sync_playwright

    times: dict[str, list[float]] = {}
    url = portal.host.portal_url
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            for n in range(rounds):
                for which in ("view", "plain") if n % 2 == 0 else ("plain", "view"):
                    context = browser.new_context(ignore_https_errors=True, locale="en-GB")
                    page = context.new_page()
                    page.goto(url + "/login")
                    page.fill("#username", PARTNER)
                    page.fill("#password", portal.password)
                    portal.pace_login()
                    page.click("button[type=submit]")
                    page.wait_for_url("**/files")
                    if which == "view":
                        for label, (series, selector) in BROWSER_PAGES.items():
                            page.goto(url + view_url(package["name"], series), wait_until="load")
                            seen = page.evaluate(BROWSER_SHOWN, selector)
                            if not seen["loaded"]:
                                raise SystemExit(f"Chromium did not show the {label} page's picture")
                            for key in ("end", "page", "asked", "request"):  # ms from the navigation's start
                                times.setdefault(f"{label} {key}", []).append(seen[key] / 1000)
                    else:
                        for label, index in (("overview", package["middle"]), ("series", 1)):
                            seen = page.evaluate(BROWSER_PLAIN, plain_url(package["plain"][index]))
                            times.setdefault(f"plain {label}", []).append((seen["end"] - seen["start"]) / 1000)
                            times.setdefault(f"plain {label} request", []).append(seen["request"] / 1000)
                    csrf = next(c["value"] for c in context.cookies() if c["name"] == "exchange_csrf")
                    context.request.post(url + "/logout", form={"csrf": csrf})
                    context.close()
        finally:
            browser.close()
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--big-slices", type=int, default=1000)
    parser.add_argument("--plain", type=int, default=20, help="pictures paged per round, and plain JPEGs of them")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--sessions", type=int, default=10, help="sessions of the memory run (an account keeps 5)")
    parser.add_argument("--browser", action="store_true", help="also time headless Chromium")
    args = parser.parse_args()
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    testhost.interrupt_on_sigterm()
    results: dict = {"load": {}, "cpu": {}, "args": vars(args)}

    def phase(label: str) -> None:
        results["load"][label] = os.getloadavg()
        log(f"{label} (load average {' '.join(f'{v:.2f}' for v in os.getloadavg())})")

    with testhost.session_directory(), tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        phase("boot")
        host = testhost.boot("bench-view", log=log)
        try:
            exchange = make_exchange(
                host, Path(tmp), site=outbox_site() | {"portal_url": host.portal_url}, portal=host.portal_data()
            )
            packages: dict[int, dict] = {}
            for slices, patient in ((args.slices, "VIEWSMALL"), (args.big_slices, "VIEWBIG")):
                phase(f"packing {slices} slices")
                name = pack(host, Path(tmp), slices, patient)
                path = shlex.quote(f"{DOWNLOAD}/{name}")
                script = shlex.quote(EXTRACT)
                found = json.loads(
                    host.ssh(f"{paths.TOOLS_VENV}/bin/python -c {script} {path} s{slices} {args.plain}").stdout
                )
                found["plain"] = {int(index): plain for index, plain in found["plain"].items()}
                size = int(host.ssh(f"stat -c %s {path}").stdout)
                packages[slices] = {"name": name, "size": size, **found}
            certificate = Path(tmp) / "portal.crt"
            certificate.write_text(host.ssh(f"cat {paths.TLS_CERTIFICATE}").stdout)
            portal = Portal(host, exchange.logins[PARTNER].password, certificate)
            cpu = Cpu(host)
            count = min(args.plain, *(package["pictures"] for package in packages.values()))
            for package in packages.values():
                check_bytes(portal, package)

            for slices, package in packages.items():
                # The package viewed is the folder's newest, as a link's one package is: the one
                # the files page reads ahead (exchange.portal.viewing.READ_AHEAD).
                host.ssh(f"touch {shlex.quote(DOWNLOAD + '/' + package['name'])}")
                phase(f"first image, {slices} slices")
                before, start = cpu.now(), time.perf_counter()
                rounds = [first_image(portal, package, n % 2 == 0) for n in range(args.rounds)]
                results["cpu"][f"first {slices}"] = Cpu.used(before, cpu.now(), time.perf_counter() - start)
                package["first"] = {key: [r[key] for r in rounds] for key in rounds[0]}
                phase(f"per image, {slices} slices")
                before, start = cpu.now(), time.perf_counter()
                pages = [paging(portal, package, count, n, cpu) for n in range(args.rounds)]
                results["cpu"][f"paging {slices}"] = Cpu.used(before, cpu.now(), time.perf_counter() - start)
                package["paging"] = {key: [r[key] for r in pages] for key in BLOCKS}
                package["paging"] |= {f"cpu {key}": [r[f"cpu {key}"][0] for r in pages] for key in BLOCKS}
            phase("memory")
            results["memory"] = memory(portal, packages[args.big_slices], args.sessions)
            results["memory logged out"] = portal_memory(host, reset=False)["VmRSS"]
            if args.browser:
                phase("browser")
                results["browser"] = {
                    slices: browser_rounds(portal, package, args.rounds) for slices, package in packages.items()
                }
            phase("end")
        finally:
            testhost.shutdown(host)
    results["packages"] = packages
    results["paged"] = count
    print(json.dumps(results, indent=1), file=sys.stderr)
    return report(results, args)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def report(results: dict, args: argparse.Namespace) -> int:
    ok = True

    def verdict(ratio: float) -> str:
        nonlocal ok
        ok &= ratio <= TARGET_RATIO
        return f"{ratio:.2f}x ({'met' if ratio <= TARGET_RATIO else 'MISSED'})"

    def per_round(over: list[float], under: list[float]) -> float:
        return median(a / b for a, b in zip(over, under, strict=True))

    print(
        f"median of {args.rounds} rounds, ms (ratios: the median of the rounds' ratios; target <= {TARGET_RATIO}x "
        "the plain download of the same JPEG):"
    )
    for slices, package in results["packages"].items():
        first, paged = package["first"], package["paging"]
        m = {key: median(times) for key, times in first.items()}
        view = [a + b for a, b in zip(first["view page"], first["view picture"], strict=True)]
        series = [a + b for a, b in zip(first["series page"], first["series picture 1"], strict=True)]
        plain_pair = [a + b for a, b in zip(first["files page (plain)"], first["plain middle"], strict=True)]
        view_pair = [a + b for a, b in zip(first["files page (view)"], view, strict=True)]
        print(
            f"  {slices} slices: {package['size'] / 1e6:.0f} MB, {package['entries']} zip entries (central directory "
            f"{package['directory_bytes'] / 1e3:.0f} kB), {package['pictures']} pictures"
        )
        print(
            f"    first image   view page {ms(m['view page'])} + its picture {ms(m['view picture'])}, together "
            f"{ms(median(view))}; plain JPEG {ms(m['plain middle'])}: {verdict(per_round(view, first['plain middle']))}"
        )
        direct = [a + b for a, b in zip(first["direct view page"], first["direct view picture"], strict=True)]
        print(
            f"                  opened directly, no files page before (its directory read in the request): "
            f"{ms(median(direct))}, {per_round(direct, first['plain middle']):.2f}x (not the target)"
        )
        print(
            f"                  files page first (view side {ms(m['files page (view)'])}, plain side "
            f"{ms(m['files page (plain)'])}): page + picture against page + plain JPEG "
            f"{per_round(view_pair, plain_pair):.2f}x (not the target)"
        )
        print(
            f"    series page   page {ms(m['series page'])} + picture 1 {ms(m['series picture 1'])}, together "
            f"{ms(median(series))}; plain JPEG {ms(m['plain 1'])}: {verdict(per_round(series, first['plain 1']))}"
        )
        pictures = [median(r) for r in paged["picture"]]
        plains = [median(r) for r in paged["plain"]]
        floors = [median(r) for r in paged.get("floor", [])]
        cpu = {  # CPU seconds of all the rounds' blocks over their GETs
            which: {
                key: sum(block[key] for block in paged[f"cpu {which}"]) / (results["paged"] * len(paged[which]))
                for key in ("portal", "host")
            }
            for which in BLOCKS
            if paged.get(which)
        }
        print(
            f"    per image     picture {ms(median(pictures))}, plain JPEG {ms(median(plains))} "
            f"({results['paged']} a round): {verdict(per_round(pictures, plains))}; CPU per GET: portal "
            f"{ms(cpu['picture']['portal'])} / {ms(cpu['plain']['portal'])}, test host "
            f"{ms(cpu['picture']['host'])} / {ms(cpu['plain']['host'])} (picture / plain)"
        )
        if floors:
            floor = median(floors)
            print(
                f"    floor         {FLOOR} (no session, no SFTP) {ms(floor)} (CPU: portal {ms(cpu['floor']['portal'])}, "
                f"test host {ms(cpu['floor']['host'])}): the view page and its picture are two requests, "
                f"{median(view) / floor:.1f} floors, the plain JPEG {m['plain middle'] / floor:.1f}; two floors are "
                f"{2 * floor / m['plain middle']:.2f}x the plain JPEG"
            )
    for slices, times in results.get("browser", {}).items():
        m = {key: median(values) for key, values in times.items()}
        for label, what in (("overview", "view page"), ("series", "series page")):
            print(
                f"  Chromium, {slices} slices, {what}: navigation to its first picture {ms(m[f'{label} end'])} (the "
                f"HTML in at {ms(m[f'{label} page'])}, the picture asked for at {ms(m[f'{label} asked'])}, its "
                f"request {ms(m[f'{label} request'])}); the plain JPEG's Image() {ms(m[f'plain {label}'])} (its request "
                f"{ms(m[f'plain {label} request'])}): {per_round(times[f'{label} end'], times[f'plain {label}']):.2f}x"
            )
    runs, closed = results["memory"], results["memory logged out"]
    limit = min(5, len(runs))  # policies.yaml: portal.max_sessions_per_account
    steady = runs[limit - 1 :]
    growth = (steady[-1]["after"] - steady[0]["after"]) / max(1, len(steady) - 1)
    peak = max(run["peak"] - run["before"] for run in runs)
    met = growth <= TARGET_GROWTH_MB and peak <= TARGET_PEAK_MB
    ok &= met
    print(
        f"  memory, {len(runs)} sessions each viewing all {results['packages'][args.big_slices]['pictures']} pictures "
        "of the big package, portal RSS MB before/peak/after: "
        + ", ".join(f"{r['before']}/{r['peak']}/{r['after']}" for r in runs)
        + f"; all logged out: {closed}"
    )
    print(
        f"    a session's peak +{peak} MB (target <= {TARGET_PEAK_MB}); from session {limit} on (the account's "
        f"limit) {growth:+.1f} MB a session (target <= {TARGET_GROWTH_MB}): {'met' if met else 'MISSED'}"
    )
    print(
        "  load average (1, 5, 15 min) before each phase: "
        + "; ".join(f"{label} {' '.join(f'{v:.2f}' for v in load)}" for label, load in results["load"].items())
    )
    for label, used in results["cpu"].items():
        print(
            f"  CPU during {label}: {used['seconds']:.1f} s wall, machine {used['machine']:.1f} s "
            f"({used['machine'] / (used['seconds'] * CORES):.0%} of {CORES} cores): client {used['client']:.1f}, "
            f"test host {used['host']:.1f} (portal {used['portal']:.1f}), rest of the machine {used['rest']:.1f} "
            f"({used['rest'] / (used['seconds'] * CORES):.0%})"
        )
    print("meets the targets" if ok else "MISSES a target")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
