"""Preview images of a study: JPEG pictures rendered from the DICOM pixel data, for the package's
own web pages (IHE PDI web content), the portal's view page and staff's contact sheets.

A preview is for looking, never for diagnosis: uncompressed little-endian grey pixel data is
read straight from the file, the rest is decoded by pydicom (its pylibjpeg plugins for JPEG,
JPEG-LS and RLE) or, for JPEG 2000, by OpenJPEG through Pillow at a reduced resolution level
(the codec skips the finest wavelet levels, so a 2,000 px radiograph costs a quarter of its full
decode); the grey values go through the modality rescale and the first window the image carries
(PS3.3 C.11.2.1.2), else the modality's usual window, else the image's own range; MONOCHROME1 is
inverted, palette and YBR colour become RGB. Each picture is downscaled to at most PREVIEW_SIZE
on its longest side.

What a sender's file may ask for is bounded before anything is decoded: its dataset is read
through exchange.dicom.reading (a deflated one inflated within its bounds); a frame of more than
MAX_FRAME_PIXELS is not previewed, by its header's size and by its codestream's own (JPEG 2000's
SIZ, JPEG's and JPEG-LS's frame header), which decoders go by: one that differs from the header
is refused too; Pillow's own check is set to the same bound. A series' stack holds at most
MAX_PER_SERIES pictures, spread evenly over its images and frames. A renderer may hold at most
EXTRA_MEMORY more than it started with (`limit_memory`: the package's workers, the contact
sheet's child): a file that asks for more fails its own picture, "too large to preview".
"""

from __future__ import annotations

import contextlib
import functools
import io
import multiprocessing
import os
import resource
import signal
import struct
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import BinaryIO, NamedTuple

import numpy as np
from PIL import Image as PILImage
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, get_decoder, pixel_array
from pydicom.uid import UID, JPEGLSTransferSyntaxes, JPEGTransferSyntaxes, RLELossless

from exchange import untrusted
from exchange.dicom import reading
from exchange.dicom.dicomdir import Image, Series
from exchange.dicom.dicomfiles import READ_ERRORS, Source

PREVIEW_SIZE = 512  # px, the longest side: sharp on a phone, small in the zip (about 30 KB)
MAX_PER_SERIES = 200  # pictures in a series' stack: enough to page through, fast to render
MAX_FRAME_PIXELS = 40_000_000  # above (a 6,000 x 6,000 frame): not previewed
PILImage.MAX_IMAGE_PIXELS = MAX_FRAME_PIXELS  # Pillow's own check, behind ours (it refuses above twice this)
EXTRA_MEMORY = 3 << 30  # bytes a renderer may allocate beyond what it starts with: a 40 Mpx frame, decoded
JPEG_QUALITY = 85
# The window a grey image gets when it carries none (centre, width), in the modality's units.
USUAL_WINDOWS = {"CT": (40.0, 400.0)}  # soft tissue in Hounsfield units
IMPLICIT_LITTLE_ENDIAN = "1.2.840.10008.1.2"
NATIVE_LITTLE_ENDIAN = {IMPLICIT_LITTLE_ENDIAN, "1.2.840.10008.1.2.1"}
JPEG_2000 = {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202",
             "1.2.840.10008.1.2.4.203"}  # fmt: skip
JPEG = set(JPEGTransferSyntaxes) | set(JPEGLSTransferSyntaxes)  # decoded by pydicom, its frame size checked here
# Markers of a JPEG frame header: SOF0-3, 5-7, 9-11, 13-15 (ISO 10918-1 B.2.2), the hierarchical
# DHP (B.3.2, the whole image's size) and JPEG-LS's SOF55 (14495-1 C.2.2).
_JPEG_FRAME_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xDE, 0xF7}
_PIXEL_HEADER = [
    "Modality", "PhotometricInterpretation", "Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "BitsStored",
    "PixelRepresentation", "NumberOfFrames", "RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth",
    "VOILUTFunction", "ModalityLUTSequence", "VOILUTSequence",
]  # fmt: skip
_ENCAPSULATED = b"\xe0\x7f\x10\x00"  # (7FE0,0010), the only pixel data that is encapsulated


class PreviewError(Exception):
    """This picture cannot be previewed; the message says why, in a few words for the page."""


@dataclass(frozen=True)
class Picture:
    """One picture of a series' stack: a frame of one of its images."""

    image: Image
    frame: int  # 0 for a single-frame image


def frames(image: Image) -> int:
    try:
        return max(1, int(str(image.instance.header.get("NumberOfFrames") or 1)))
    except ValueError:
        return 1


def stack(series: Series, cap: int = MAX_PER_SERIES) -> list[Picture]:
    """The series' pictures in order (every frame of every image), or `cap` of them spread
    evenly from the first to the last; never more than `cap` are picked."""
    return [Picture(series.images[i], frame) for i, frame in spread([frames(image) for image in series.images], cap)]


def spread(counts: Sequence[int], cap: int = MAX_PER_SERIES) -> list[tuple[int, int]]:
    """(image, frame) of every frame of images with these frame counts, in order, or of `cap`
    of them spread evenly from the first to the last."""
    total = sum(counts)
    wanted = range(total) if total <= cap else sorted({round(i * (total - 1) / (cap - 1)) for i in range(cap)})
    picked, image_index, before = [], 0, 0
    for number in wanted:
        while number >= before + counts[image_index]:
            before += counts[image_index]
            image_index += 1
        picked.append((image_index, number - before))
    return picked


def render(handle: BinaryIO, transfer_syntax: str, frame: int = 0, size: int = PREVIEW_SIZE) -> bytes:
    """The JPEG preview of one frame of the DICOM file open in `handle` (whose transfer syntax
    was read as `transfer_syntax`)."""
    try:
        read = reading.whole(handle, _PIXEL_HEADER, stop_before_pixels=True)
        header = read.dataset
        if str(header.file_meta.get("TransferSyntaxUID")) != transfer_syntax:
            raise PreviewError("its file changed since it was read")
        _check_bounds(header, frame)
        words = _native_words(read.data, header, str(read.encoding), frame)
        if words is not None:
            picture = _display(words, header, stored_bits=int(header.get("BitsStored") or words.dtype.itemsize * 8))
        elif transfer_syntax in JPEG_2000:
            handle.seek(0)
            picture = _jpeg_2000(handle, header, frame, size)
        else:
            picture = _decoded(read, header, frame)
    except PreviewError:
        raise
    except reading.TooLarge as error:
        raise PreviewError(f"too large to preview ({error})") from None
    except MemoryError:
        raise PreviewError("too large to preview") from None
    except Exception as exc:  # noqa: BLE001 - a sender's pixel data may make a decoder raise anything
        raise PreviewError(_reason(exc, transfer_syntax)) from None
    picture.thumbnail((size, size), PILImage.Resampling.BILINEAR, reducing_gap=2.0)
    out = io.BytesIO()
    picture.save(out, "JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


def _reason(exc: Exception, transfer_syntax: str) -> str:
    syntax = UID(transfer_syntax)
    try:
        available = not syntax.is_compressed or get_decoder(syntax).is_available
    except NotImplementedError:  # pydicom knows no decoder for it at all
        available = False
    if not available:
        return f"no decoder for its transfer syntax ({syntax.name})"
    return "its pixel data cannot be decoded"


def _check_bounds(header: Dataset, frame: int) -> None:
    if "Rows" not in header or "Columns" not in header:
        raise PreviewError("not an image")
    pixels = int(header.Rows) * int(header.Columns) * int(header.get("SamplesPerPixel") or 1)
    if pixels == 0:
        raise PreviewError("not an image")
    if pixels > MAX_FRAME_PIXELS:
        raise PreviewError(f"too large to preview ({header.Columns} x {header.Rows})")
    if frame >= _frame_count(header):
        raise PreviewError(f"no frame {frame + 1}")


def _frame_count(header: Dataset) -> int:
    return int(str(header.get("NumberOfFrames") or 1))


def _check_size(header: Dataset, found: tuple[int, int, int] | None, kind: str) -> None:
    """Decoders make a frame of its codestream's own size (columns, rows, samples), whatever the
    header says (which _check_bounds held to MAX_FRAME_PIXELS): another size is refused."""
    said = (int(header.Columns), int(header.Rows), int(header.get("SamplesPerPixel") or 1))
    if found is None:
        raise PreviewError(f"its {kind} data gives no frame size")
    if found != said:
        raise PreviewError(f"its {kind} frame is {_size(*found)}, its header says {_size(*said)}")


def _size(columns: int, rows: int, samples: int) -> str:
    return f"{columns} x {rows}" + (f" x {samples}" if samples != 1 else "")


def _native_words(handle: BinaryIO, header: Dataset, transfer_syntax: str, frame: int) -> np.ndarray | None:
    """One grey frame of uncompressed little-endian data as the file's own words, read in place
    (most of a CT's preview time was pydicom's decoding machinery); None when pydicom decodes.
    The display table masks the unused high bits and extends the sign, as pydicom would."""
    if transfer_syntax not in NATIVE_LITTLE_ENDIAN or int(header.get("SamplesPerPixel") or 1) != 1:
        return None
    if str(header.get("PhotometricInterpretation") or "").upper() not in ("MONOCHROME1", "MONOCHROME2"):
        return None
    if "ModalityLUTSequence" in header or "VOILUTSequence" in header:
        return None
    allocated = int(header.get("BitsAllocated") or 0)
    stored = int(header.get("BitsStored") or allocated)
    if allocated not in (8, 16) or not 1 <= stored <= allocated:
        return None
    # dcmread stopped before the pixel data: its element header is next (PS3.5 7.1)
    element = handle.read(12)
    if element[:4] != b"\xe0\x7f\x10\x00":
        return None
    if transfer_syntax == IMPLICIT_LITTLE_ENDIAN:
        (length,), start = struct.unpack("<I", element[4:8]), 8
    elif element[4:6] in (b"OW", b"OB"):
        (length,), start = struct.unpack("<I", element[8:12]), 12
    else:
        return None
    rows, columns = int(header.Rows), int(header.Columns)
    frame_bytes = rows * columns * allocated // 8
    if length == 0xFFFFFFFF or length < (frame + 1) * frame_bytes:
        return None  # encapsulated or short: pydicom says what is wrong
    handle.seek(start - len(element) + frame * frame_bytes, io.SEEK_CUR)
    data = handle.read(frame_bytes)
    if len(data) != frame_bytes:
        return None
    return np.frombuffer(data, dtype="<u2" if allocated == 16 else np.uint8).reshape(rows, columns)


def _decoded(read: reading.Read, header: Dataset, frame: int) -> PILImage.Image:
    """One frame decoded by pydicom: a JPEG or JPEG-LS one only if its codestream is the size the
    header says (RLE is decoded at the header's size; no other codestream is decoded unchecked)."""
    syntax = UID(str(header.file_meta.TransferSyntaxUID))
    if syntax in JPEG:
        _check_size(header, _jpeg_size(_encapsulated(read.data, frame, _frame_count(header))), "JPEG")
    elif syntax.is_encapsulated and syntax != RLELossless:
        raise PreviewError(f"no decoder for its transfer syntax ({syntax.name})")
    read.data.seek(0)
    pixel_module = Dataset()  # what decoding needs; the rescale and window are the header's
    # The frame found as _encapsulated found it (the same count, no extended offset table): the one checked.
    pixels = pixel_array(
        read.data, index=frame, ds_out=pixel_module, transfer_syntax_uid=read.encoding,
        number_of_frames=_frame_count(header), extended_offsets=None,
    )  # fmt: skip
    header.update(pixel_module)
    return _display(pixels, header)


def _encapsulated(data: BinaryIO, frame: int, count: int) -> bytes:
    """One frame's codestream, from the encapsulated pixel data element at `data`'s position
    (PS3.5 A.4), found as pydicom's decoders find it (get_frame)."""
    element = data.read(12)
    if element[:4] != _ENCAPSULATED or element[8:] != b"\xff\xff\xff\xff":
        raise PreviewError("its pixel data cannot be decoded")
    return get_frame(data, frame, number_of_frames=count)


def _jpeg_size(codestream: bytes) -> tuple[int, int, int] | None:
    """(columns, rows, components) of a JPEG or JPEG-LS codestream: its first frame header, the
    marker segments read up to its first scan; None without one, or with JPEG-LS's oversize
    dimensions (an LSE segment of ID 4, 14495-1 C.2.4.1.4), which a decoder would go by."""
    if codestream[:2] != b"\xff\xd8":
        return None
    at, found = 2, None
    while at + 4 <= len(codestream) and codestream[at] == 0xFF:
        marker = codestream[at + 1]
        if marker == 0xFF:  # a fill byte
            at += 1
            continue
        if marker == 0xDA:  # the first scan: the frame header came before it
            break
        if marker in _JPEG_FRAME_MARKERS and found is None and at + 10 <= len(codestream):
            rows, columns = struct.unpack(">HH", codestream[at + 5 : at + 9])
            found = (columns, rows, codestream[at + 9])
        elif marker == 0xF8 and at + 4 < len(codestream) and codestream[at + 4] == 4:
            return None
        at += 2 + struct.unpack(">H", codestream[at + 2 : at + 4])[0]
    return found


def _jpeg_2000(handle: BinaryIO, header: Dataset, frame: int, size: int) -> PILImage.Image:
    dataset = reading.whole(handle).dataset
    codestream = get_frame(dataset.PixelData, frame, number_of_frames=_frame_count(dataset))
    start = codestream.find(b"\xff\x4f\xff\x51")  # some writers wrap it in a JP2 file, which DICOM does not allow
    if start < 0:
        raise PreviewError("its JPEG 2000 data has no codestream")
    codestream = codestream[start:]
    main = _codestream_header(codestream)
    _check_size(header, main.size, "JPEG 2000")
    picture = PILImage.open(io.BytesIO(codestream))
    picture.reduce = reduction(main.levels, max(main.size[:2]), size)
    picture.load()
    if picture.mode in ("RGB", "L"):  # colour (inverse MCT done by OpenJPEG), or 8-bit grey
        array = np.asarray(picture)
        if picture.mode == "L" and main.signed:
            array = array.astype(np.int16) - 128
    else:  # I;16: Pillow scales the values to 16 bits, then moves signed ones up by 2^15: undone
        array = np.asarray(picture).astype(np.int32)
        array = ((array - 32768) if main.signed else array) >> (16 - main.precision)
        if main.precision <= 16:  # back to a word type, so the display table applies
            array = array.astype(np.int16 if main.signed else np.uint16)
    if array.ndim == 3:
        return PILImage.fromarray(array.astype(np.uint8), "RGB")
    return _display(array, dataset)


def reduction(levels: int, longest: int, size: int = PREVIEW_SIZE) -> int:
    """How many of a codestream's `levels` the decoder may skip and still give `size` px or more
    on the longest side: each level skipped halves the picture."""
    reduce = 0
    while reduce < levels and longest >> (reduce + 1) >= size:
        reduce += 1
    return reduce


class CodestreamHeader(NamedTuple):
    size: tuple[int, int, int] | None  # columns, rows, components (None: no SIZ segment)
    levels: int  # decomposition levels
    precision: int  # of the first component
    signed: bool


def _codestream_header(codestream: bytes) -> CodestreamHeader:
    """What the main header of a JPEG 2000 codestream says (SIZ and COD marker segments, ISO
    15444-1 A.5.1 and A.6.1): the image area is Xsiz - XOsiz by Ysiz - YOsiz."""
    if codestream[:2] != b"\xff\x4f":
        raise PreviewError("its JPEG 2000 data has no codestream")
    at, size, levels, precision, signed = 2, None, 0, 16, False
    while at + 4 <= len(codestream):
        marker, length = struct.unpack(">HH", codestream[at : at + 4])
        if marker == 0xFF51 and at + 41 <= len(codestream):  # SIZ, up to the first component's Ssiz
            xsiz, ysiz, xosiz, yosiz = struct.unpack(">4L", codestream[at + 6 : at + 22])
            (components,) = struct.unpack(">H", codestream[at + 38 : at + 40])
            size = (xsiz - xosiz, ysiz - yosiz, components)
            ssiz = codestream[at + 40]
            precision, signed = (ssiz & 0x7F) + 1, bool(ssiz & 0x80)
        elif marker == 0xFF52 and at + 10 <= len(codestream):  # COD: SPcod's first byte
            levels = codestream[at + 9]
        elif marker == 0xFF90:  # the first tile: the main header has ended
            break
        at += 2 + length
    return CodestreamHeader(size, levels, precision, signed)


def _display(pixels: np.ndarray, dataset: Dataset, stored_bits: int | None = None) -> PILImage.Image:
    """Stored values to what a screen shows, as an 8-bit picture; `stored_bits`: `pixels` are the
    file's unsigned words, of which that many low bits hold the value (signed by PixelRepresentation)."""
    photometric = str(dataset.get("PhotometricInterpretation") or "MONOCHROME2").upper()
    if photometric == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, dataset)
    if pixels.ndim == 3 and pixels.shape[-1] in (3, 4):
        if pixels.dtype != np.uint8:
            top = float(pixels.max()) or 1.0
            pixels = (pixels.astype(np.float32) * (255.0 / top)).astype(np.uint8)
        return PILImage.fromarray(np.ascontiguousarray(pixels[..., :3]), "RGB")
    if pixels.ndim != 2:
        raise PreviewError("an image layout previews cannot show")
    inverted = photometric == "MONOCHROME1"
    if "ModalityLUTSequence" in dataset or ("VOILUTSequence" in dataset and "WindowCenter" not in dataset):
        return _through_luts(pixels, dataset, inverted)
    slope = float(dataset.get("RescaleSlope") or 1.0)
    intercept = float(dataset.get("RescaleIntercept") or 0.0)
    function = str(dataset.get("VOILUTFunction") or "LINEAR").upper()
    if pixels.dtype in (np.uint8, np.int8, np.uint16, np.int16):
        bits = pixels.dtype.itemsize * 8
        if stored_bits is None:  # decoded by pydicom: the values are whole words of their type
            stored_bits, signed = bits, pixels.dtype.kind == "i"
        else:
            signed = int(dataset.get("PixelRepresentation") or 0) == 1
        words = pixels.view(np.uint16 if bits == 16 else np.uint8)
        window = _window(dataset)
        if window is None:
            window = _own_range(_stored_values(bits, stored_bits, signed), words, slope, intercept)
        table = _table(bits, stored_bits, signed, slope, intercept, *window, function, inverted)
        return PILImage.fromarray(np.take(table, words), "L")  # take: about twice as fast as table[words]
    window = _window(dataset)
    if window is None:
        window = _own_range(None, pixels, slope, intercept)
    values = pixels.astype(np.float64) * slope + intercept
    return PILImage.fromarray(_voi(values, *window, function, inverted), "L")


def _window(dataset: Dataset) -> tuple[float, float] | None:
    """The first window the image carries, else its modality's usual one."""
    center, width = dataset.get("WindowCenter"), dataset.get("WindowWidth")
    if center is not None and width is not None:
        try:
            center = float(center[0] if isinstance(center, Sequence) and not isinstance(center, str) else center)
            width = float(width[0] if isinstance(width, Sequence) and not isinstance(width, str) else width)
        except (TypeError, ValueError, IndexError):
            center = width = None
        if center is not None and width is not None and width >= 1:
            return center, width
    return USUAL_WINDOWS.get(str(dataset.get("Modality") or ""))


def _own_range(values: np.ndarray | None, pixels: np.ndarray, slope: float, intercept: float) -> tuple[float, float]:
    """A window over the image's own values, its darkest and brightest half percent left out;
    `values`: the stored value of each word, when `pixels` are words."""
    sample = pixels[:: max(1, pixels.shape[0] // 256), :: max(1, pixels.shape[1] // 256)]
    if values is not None:
        sample = np.take(values, sample)
    low, high = np.percentile(sample, (0.5, 99.5)) * slope + intercept
    return (low + high) / 2, max(float(high - low), 1.0)


@functools.lru_cache(maxsize=8)
def _stored_values(bits: int, stored: int, signed: bool) -> np.ndarray:
    """The value every word of `bits` holds: its low `stored` bits, two's complement if signed."""
    values = np.arange(1 << bits, dtype=np.int64) & ((1 << stored) - 1)
    if signed:
        values = np.where(values >= 1 << (stored - 1), values - (1 << stored), values)
    return values.astype(np.float64)


@functools.lru_cache(maxsize=64)
def _table(
    bits: int,
    stored: int,
    signed: bool,
    slope: float,
    intercept: float,
    center: float,
    width: float,
    function: str,
    inverted: bool,
) -> np.ndarray:
    """Display byte for every word of `bits` (one lookup a pixel, not float arithmetic on each)."""
    return _voi(_stored_values(bits, stored, signed) * slope + intercept, center, width, function, inverted)


def _voi(values: np.ndarray, center: float, width: float, function: str, inverted: bool) -> np.ndarray:
    if function == "SIGMOID":  # PS3.3 C.11.2.1.3.1
        shown = 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    elif function == "LINEAR_EXACT":  # C.11.2.1.3.2
        shown = (values - center) / width + 0.5
    else:  # LINEAR, C.11.2.1.2.1
        shown = (values - (center - 0.5)) / max(width - 1.0, 1.0) + 0.5
    shown = np.clip(shown, 0.0, 1.0)
    if inverted:
        shown = 1.0 - shown
    return np.round(shown * 255.0).astype(np.uint8)


def _through_luts(pixels: np.ndarray, dataset: Dataset, inverted: bool) -> PILImage.Image:
    """The rare images that carry lookup tables instead of a rescale and a window: pydicom applies them."""
    values = apply_voi_lut(apply_modality_lut(pixels, dataset), dataset, index=0).astype(np.float64)
    low, high = float(values.min()), float(values.max())
    shown = (values - low) / ((high - low) or 1.0)
    if inverted:
        shown = 1.0 - shown
    return PILImage.fromarray(np.round(shown * 255.0).astype(np.uint8), "L")


# The pictures a pool renders, set before its workers are forked: they inherit the open sources
# (descriptors opened with the rights of whoever named the files) instead of reopening any path.
_PICTURES: list[tuple[Source, str, int]] = []
_AGAIN = object()  # a picture its broken pool did not render: to be rendered again


def _render_job(index: int) -> bytes | str:
    """In a worker: the JPEG, or why the picture cannot be previewed."""
    source, transfer_syntax, frame = _PICTURES[index]
    try:
        with source.open() as handle:
            return render(handle, transfer_syntax, frame)
    except PreviewError as error:
        return str(error)
    except READ_ERRORS as error:
        return f"not readable ({untrusted.printable(error)})"


def limit_memory(extra: int = EXTRA_MEMORY) -> None:
    """This process may allocate at most `extra` bytes more than it holds now (RLIMIT_AS): a
    sender's file that asks for more fails its own picture, "too large to preview". Where no
    limit can be set (no /proc), it stays as it was."""
    with contextlib.suppress(OSError, ValueError):
        resource.setrlimit(resource.RLIMIT_AS, (_address_space() + extra,) * 2)


def _address_space() -> int:
    with open("/proc/self/status", "rb") as status:
        for line in status:
            if line.startswith(b"VmSize:"):
                return int(line.split()[1]) * 1024
    raise ValueError("no VmSize")


def _worker_start() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the packager's to handle
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.nice(5)  # behind the zip's writing, which the recipient waits for
    limit_memory()  # forked as root, from the packager: a hostile picture fails alone, not the package


class RenderPool:
    """Renders pictures on every core (pydicom's parsing and Pillow's JPEG 2000 decoder hold the
    GIL, so threads would share one) while the caller goes on; finished JPEGs wait in a
    nameless root-only file, not in memory. Start it before any thread: its workers are forked.

    A worker that dies (a codec's crash on a sender's file) breaks its pool and every picture
    not yet done with it. Those are rendered again: the ones the pool had handed out (at most
    workers + 1, in order: the one that crashed is among them) each alone in a pool of its own,
    the rest in a new pool. So a crash costs its own picture only."""

    def __init__(self, pictures: list[tuple[Source, str, int]], workers: int | None = None) -> None:
        self.pictures = pictures
        self.workers = max(1, min(workers or os.cpu_count() or 1, len(pictures)))
        self._spill = tempfile.TemporaryFile()
        self._done: dict[int, tuple[int, int] | str | object] = {}
        self._finished = threading.Condition()
        self._pool: ProcessPoolExecutor | None = None
        self._alone: list[ProcessPoolExecutor] = []
        self._unyielded = set(range(len(pictures)))

    def __enter__(self) -> RenderPool:
        if not self.pictures:
            return self
        global _PICTURES
        _PICTURES = self.pictures
        self._pool = self._start(self.workers, range(len(self.pictures)))
        return self

    def _start(self, workers: int, indexes: Iterable[int], alone: bool = False) -> ProcessPoolExecutor:
        context = multiprocessing.get_context("fork")
        pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_start)
        for index in indexes:
            # Not kept: a finished future would hold its JPEG in memory; _keep moves it to the file.
            pool.submit(_render_job, index).add_done_callback(functools.partial(self._keep, index, alone))
        return pool

    def _keep(self, index: int, alone: bool, future: Future) -> None:
        error = None if future.cancelled() else future.exception()
        result: bytes | str | object
        if isinstance(error, BrokenProcessPool):
            result = "the renderer failed (it ended on this picture)" if alone else _AGAIN
        elif future.cancelled() or error is not None:
            result = "the renderer failed" + (f" ({type(error).__name__})" if error else "")
        else:
            result = future.result()
        with self._finished:
            if isinstance(result, bytes):
                offset = self._spill.seek(0, os.SEEK_END)
                self._spill.write(result)
                self._done[index] = (offset, len(result))
            else:
                self._done[index] = result
            self._finished.notify_all()

    def _render_again(self) -> None:
        """After a crash: the broken pool has failed every picture it had not done."""
        with self._finished:
            self._finished.wait_for(lambda: all(i in self._done for i in self._unyielded))
            again = sorted(i for i in self._unyielded if self._done[i] is _AGAIN)
            for index in again:
                del self._done[index]
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        handed_out, rest = again[: self.workers + 1], again[self.workers + 1 :]
        self._alone += [self._start(1, [index], alone=True) for index in handed_out]
        self._pool = self._start(self.workers, rest) if rest else None

    def results(self, progress: Callable[[int], None] = lambda done: None) -> Iterator[tuple[int, bytes | str]]:
        """Every picture's JPEG or reason, in order, waiting for those not yet done."""
        for index in range(len(self.pictures)):
            while True:
                with self._finished:
                    self._finished.wait_for(lambda index=index: index in self._done)
                    found = self._done[index]
                    if found is not _AGAIN:
                        del self._done[index]
                        self._unyielded.discard(index)
                        if isinstance(found, tuple):
                            offset, length = found
                            self._spill.seek(offset)
                            found = self._spill.read(length)
                        break
                self._render_again()
            progress(index + 1)
            yield index, found

    def __exit__(self, *exc) -> None:
        global _PICTURES
        for pool in [self._pool, *self._alone]:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        _PICTURES = []
        self._spill.close()
