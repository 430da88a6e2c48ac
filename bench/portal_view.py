"""Benchmark: the web viewer (issue 16) against downloading the same JPEGs as plain files.

On a fresh, deployed Debian 12 test host with the web page, for one partner account, two
synthetic CT packages (`--slices`, `--big-slices`: the zip's central directory grows with the
DICOM files it holds; a series has at most 200 pictures) and, in the same download folder, the
package's first `--plain` pictures extracted as plain `.jpg` files (the same bytes). One HTTP
client (httpx over HTTPS through nginx, the session cookie of a real login), interleaved rounds,
medians:

  time to first image   a new login (not timed), then the view page `/files/view/NAME?series=1`
                        and its first picture `/files/picture/1/1/NAME`: the first view of a
                        session reads the zip's central directory, as a patient's first view
                        does; against a new login, then the files page and one plain JPEG
                        (`/files/download/NAME.jpg`).
  per image             in one session, after its view page: pictures 1..N of series 1 in order,
                        one at a time, against the N plain JPEGs, one at a time.
  memory                the portal's RSS before and its peak (VmHWM after clear_refs) while one
                        session after another (more than an account may keep) views every picture
                        of the big package; the sessions stay open until the account's limit
                        closes the oldest.

With `--browser`, also Debian's headless Chromium (Playwright): navigation start to the first
`.stack-image` with naturalWidth > 0, against navigation start of the files page to a plain
JPEG loaded by the page (an Image() made at DOMContentLoaded).

Targets: the viewer at most 1.5x the plain download, both for the first image and per image;
memory flat: the portal's RSS grows at most 4 MB per session over the run, and no session's peak
is more than 16 MB above the RSS before it.

    .venv/bin/python -m bench.portal_view [--slices 200] [--big-slices 1000] [--rounds 9] [--browser]
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import httpx

from bench.portal_transfer import portal_cpu, portal_memory
from exchange import paths
from tests import testhost
from tests.dicom_synth import ct_study
from tests.e2e.clients import portal_form
from tests.e2e.conftest import make_exchange
from tests.sites import outbox_site

TARGET_RATIO = 1.5
TARGET_GROWTH_PER_SESSION_MB = 4
TARGET_PEAK_MB = 16
PARTNER = "alice-clinic"
DOWNLOAD = f"/srv/exchange/partners/{PARTNER}/download"
CHROMIUM = "/usr/bin/chromium"

# Run on the host as root: the first `count` pictures of series 1 as plain files, and their names.
EXTRACT = """
import json, os, sys, zipfile
package, prefix, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
with zipfile.ZipFile(package) as archive:
    pictures = json.loads(archive.read("IHE_PDI/STACKS.JSON"))["series"][0]["pictures"]
    names = []
    for i, picture in enumerate(pictures[:count], start=1):
        name = f"{prefix}-{i:03d}.jpg"
        with open(os.path.join(os.path.dirname(package), name), "wb") as out:
            out.write(archive.read(picture["name"]))
        os.chmod(out.name, 0o644)
        names.append(name)
print(json.dumps({"pictures": len(pictures), "entries": len(archive.infolist()), "plain": names}))
"""


def pack(host: testhost.TestHost, tmp: Path, slices: int, patient_id: str) -> str:
    """Staff pack a synthetic CT series of `slices` slices into the partner's download folder."""
    ct_study(tmp / patient_id, slices, patient_id=patient_id)
    source = f"/tmp/{patient_id}"
    tar = subprocess.Popen(["tar", "-C", str(tmp / patient_id), "-c", "."], stdout=subprocess.PIPE)
    subprocess.run(
        [*host.ssh_args(), f"rm -rf {source} && mkdir {source} && tar -C {source} -x"], stdin=tar.stdout, check=True
    )
    if tar.wait() != 0:
        raise SystemExit("tar failed")
    out = host.ssh(f"exchange package --to {PARTNER} {source} --label 'CT {slices}'", timeout=900).stdout
    host.ssh(f"rm -rf {source}")
    return re.search(r"/download/(\S+\.zip)", out)[1]


class Portal:
    """Logins and timed GETs through one HTTPS client per session."""

    def __init__(self, host: testhost.TestHost, password: str, certificate: Path) -> None:
        self.host, self.password = host, password
        self.tls = ssl.create_default_context(cafile=certificate)

    def login(self) -> httpx.Client:
        web = httpx.Client(
            base_url=self.host.portal_url, verify=self.tls, timeout=120, headers={"accept-language": "en"}
        )
        response = portal_form(web, "/login", username=PARTNER, password=self.password)
        if response.status_code != 303:
            raise SystemExit(f"web login failed: {response.status_code}")
        return web

    @staticmethod
    def logout(web: httpx.Client) -> None:
        web.post("/logout", data={"csrf": web.cookies["exchange_csrf"]})
        web.close()

    @staticmethod
    def get(web: httpx.Client, url: str, kind: str) -> tuple[float, bytes]:
        start = time.perf_counter()
        response = web.get(url)
        seconds = time.perf_counter() - start
        if response.status_code != 200 or not response.headers["content-type"].startswith(kind):
            raise SystemExit(f"GET {url}: {response.status_code} {response.headers.get('content-type')}")
        return seconds, response.content


def first_image(portal: Portal, package: str, plain: str, view_first: bool) -> dict[str, float]:
    """One round: the view page and its first picture, and the files page and a plain JPEG, each
    in a session of its own (the login not timed)."""
    times = {}
    for which in ("view", "plain") if view_first else ("plain", "view"):
        web = portal.login()
        try:
            if which == "view":
                page, _ = portal.get(web, f"/files/view/{package}?series=1", "text/html")
                picture, _ = portal.get(web, f"/files/picture/1/1/{package}", "image/jpeg")
                again, _ = portal.get(web, f"/files/view/{package}?series=1", "text/html")  # the directory kept
                times |= {"view page": page, "picture 1": picture, "view": page + picture, "view page again": again}
            else:
                page, _ = portal.get(web, "/files", "text/html")
                picture, _ = portal.get(web, f"/files/download/{plain}", "image/jpeg")
                times |= {"files page": page, "plain 1": picture, "plain": page + picture}
        finally:
            portal.logout(web)
    return times


def paging(portal: Portal, package: str, plain: list[str], view_first: bool, check: bool) -> dict[str, list[float]]:
    """One round in one session: pictures 1..N one at a time, and the N plain JPEGs."""
    times: dict[str, list[float]] = {"picture": [], "plain": [], "portal cpu picture": [], "portal cpu plain": []}
    web = portal.login()
    try:
        portal.get(web, f"/files/view/{package}?series=1", "text/html")
        for which in ("picture", "plain") if view_first else ("plain", "picture"):
            cpu = portal_cpu(portal.host)
            for i, name in enumerate(plain, start=1):
                url = f"/files/picture/1/{i}/{package}" if which == "picture" else f"/files/download/{name}"
                seconds, data = portal.get(web, url, "image/jpeg")
                times[which].append(seconds)
                if check and data != portal.get(web, f"/files/download/{name}", "image/jpeg")[1]:
                    raise SystemExit(f"picture {i} of {package} is not the JPEG in the zip")
            times[f"portal cpu {which}"].append((portal_cpu(portal.host) - cpu) / len(plain))
    finally:
        portal.logout(web)
    return times


def memory(portal: Portal, package: str, pictures: int, sessions: int) -> list[dict[str, int]]:
    """Session after session views every picture of `package`; each stays open (the account's
    limit of sessions ends the oldest)."""
    found, open_sessions = [], []
    try:
        for _ in range(sessions):
            web = portal.login()
            open_sessions.append(web)
            before = portal_memory(portal.host, reset=True)
            portal.get(web, f"/files/view/{package}?series=1", "text/html")
            for i in range(1, pictures + 1):
                portal.get(web, f"/files/picture/1/{i}/{package}", "image/jpeg")
            after = portal_memory(portal.host, reset=False)
            found.append({"before": before["VmRSS"], "peak": after["VmHWM"], "after": after["VmRSS"]})
    finally:
        for web in open_sessions:
            portal.logout(web)
    found.append({"logged out": portal_memory(portal.host, reset=False)["VmRSS"]})
    return found


BROWSER_PLAIN = """url => new Promise((done, failed) => {
  const image = new Image();
  image.onload = () => done(performance.now());
  image.onerror = failed;
  image.src = url;
})"""
BROWSER_STACK = """() => new Promise(done => {
  const seen = () => { const i = document.querySelector('.stack-image');
    if (i && i.complete && i.naturalWidth > 0) done(performance.now()); else requestAnimationFrame(seen); };
  seen();
})"""


def browser_rounds(portal: Portal, package: str, plain: str, rounds: int) -> dict[str, list[float]]:
    """Headless Chromium: navigation start to the first stack image shown, against navigation
    start of the files page to a plain JPEG loaded by it; a new login (context) each time."""
    from playwright.sync_api import sync_playwright

    times: dict[str, list[float]] = {"view": [], "plain": []}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            for n in range(rounds):
                for which in ("view", "plain") if n % 2 == 0 else ("plain", "view"):
                    context = browser.new_context(ignore_https_errors=True, locale="en-GB")
                    page = context.new_page()
                    page.goto(portal.host.portal_url + "/login")
                    page.fill("#username", PARTNER)
                    page.fill("#password", portal.password)
                    page.click("button[type=submit]")
                    page.wait_for_url("**/files")
                    if which == "view":
                        page.goto(portal.host.portal_url + f"/files/view/{package}?series=1", wait_until="commit")
                        shown = page.evaluate(BROWSER_STACK)
                    else:
                        page.goto(portal.host.portal_url + "/files", wait_until="domcontentloaded")
                        shown = page.evaluate(BROWSER_PLAIN, f"/files/download/{plain}")
                    times[which].append(shown / 1000)  # performance.now() counts from navigation start
                    csrf = next(c["value"] for c in context.cookies() if c["name"] == "exchange_csrf")
                    context.request.post(portal.host.portal_url + "/logout", form={"csrf": csrf})
                    context.close()
        finally:
            browser.close()
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--big-slices", type=int, default=1000)
    parser.add_argument("--plain", type=int, default=20, help="pictures paged, and plain JPEGs beside them")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--sessions", type=int, default=8, help="sessions of the memory run (an account keeps 5)")
    parser.add_argument("--browser", action="store_true", help="also time headless Chromium")
    args = parser.parse_args()
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    testhost.interrupt_on_sigterm()
    results: dict = {}
    with testhost.session_directory(), tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        host = testhost.boot("bench-view", log=log)
        try:
            exchange = make_exchange(
                host, Path(tmp), site=outbox_site() | {"portal_url": host.portal_url}, portal=host.portal_data()
            )
            packages = {}
            for slices, patient in ((args.slices, "VIEWSMALL"), (args.big_slices, "VIEWBIG")):
                log(f"packing {slices} slices")
                packages[slices] = {"name": pack(host, Path(tmp), slices, patient)}
                packages[slices]["size"] = int(host.ssh(f"stat -c %s {DOWNLOAD}/{packages[slices]['name']}").stdout)
            small = packages[args.slices]["name"]
            script = shlex.quote(EXTRACT)
            extracted = json.loads(
                host.ssh(f"{paths.TOOLS_VENV}/bin/python -c {script} {DOWNLOAD}/{small} plain {args.plain}").stdout
            )
            plain = extracted["plain"]
            for package in packages.values():
                listing = host.ssh(
                    f"{paths.TOOLS_VENV}/bin/python -c {shlex.quote(EXTRACT)} {DOWNLOAD}/{package['name']} x 0"
                )
                package |= json.loads(listing.stdout)
                del package["plain"]
            certificate = Path(tmp) / "portal.crt"
            certificate.write_text(host.ssh(f"cat {paths.TLS_CERTIFICATE}").stdout)
            portal = Portal(host, exchange.logins[PARTNER].password, certificate)

            for slices, package in packages.items():
                log(f"timing {slices} slices")
                rounds = [first_image(portal, package["name"], plain[0], n % 2 == 0) for n in range(args.rounds)]
                pages = [paging(portal, package["name"], plain, n % 2 == 0, n == 0) for n in range(args.rounds)]
                package["first"] = {key: [r[key] for r in rounds] for key in rounds[0]}
                package["paging"] = {key: [t for r in pages for t in r[key]] for key in pages[0]}
            log("memory")
            big = packages[args.big_slices]
            results["memory"] = memory(portal, big["name"], big["pictures"], args.sessions)
            if args.browser:
                log("browser")
                results["browser"] = {
                    slices: browser_rounds(portal, package["name"], plain[0], args.rounds)
                    for slices, package in packages.items()
                }
        finally:
            testhost.shutdown(host)
    results["packages"] = packages
    print(json.dumps(results, indent=1), file=sys.stderr)
    return report(results, args)


def report(results: dict, args: argparse.Namespace) -> int:
    ok = True

    def verdict(ratio: float) -> str:
        nonlocal ok
        ok &= ratio <= TARGET_RATIO
        return "met" if ratio <= TARGET_RATIO else "MISSED"

    print(f"median of {args.rounds} rounds (first image: a new login each; per image: {args.plain} GETs a round), ms:")
    for slices, package in results["packages"].items():
        first = {key: median(times) * 1000 for key, times in package["first"].items()}
        paging = package["paging"]
        per = {key: median(paging[key]) * 1000 for key in ("picture", "plain")}
        cpu = {key: median(paging[f"portal cpu {key}"]) * 1000 for key in ("picture", "plain")}
        print(
            f"  {slices} slices: {package['size'] / 1e6:.0f} MB, {package['entries']} zip entries, "
            f"{package['pictures']} pictures"
        )
        ratio = first["view"] / first["plain"]
        print(
            f"    first image  view {first['view']:6.1f} (page {first['view page']:.1f} + picture "
            f"{first['picture 1']:.1f}; page again {first['view page again']:.1f})  plain {first['plain']:6.1f} "
            f"(files page {first['files page']:.1f} + jpeg {first['plain 1']:.1f})  {ratio:.2f}x: {verdict(ratio)}"
        )
        ratio = per["picture"] / per["plain"]
        print(
            f"    per image    picture {per['picture']:6.1f}  plain {per['plain']:6.1f}  {ratio:.2f}x: "
            f"{verdict(ratio)}   (portal CPU per GET: picture {cpu['picture']:.1f}, plain {cpu['plain']:.1f})"
        )
    for slices, times in results.get("browser", {}).items():
        view, plain = median(times["view"]) * 1000, median(times["plain"]) * 1000
        print(f"  Chromium, {slices} slices: first stack image {view:.1f}  plain JPEG {plain:.1f}  {view / plain:.2f}x")
    runs, closed = results["memory"][:-1], results["memory"][-1]["logged out"]
    growth = (runs[-1]["after"] - runs[0]["before"]) / len(runs)
    peak = max(run["peak"] - run["before"] for run in runs)
    met = growth <= TARGET_GROWTH_PER_SESSION_MB and peak <= TARGET_PEAK_MB
    ok &= met
    print(
        f"  memory, {len(runs)} sessions viewing every picture of the big package: RSS (MB) before/peak/after "
        + ", ".join(f"{r['before']}/{r['peak']}/{r['after']}" for r in runs)
        + f"; all logged out {closed}"
    )
    print(
        f"    growth {growth:.1f} MB a session (target <= {TARGET_GROWTH_PER_SESSION_MB}), a session's peak "
        f"+{peak} MB (target <= {TARGET_PEAK_MB}): {'met' if met else 'MISSED'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
