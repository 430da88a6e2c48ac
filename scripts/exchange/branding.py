"""The site's own look on the web page: its logo and its accent colour (site data `logo` and
`accent_colour`), checked here for the deploy (the admin's file) and for the portal (the
installed copy) alike.

A logo is a PNG or JPEG, told by its content, not its name. SVG is refused: an SVG is a
document that can carry script, and a raster image cannot.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

LOGO_MAX_BYTES = 200_000  # a logo on every page, on a phone's connection
LOGO_MAX_PIXELS = 2000  # per side: larger only costs a phone memory, the page shows it 3.5 rem high
MIN_CONTRAST = 4.5  # WCAG 2.x for normal text: the accent is link text on white, and button behind white text
COLOUR = re.compile(r"^#[0-9a-fA-F]{6}$")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8\xff"
# JPEG's start-of-frame markers (which carry the size): C0-CF except DHT (C4), JPG (C8) and DAC (CC).
JPEG_FRAMES = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


class LogoError(ValueError):
    """A logo that cannot be used; the message says what is wrong with it and what would do."""


@dataclass(frozen=True)
class Logo:
    content: bytes
    media_type: str  # image/png or image/jpeg
    width: int
    height: int

    @property
    def version(self) -> str:
        """Part of the logo's URL: a changed logo is a new URL, so browsers may keep one for long."""
        return hashlib.sha256(self.content).hexdigest()[:16]


def read_logo(path: Path | str) -> Logo:
    """The logo at `path`, checked; LogoError saying what is wrong."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise LogoError(f"{path}: no such file") from None
    except OSError as exc:
        raise LogoError(f"{path}: cannot read it: {exc.strerror}") from None
    info = os.fstat(descriptor)
    if not stat.S_ISREG(info.st_mode) or info.st_size > LOGO_MAX_BYTES:
        os.close(descriptor)  # a FIFO would never end, a device not either
        raise LogoError(_too_big(path, info.st_size) if stat.S_ISREG(info.st_mode) else f"{path}: not a regular file")
    with os.fdopen(descriptor, "rb") as handle:
        content = handle.read(LOGO_MAX_BYTES + 1)
    if len(content) > LOGO_MAX_BYTES:  # it grew while being read
        raise LogoError(_too_big(path, len(content)))
    return logo_from(content, str(path))


def _too_big(path: Path | str, size: int) -> str:
    return f"{path}: {size:,} bytes; a logo may be at most {LOGO_MAX_BYTES:,} bytes (make it smaller)"


def logo_from(content: bytes, where: str) -> Logo:
    if content.startswith(PNG_SIGNATURE):
        media_type, size = "image/png", _png_size(content)
    elif content.startswith(JPEG_SOI):
        media_type, size = "image/jpeg", _jpeg_size(content)
    elif b"<svg" in content[:4096].lower():
        raise LogoError(f"{where}: an SVG image; a logo must be PNG or JPEG (an SVG can carry script)")
    else:
        raise LogoError(f"{where}: not a PNG or JPEG image (told by its content, not its name)")
    if size is None:
        raise LogoError(f"{where}: a damaged {media_type.split('/')[1].upper()} image (no size in its header)")
    width, height = size
    if not (0 < width <= LOGO_MAX_PIXELS and 0 < height <= LOGO_MAX_PIXELS):
        raise LogoError(
            f"{where}: {width} x {height} pixels; a logo may be at most {LOGO_MAX_PIXELS} pixels on each side"
        )
    return Logo(content, media_type, width, height)


def _png_size(content: bytes) -> tuple[int, int] | None:
    # The first chunk is IHDR: length, type, then width and height.
    if len(content) < 24 or content[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", content[16:24])


def _jpeg_size(content: bytes) -> tuple[int, int] | None:
    position = 2
    while position + 4 <= len(content):
        if content[position] != 0xFF:
            return None
        marker = content[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            position += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, or the scan began without a frame header
            return None
        (length,) = struct.unpack(">H", content[position + 2 : position + 4])
        if marker in JPEG_FRAMES:
            if position + 9 > len(content):
                return None
            height, width = struct.unpack(">HH", content[position + 5 : position + 9])
            return width, height
        position += 2 + length
    return None


def contrast_with_white(colour: str) -> float:
    """WCAG 2.x contrast ratio of `colour` (#rrggbb) and white, 1 to 21."""
    channels = [int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    luminance = 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]
    return 1.05 / (luminance + 0.05)


def accent_colour(value: str) -> str:
    """`value` as the page uses it (lower case), or ValueError saying why it cannot be."""
    if not COLOUR.match(value):
        raise ValueError("must be a colour written #rrggbb, e.g. #1a5fb4")
    ratio = contrast_with_white(value)
    if ratio < MIN_CONTRAST:
        raise ValueError(
            f"contrast with white is {math.floor(ratio * 100) / 100:.2f}:1, below the {MIN_CONTRAST}:1 that WCAG 2.x asks for text "
            "(the page shows it as link text on white and behind white button text): choose a darker colour"
        )
    return value.lower()
