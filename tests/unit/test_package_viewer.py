"""A study package views itself: its INDEX.HTM and series pages opened from file:// in headless
Chromium (Debian's), with JavaScript on and off; screenshots in reports/screenshots/."""

from __future__ import annotations

import json
import subprocess
import zipfile
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from exchange.dicom import previews, webcontent
from tests.dicom_synth import clone, ct_study
from tests.unit.test_package import package

CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parents[2] / "reports" / "screenshots"
playwright = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory):
    """One patient: a CT series of 230 slices (capped), a multi-frame ultrasound, a JPEG 2000
    radiograph and a 12-bit JPEG that cannot be decoded."""
    root = tmp_path_factory.mktemp("viewer-study")
    ct_study(root / "ct", 230)
    for name in ("RG1_J2KR.dcm", "color3d_jpeg_baseline.dcm", "JPEG-lossy.dcm"):
        clone(Path(get_testdata_file(name, download=False)), root / name.split(".")[0], 1)
    made = package(root, root / "ct", root / "RG1_J2KR", root / "color3d_jpeg_baseline", root / "JPEG-lossy")
    out = root / "unpacked"
    subprocess.run(["unzip", "-q", str(made.path), "-d", str(out)], check=True)
    return made, out


def by_modality(out: Path) -> dict[str, dict]:
    stacks = json.loads((out / webcontent.STACKS).read_text())
    return {series["modality"]: series for series in stacks["series"]}


def test_the_package_carries_stored_previews_and_pages(unpacked):
    made, out = unpacked
    series = by_modality(out)
    assert len(series["CT"]["pictures"]) == previews.MAX_PER_SERIES and series["CT"]["frames"] == 230
    assert len(series["US"]["pictures"]) == 120  # every frame of the clip
    assert len(series["CR"]["pictures"]) == 1
    assert series["NM"]["pictures"] == [] and "cannot be decoded" in next(iter(series["NM"]["problems"]))
    with zipfile.ZipFile(made.path) as archive:
        jpegs = [i for i in archive.infolist() if i.filename.endswith(".JPG")]
        assert jpegs and all(i.compress_type == zipfile.ZIP_STORED for i in jpegs)  # read in place by the portal
    page = (out / series["NM"]["page"]).read_text()
    assert "This series cannot be shown here" in page and "Not for diagnosis" in page
    capped = (out / series["CT"]["page"]).read_text()
    assert "Shown: 200 of the 230 images, spread evenly over the series" in capped


def _browser():
    manager = playwright.sync_playwright().start()
    return manager, manager.chromium.launch(executable_path=CHROMIUM, headless=True)


@pytest.mark.parametrize("javascript", [False, True], ids=["script-off", "script-on"])
def test_index_and_series_pages_show_the_images_from_file_urls(unpacked, javascript):
    _, out = unpacked
    SHOTS.mkdir(parents=True, exist_ok=True)
    series = by_modality(out)
    manager, browser = _browser()
    try:
        for width, height, device in ((1280, 900, "desktop"), (390, 844, "phone")):
            context = browser.new_context(java_script_enabled=javascript, viewport={"width": width, "height": height})
            page = context.new_page()
            page.goto((out / "INDEX.HTM").as_uri())
            thumbnails = page.locator("ul.series img")
            assert thumbnails.count() == 3  # the undecodable series says so instead
            for index in range(thumbnails.count()):
                thumbnails.nth(index).scroll_into_view_if_needed()
                thumbnails.nth(index).evaluate("img => img.decode()")
                assert thumbnails.nth(index).evaluate("img => img.naturalWidth") > 0
            assert "Not for diagnosis" in page.inner_text("body")
            page.screenshot(path=str(SHOTS / f"package-index-{device}-js-{javascript}.png"), full_page=True)
            for modality, shown in series.items():
                page.goto((out / shown["page"]).as_uri())
                assert "Not for diagnosis" in page.inner_text("body")
                figures = page.locator("div.stack figure img")
                assert figures.count() == len(shown["pictures"])
                if not javascript and figures.count():
                    for index in (0, figures.count() - 1):
                        figures.nth(index).scroll_into_view_if_needed()
                        figures.nth(index).evaluate("img => img.decode()")
                        assert figures.nth(index).evaluate("img => img.naturalWidth") > 0
                page.screenshot(path=str(SHOTS / f"package-{modality}-{device}-js-{javascript}.png"))
            context.close()
    finally:
        browser.close()
        manager.stop()


def test_the_script_pages_through_the_stack_by_keys_and_slider(unpacked):
    _, out = unpacked
    ct = by_modality(out)["CT"]
    manager, browser = _browser()
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto((out / ct["page"]).as_uri())
        stack, shown = page.locator("div.stack"), page.locator("img.stack-image")
        view = page.locator(".stack-view")
        assert stack.get_attribute("data-current") == "1"
        view.focus()
        for _ in range(3):
            page.keyboard.press("ArrowDown")
        assert stack.get_attribute("data-current") == "4"
        assert shown.get_attribute("src").endswith("IM0004.JPG")
        page.wait_for_function("document.querySelector('img.stack-image').naturalWidth > 0")
        page.keyboard.press("End")
        assert stack.get_attribute("data-current") == str(len(ct["pictures"]))
        page.keyboard.press("PageUp")
        assert stack.get_attribute("data-current") == str(len(ct["pictures"]) - 10)
        page.keyboard.press("Home")
        view.hover()
        page.mouse.wheel(0, 120)
        assert stack.get_attribute("data-current") == "2"
        page.locator(".stack-controls input[type=range]").fill("50")
        assert stack.get_attribute("data-current") == "50"
        view.focus()
        page.keyboard.press("+")
        assert "scale(1.25)" in shown.get_attribute("style")
        assert page.locator("div.stack figure").first.is_hidden()  # one picture at a time
        assert errors == []
    finally:
        browser.close()
        manager.stop()


def test_the_senders_dicom_text_is_escaped_on_the_pages(tmp_path):
    # A sender's series description, patient name and study description land in HTML and JSON.
    from pydicom import dcmread

    hostile = "<script>alert(1)</script>&<img src=x onerror=alert(2)>"
    path = clone(Path(get_testdata_file("MR_small.dcm", download=False)), tmp_path / "in", 1)[0]
    ds = dcmread(path)
    ds.SeriesDescription, ds.StudyDescription, ds.PatientName = hostile[:64], hostile[:64], "<b>X</b>^Y"
    ds.save_as(path)
    made = package(tmp_path, tmp_path / "in")
    with zipfile.ZipFile(made.path) as archive:
        for name in ("INDEX.HTM", "IHE_PDI/SE0001.HTM"):
            page = archive.read(name).decode()
            assert "<script>alert" not in page and "<img src=x" not in page and "<b>X" not in page
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
        assert json.loads(archive.read(webcontent.STACKS))["series"][0]["series_description"] == hostile[:64]
