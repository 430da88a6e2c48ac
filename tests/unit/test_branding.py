"""The site's logo and accent colour: refused with a message naming the host, the key and what
is wrong, before anything is deployed; the portal checks its installed copy the same way."""

import struct

import pytest

from exchange.branding import LOGO_MAX_BYTES, contrast_with_white, read_logo
from roles import REPO
from roles.settings import HostSettingsError, host_settings, site_logo
from tests.sites import ACCENT, branded_site, logo_png, outbox_site


def jpeg(width: int, height: int) -> bytes:
    """A JPEG's header as far as a size: SOI, a JFIF segment, a baseline frame header."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0"
    frame = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\0"
    return b"\xff\xd8" + app0 + frame + b"\xff\xd9"


def refused(site: dict) -> str:
    with pytest.raises(HostSettingsError) as caught:
        host_settings("exchange01", {"site": site})
    return str(caught.value)


def test_a_png_and_a_jpeg_logo_are_taken_with_their_size(tmp_path):
    (tmp_path / "logo.png").write_bytes(logo_png(120))
    (tmp_path / "logo.jpg").write_bytes(jpeg(640, 160))
    png = site_logo(host_settings("exchange01", {"site": branded_site(str(tmp_path / "logo.png"))}).site)
    assert (png.media_type, png.width, png.height) == ("image/png", 120, 120)
    jpg = read_logo(tmp_path / "logo.jpg")
    assert (jpg.media_type, jpg.width, jpg.height) == ("image/jpeg", 640, 160)
    assert png.version != jpg.version and len(png.version) == 16


def test_a_relative_logo_is_the_repositorys_file():
    assert refused(branded_site("inventory/no-such-logo.png")) == (
        f"inventory host exchange01: site.logo: {REPO}/inventory/no-such-logo.png: no such file"
    )


def test_a_logo_that_is_missing_or_no_png_or_jpeg_is_refused_naming_host_key_and_file(tmp_path):
    missing = tmp_path / "logo.png"
    assert refused(branded_site(str(missing))) == f"inventory host exchange01: site.logo: {missing}: no such file"
    gif = tmp_path / "logo.gif"
    gif.write_bytes(b"GIF89a" + b"\0" * 100)
    assert refused(branded_site(str(gif))) == (
        f"inventory host exchange01: site.logo: {gif}: not a PNG or JPEG image (told by its content, not its name)"
    )
    named_png = tmp_path / "really-a-gif.png"
    named_png.write_bytes(gif.read_bytes())
    assert "not a PNG or JPEG image" in refused(branded_site(str(named_png)))
    svg = tmp_path / "logo.svg"
    svg.write_text('<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>')
    assert refused(branded_site(str(svg))) == (
        f"inventory host exchange01: site.logo: {svg}: an SVG image; a logo must be PNG or JPEG "
        "(an SVG can carry script)"
    )
    assert (
        refused(branded_site(str(tmp_path))) == f"inventory host exchange01: site.logo: {tmp_path}: not a regular file"
    )


def test_a_logo_too_big_damaged_or_too_many_pixels_is_refused(tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(logo_png(16) + b"\0" * LOGO_MAX_BYTES)
    assert refused(branded_site(str(big))) == (
        f"inventory host exchange01: site.logo: {big}: {big.stat().st_size:,} bytes; a logo may be at most "
        "200,000 bytes (make it smaller)"
    )
    cut = tmp_path / "cut.png"
    cut.write_bytes(logo_png(16)[:20])
    assert refused(branded_site(str(cut))) == (
        f"inventory host exchange01: site.logo: {cut}: a damaged PNG image (no size in its header)"
    )
    frameless = tmp_path / "frameless.jpg"
    frameless.write_bytes(b"\xff\xd8\xff\xda" + b"\0" * 50)
    assert "a damaged JPEG image (no size in its header)" in refused(branded_site(str(frameless)))
    wide = tmp_path / "wide.jpg"
    wide.write_bytes(jpeg(4000, 200))
    assert refused(branded_site(str(wide))) == (
        f"inventory host exchange01: site.logo: {wide}: 4000 x 200 pixels; a logo may be at most 2000 pixels on "
        "each side"
    )


@pytest.mark.parametrize(
    ("colour", "message"),
    [
        ("blue", "must be a colour written #rrggbb, e.g. #1a5fb4 (got 'blue')"),
        ("#15b", "must be a colour written #rrggbb, e.g. #1a5fb4 (got '#15b')"),
        ("#1a5fb4;}", "must be a colour written #rrggbb, e.g. #1a5fb4 (got '#1a5fb4;}')"),
        (
            "#ffcc00",
            "contrast with white is 1.51:1, below the 4.5:1 that WCAG 2.x asks for text (the page shows it as link "
            "text on white and behind white button text): choose a darker colour (got '#ffcc00')",
        ),
        ("#777777", "contrast with white is 4.47:1, below the 4.5:1"),  # just too light
    ],
)
def test_an_accent_colour_unreadable_against_white_is_refused_naming_the_key(colour, message):
    assert f"inventory host exchange01: site.accent_colour: {message}" in refused(
        outbox_site() | {"accent_colour": colour}
    )


def test_an_accent_colour_readable_against_white_is_taken_in_lower_case():
    assert contrast_with_white("#767676") >= 4.5 > contrast_with_white("#777777")
    site = host_settings("exchange01", {"site": outbox_site() | {"accent_colour": "#0B5394"}}).site
    assert site.accent_colour == ACCENT
    assert host_settings("exchange01", {"site": outbox_site()}).site.accent_colour == "#1a5fb4"  # the default
