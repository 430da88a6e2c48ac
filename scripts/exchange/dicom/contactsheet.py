"""Contact sheets: one JPEG with a picture of every series of received media, so staff see what
arrived before they import it (`exchange inspect --contact-sheet`, and the upload notices).

One tile per series (patients, studies by date, series by number): the middle picture of the
series (exchange.dicom.previews), and under it the patient ID and name, the study date, the
modality, the series number and description and its image count. A series whose pictures cannot
be rendered gets a tile saying why. At most MAX_TILES tiles; the sheet says how many series it
leaves out. Like every preview, it is for a first look, never for diagnosis, and says so.

JPEG, not PNG: a sheet of 48 grey pictures is a few hundred KB as JPEG and several MB as PNG,
and every viewer opens it. The text is kept sharp by full-resolution colour (no chroma
subsampling) at quality 90.

The DICOM text is the sender's. It goes into pixels, not into a terminal or a page, so it needs
no escaping for a parser; but what staff read must be what is there: control, format and
bidirectional characters are shown escaped (exchange.untrusted), characters the font cannot draw
(outside Latin-1) as `\\uXXXX`, and each line is cut to its tile's width.

The pixel data is the sender's too, and decoders are C code. So the sheet is drawn in a child
process (`_sandboxed`) that first gives up root for good (the staff member's uid behind sudo,
else `nobody`), may not write to any file, gets bounded memory and CPU time and only the
descriptors of the files it reads, and hands back plain bytes: a JSON layout and the JPEG, which
the parent checks and writes but never decodes or unpickles. A decoder that crashes or hangs on
a hostile file costs that sheet, with the reason, and nothing else.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import json
import math
import os
import pwd
import resource
import select
import signal
import struct
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from PIL import Image as PILImage
from PIL import ImageDraw, ImageFont, ImageOps
from pydicom.pixels import get_decoder
from pydicom.uid import UID

from exchange import untrusted
from exchange.dicom import previews
from exchange.dicom.dicomdir import Series, Tree
from exchange.dicom.dicomfiles import READ_ERRORS
from exchange.errors import ExchangeError
from exchange.invoker import Invoker

MAX_TILES = 48  # 7 x 7 at most: every label still readable on one screen
TILE = 256  # px, a picture's longest side
MAX_COLUMNS = 8
PAD = 8
LINE = 16  # px a line of text takes (the default font at FONT_SIZE)
FONT_SIZE = 13
LABEL_LINES = 4
MIN_WIDTH = 640  # room for the heading however few series there are
JPEG_QUALITY = 90
ATTEMPTS = 3  # pictures of a series tried (the middle one, then the first and the last)

BACKGROUND = (24, 24, 24)
PICTURE_BOX = (0, 0, 0)
REASON_BOX = (80, 24, 24)
TEXT = (235, 235, 235)
WARNING = (255, 140, 90)

RENDER_SECONDS = 300  # wall clock and CPU for one sheet, then the child is stopped
MAX_OUTPUT = 64 << 20  # bytes read back from the child; a 48-tile sheet is about 1 MB
CLONE_NEWNET, CLONE_NEWUSER = 0x40000000, 0x10000000  # <linux/sched.h>, for the child's network
UNPRIVILEGED = "nobody"  # whom the renderer runs as when no staff member is behind sudo (cron)


class SheetError(ExchangeError):
    """No contact sheet; the message says why."""


@dataclass(frozen=True)
class Tile:
    series: Series
    lines: tuple[str, ...]  # the label, our words and the sender's text made printable
    pictures: tuple[previews.Picture, ...]  # tried in order until one renders


@dataclass
class Sheet:
    jpeg: bytes
    layout: dict  # width, height, tiles ([{box: [x, y, w, h], shown, reason}]), more
    series: int  # in the media
    more: int = 0  # not shown (beyond MAX_TILES)

    @property
    def tiles(self) -> list[dict]:
        return self.layout["tiles"]

    @property
    def unrendered(self) -> int:
        return sum(1 for tile in self.tiles if tile.get("shown") is not True)  # the child's word: no KeyError


@dataclass(frozen=True)
class Plan:
    tiles: list[Tile]
    heading: list[str]
    more: int
    series: int
    warning: str | None = None
    syntaxes: set[str] = field(default_factory=set)


def shown(value: object) -> str:
    """A value of the sender's as the sheet shows it: escaped like everywhere (exchange.untrusted),
    and what the default font cannot draw (beyond Latin-1) as \\uXXXX, never dropped."""
    text = untrusted.printable(untrusted.cut(value))  # a tile shows about 40 characters
    if all(ord(character) < 0x100 for character in text):
        return text
    return "".join(
        character if ord(character) < 0x100 else f"\\u{ord(character):04x}" if ord(character) < 0x10000
        else f"\\U{ord(character):08x}"
        for character in text
    )  # fmt: skip


def _date(value: object) -> str:
    text = str(value or "")
    return f"{text[:4]}-{text[4:6]}-{text[6:8]}" if len(text) == 8 and text.isdigit() else text


def _number(series: Series) -> tuple[bool, int]:
    try:
        return False, int(str(series.header.get("SeriesNumber")))
    except ValueError:
        return True, 0


def _pictures(series: Series) -> tuple[previews.Picture, ...]:
    """The middle picture of the series first (every frame counts), then the first and the last."""
    ends = previews.stack(series, 3)
    middle = ends[len(ends) // 2]
    return tuple([middle] + [p for p in ends if p != middle])[:ATTEMPTS]


def plan(tree: Tree, title: str, problems: int = 0, cap: int = MAX_TILES) -> Plan:
    """The tiles of the sheet (at most `cap`), its heading and what it leaves out."""
    tiles: list[Tile] = []
    studies = images = 0
    for patient in tree.patients.values():
        who = shown(f"{patient.id}  {patient.header.get('PatientName') or ''}".strip())
        for study in sorted(patient.studies.values(), key=lambda s: str(s.header.get("StudyDate") or "")):
            studies += 1
            when = shown(_date(study.header.get("StudyDate"))) or "no study date"
            for series in sorted(study.series.values(), key=_number):
                images += len(series.images)
                header = series.header
                frames = sum(previews.frames(image) for image in series.images)
                count = f"{len(series.images)} image{'' if len(series.images) == 1 else 's'}"
                number = shown(header.get("SeriesNumber") or "?")
                tiles.append(
                    Tile(
                        series,
                        (
                            who,
                            f"{when}  {shown(header.get('Modality') or 'OT')}",
                            f"series {number}  {shown(header.get('SeriesDescription') or '')}".rstrip(),
                            count + (f", {frames} frames" if frames != len(series.images) else ""),
                        ),
                        _pictures(series),
                    )
                )
    total = len(tiles)
    patients = len(tree.patients)
    heading = [
        f"Contact sheet: {shown(title)}",
        f"{patients} patient{'' if patients == 1 else 's'}, {studies} stud{'y' if studies == 1 else 'ies'}, "
        f"{total} series, {images} images; one picture per series. A first look, not for diagnosis.",
    ]
    warning = f"the check found {problems} problem{'' if problems == 1 else 's'}: do not import" if problems else None
    syntaxes = {p.image.instance.transfer_syntax for tile in tiles[:cap] for p in tile.pictures}
    return Plan(tiles[:cap], heading, max(0, total - cap), total, warning, syntaxes)


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=FONT_SIZE)  # FreeType's built-in font; a bitmap one without FreeType


def _fit(text: str, font, width: int) -> str:
    """`text`, cut with "..." where it would pass `width` px."""
    if font.getlength(text) <= width:
        return text
    low, high = 0, len(text)
    while low < high:  # the longest prefix that fits with the dots
        middle = (low + high + 1) // 2
        if font.getlength(text[:middle] + "...") <= width:
            low = middle
        else:
            high = middle - 1
    return text[:low] + "..."


def _wrap(text: str, font, width: int, lines: int) -> list[str]:
    words, out = text.split(" "), [""]
    for word in words:
        candidate = f"{out[-1]} {word}".strip()
        if font.getlength(candidate) <= width or not out[-1]:
            out[-1] = candidate
        else:
            out.append(word)
    if len(out) > lines:
        out = out[: lines - 1] + [" ".join(out[lines - 1 :])]
    return [_fit(line, font, width) for line in out]


def render_tile(tile: Tile) -> bytes | str:
    """The JPEG of the first of the tile's pictures that renders, else why the first did not."""
    first = None
    for picture in tile.pictures:
        instance = picture.image.instance
        try:
            with instance.source.open() as handle:
                return previews.render(handle, instance.transfer_syntax, picture.frame, size=TILE)
        except previews.PreviewError as error:
            reason = str(error)
        except READ_ERRORS as error:
            reason = f"not readable ({untrusted.printable(error)})"
        except Exception as error:  # noqa: BLE001 - whatever a sender's file makes a library raise
            reason = f"the renderer failed ({type(error).__name__})"
        first = first or reason
    return first or "no pictures"


def draw(sheet: Plan, rendered: list[bytes | str]) -> tuple[bytes, dict]:
    """The sheet's JPEG and its layout, from the tiles' JPEGs (or reasons) in tile order."""
    font = _font()
    count = len(sheet.tiles)
    columns = min(MAX_COLUMNS, max(1, math.ceil(math.sqrt(count))))
    rows = max(1, math.ceil(count / columns))
    cell_width, cell_height = TILE + PAD, TILE + LABEL_LINES * LINE + 2 * PAD
    heading_lines = sheet.heading + ([sheet.warning] if sheet.warning else [])
    top = PAD + len(heading_lines) * LINE + PAD
    width = max(PAD + columns * cell_width, MIN_WIDTH)
    height = top + rows * cell_height + (LINE + PAD if sheet.more else 0) + PAD
    picture = PILImage.new("RGB", (width, height), BACKGROUND)
    pen = ImageDraw.Draw(picture)
    for index, line in enumerate(heading_lines):
        colour = WARNING if line is sheet.warning else TEXT
        pen.text((PAD, PAD + index * LINE), _fit(line, font, width - 2 * PAD), font=font, fill=colour)
    layout: dict = {"width": width, "height": height, "tiles": [], "more": sheet.more}
    for index, (tile, found) in enumerate(zip(sheet.tiles, rendered, strict=True)):
        x = PAD + (index % columns) * cell_width
        y = top + (index // columns) * cell_height
        box = (x, y, x + TILE, y + TILE)
        reason = found if isinstance(found, str) else None
        if reason is None:
            try:
                image = PILImage.open(io.BytesIO(found))
                image.load()
            except Exception as error:  # noqa: BLE001 - never: the JPEG is previews' own
                reason = f"the renderer failed ({type(error).__name__})"
        if reason is None:
            pen.rectangle(box, fill=PICTURE_BOX)
            if max(image.size) < TILE:  # a 64 px MR slice would be a stamp among CTs
                image = ImageOps.contain(image, (TILE, TILE), PILImage.Resampling.BILINEAR)
            picture.paste(image.convert("RGB"), (x + (TILE - image.width) // 2, y + (TILE - image.height) // 2))
        else:
            pen.rectangle(box, fill=REASON_BOX)
            for number, line in enumerate(_wrap(f"no preview: {shown(reason)}", font, TILE - 2 * PAD, 6)):
                pen.text((x + PAD, y + PAD + number * LINE), line, font=font, fill=TEXT)
        for number, line in enumerate(tile.lines):
            pen.text((x, y + TILE + PAD // 2 + number * LINE), _fit(line, font, TILE), font=font, fill=TEXT)
        layout["tiles"].append({"box": [x, y, TILE, TILE], "shown": reason is None, "reason": reason})
    if sheet.more:
        more = f"and {sheet.more} more series not shown (a sheet shows {len(sheet.tiles)})"
        pen.text((PAD, height - PAD - LINE), _fit(more, font, width - 2 * PAD), font=font, fill=WARNING)
    out = io.BytesIO()
    picture.save(out, "JPEG", quality=JPEG_QUALITY, subsampling=0)
    return out.getvalue(), layout


def make(
    tree: Tree,
    title: str,
    keep: Iterable[int],
    who: Invoker | None = None,
    problems: int = 0,
    timeout: float = RENDER_SECONDS,
    cap: int = MAX_TILES,
) -> Sheet:
    """The contact sheet of `tree`, drawn in a confined child that reads only the descriptors
    `keep` (the sources' files) as `who` (None: UNPRIVILEGED when the tool runs as root);
    `problems`: how many the check found (the sheet then says "do not import")."""
    sheet = plan(tree, title, problems, cap)
    if not sheet.tiles:
        raise SheetError("no DICOM series to show")
    _preload(sheet.syntaxes)
    user = _renderer(who)
    jpeg, layout = _sandboxed(lambda: draw(sheet, [render_tile(tile) for tile in sheet.tiles]), keep, user, timeout)
    tiles = layout.get("tiles")
    if not isinstance(tiles, list) or len(tiles) != len(sheet.tiles) or not all(isinstance(t, dict) for t in tiles):
        raise SheetError("the renderer's answer was not a sheet")
    return Sheet(jpeg, layout, sheet.series, sheet.more)


def _preload(syntaxes: set[str]) -> None:
    """What the child would import on first use, imported here: a child that may write no file
    must not have to compile a module, and each sheet's child then starts ready."""
    PILImage.init()
    _font()
    for syntax in syntaxes:
        with contextlib.suppress(Exception):  # a syntax pydicom has no decoder for: the tile says so
            get_decoder(UID(syntax)).is_available  # noqa: B018 - imports the plugins


def _renderer(who: Invoker | None) -> tuple[int, int] | None:
    """(uid, gid) the child renders as; None: as the tool runs (it is not root)."""
    if os.geteuid() != 0:
        return None
    if who is not None:
        return who.uid, who.gid
    try:
        entry = pwd.getpwnam(UNPRIVILEGED)
    except KeyError:
        raise SheetError(f"no account {UNPRIVILEGED!r} to render as; pictures are never decoded as root") from None
    return entry.pw_uid, entry.pw_gid


def _sandboxed(
    work: Callable[[], tuple[bytes, dict]], keep: Iterable[int], user: tuple[int, int] | None, timeout: float
) -> tuple[bytes, dict]:
    """`work()` in a forked child, confined (`_confine`); its (JPEG, layout), or SheetError."""
    keep = set(keep)
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        status = 1
        try:
            os.setpgid(0, 0)  # its own group: whatever it might start is killed with it
            os.close(reader)
            _confine(keep | {writer}, user, timeout)
            jpeg, layout = work()
            data = json.dumps(layout).encode()
            answer = b"OK" + struct.pack(">Q", len(data)) + data + jpeg
            status = 0
        except BaseException as error:  # noqa: BLE001 - the child reports whatever stopped it
            answer = b"ER" + f"{type(error).__name__}: {error}"[:400].encode("utf-8", "replace")
        try:
            view = memoryview(answer)
            while view:
                view = view[os.write(writer, view) :]
        finally:
            os._exit(status)
    os.close(writer)
    try:
        answer = _read(reader, timeout)
    finally:
        os.close(reader)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)  # done or not: nothing of it stays
        _, status = os.waitpid(pid, 0)
    return _answer(answer, status)


def _read(reader: int, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    chunks, size = [], 0
    waiting = select.poll()  # not select(): with every inspected file open, the pipe may be above 1024
    waiting.register(reader, select.POLLIN)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise SheetError(f"drawing took longer than {int(timeout)} s; stopped")
        if not waiting.poll(max(1, int(left * 1000))):
            continue
        chunk = os.read(reader, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > MAX_OUTPUT:
            raise SheetError(f"the renderer's answer is larger than {MAX_OUTPUT} bytes; not a sheet")
        chunks.append(chunk)


def _answer(answer: bytes, status: int) -> tuple[bytes, dict]:
    if answer[:2] == b"ER":
        raise SheetError(f"the renderer failed: {untrusted.printable(answer[2:].decode('utf-8', 'replace'))}")
    if answer[:2] != b"OK" or len(answer) < 10:
        if os.WIFSIGNALED(status):
            raise SheetError(f"the renderer stopped ({signal.Signals(os.WTERMSIG(status)).name})")
        raise SheetError(f"the renderer stopped (exit status {os.waitstatus_to_exitcode(status)})")
    (length,) = struct.unpack(">Q", answer[2:10])
    try:
        layout = json.loads(answer[10 : 10 + length])
    except ValueError:
        layout = None
    jpeg = answer[10 + length :]
    if not isinstance(layout, dict) or jpeg[:3] != b"\xff\xd8\xff" or jpeg[-2:] != b"\xff\xd9":
        raise SheetError("the renderer's answer was not a sheet")
    return jpeg, layout


def _confine(keep: set[int], user: tuple[int, int] | None, seconds: float) -> None:
    """In the child, before it reads anything: only the descriptors in `keep` (and /dev/null for
    0-2), no file it could create or grow, bounded memory and CPU, root given up for good."""
    sys.dont_write_bytecode = True
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write beyond the limit fails, rather than killing
    null = os.open("/dev/null", os.O_RDWR)
    for standard in (0, 1, 2):
        os.dup2(null, standard)
    keep = keep | {0, 1, 2}
    last = -1
    for descriptor in [*sorted(keep), resource.getrlimit(resource.RLIMIT_NOFILE)[1]]:
        if descriptor > last + 1:
            os.closerange(last + 1, descriptor)
        last = descriptor
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    cpu = max(1, int(seconds))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    previews.limit_memory()
    _no_network()
    if user is not None:
        uid, gid = user
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        if os.geteuid() == 0 or os.getuid() == 0:
            raise SheetError("could not give up root")
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))  # no process of its own: nothing outlives it
    _no_new_privileges()
    os.nice(5)


def _no_network() -> None:
    """A network namespace of its own, with no interface but a loopback that is down: the child
    is a fork of the tool, whose memory holds what it must not send anywhere (the site's
    transport credentials, recipients). As root a plain unshare; as anyone else through a user
    namespace, where the kernel allows one (else the rest of the confinement still holds)."""
    unshare = ctypes.CDLL(None, use_errno=True).unshare
    for flags in (CLONE_NEWNET, CLONE_NEWUSER | CLONE_NEWNET):
        if unshare(flags) == 0:
            return


def _no_new_privileges() -> None:
    """prctl(PR_SET_NO_NEW_PRIVS): no setuid program the child might run gives rights back."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(38, 1, 0, 0, 0)
