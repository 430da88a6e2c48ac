"""Preview pictures rendered from real pixel data: pydicom-data's files in every transfer syntax
the packager stores, decoded by pydicom's pylibjpeg plugins and OpenJPEG (through Pillow)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file

from exchange.dicom import previews
from exchange.dicom.dicomdir import Image as TreeImage
from exchange.dicom.dicomdir import Series
from exchange.dicom.dicomfiles import Instance, Source
from exchange.dicom.previews import PreviewError, render

# One file per transfer syntax and photometric interpretation the packager meets.
DECODED = {
    "CT_small.dcm": "native, signed, rescaled",
    "MR_small_RLE.dcm": "RLE",
    "SC_rgb_rle.dcm": "RLE colour",
    "JPEG-LL.dcm": "JPEG lossless",
    "JPGLosslessP14SV1_1s_1f_8b.dcm": "JPEG lossless 8 bit",
    "SC_rgb_jpeg_dcmtk.dcm": "JPEG baseline YBR",
    "color3d_jpeg_baseline.dcm": "JPEG baseline multi-frame",
    "MR_small_jpeg_ls_lossless.dcm": "JPEG-LS",
    "RG1_J2KR.dcm": "JPEG 2000 lossless, MONOCHROME1",
    "693_J2KR.dcm": "JPEG 2000 lossless, signed",
    "MR2_J2KI.dcm": "JPEG 2000",
    "US1_J2KR.dcm": "JPEG 2000 colour (YBR_RCT)",
    "OBXXXX1A.dcm": "palette colour",
    "SC_ybr_full_422_uncompressed.dcm": "native YBR_FULL_422",
}


def file(name: str) -> Path:
    return Path(get_testdata_file(name, download=False))


def preview(name: str, frame: int = 0) -> Image.Image:
    path = file(name)
    syntax = str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    with path.open("rb") as handle:
        return Image.open(io.BytesIO(render(handle, syntax, frame)))


@pytest.mark.parametrize("name", sorted(DECODED))
def test_every_stored_transfer_syntax_is_previewed(name):
    picture = preview(name)
    assert picture.format == "JPEG" and max(picture.size) <= previews.PREVIEW_SIZE
    pixels = np.asarray(picture.convert("L"), dtype=np.float64)
    assert pixels.std() > 8, f"{name} ({DECODED[name]}): a flat picture, the window or decoding is wrong"


def test_a_preview_shows_what_the_full_decode_shows():
    # JPEG 2000 at a reduced level against pydicom's full decode, windowed the same way.
    ours = np.asarray(preview("693_J2KR.dcm"), dtype=np.float64)
    full = dcmread(file("693_J2KR.dcm"))
    hu = full.pixel_array.astype(np.float64) * float(full.RescaleSlope) + float(full.RescaleIntercept)
    center, width = float(full.WindowCenter), float(full.WindowWidth)
    expected = np.clip((hu - (center - 0.5)) / (width - 1) + 0.5, 0, 1) * 255
    assert ours.shape == expected.shape
    assert np.abs(ours - expected).mean() < 12


def test_monochrome1_is_inverted():
    # RG1 is a chest radiograph stored MONOCHROME1: the lungs (low values) must come out dark... inverted,
    # so its uncompressed twin rendered as MONOCHROME2 would be the negative.
    picture = np.asarray(preview("RG1_J2KR.dcm"), dtype=np.float64)
    stored = dcmread(file("RG1_UNCI.dcm")).pixel_array.astype(np.float64)
    small = np.asarray(Image.fromarray(stored).resize(picture.shape[::-1]))
    assert np.corrcoef(picture.ravel(), small.ravel())[0, 1] < -0.8


def test_jpeg_2000_is_decoded_at_a_reduced_resolution():
    levels, precision, signed = previews._codestream_levels(_codestream("RG3_J2KR.dcm"))
    assert (precision, signed) == (10, False) and levels >= 2
    assert preview("RG3_J2KR.dcm").size == (512, 512)  # 1760 decoded at 440 or 880, scaled to 512


def _codestream(name: str) -> bytes:
    from pydicom.encaps import get_frame

    return get_frame(dcmread(file(name)).PixelData, 0, number_of_frames=1)


def test_what_cannot_be_previewed_says_why():
    with pytest.raises(PreviewError, match="^not an image$"):
        preview("rtplan.dcm")
    with pytest.raises(PreviewError, match="pixel data cannot be decoded"):
        preview("JPEG-lossy.dcm")  # a 12-bit JPEG that libjpeg refuses (a misplaced marker)
    with pytest.raises(PreviewError, match="no frame 200"):
        preview("color3d_jpeg_baseline.dcm", 199)


def test_a_frame_too_large_is_refused_before_decoding(tmp_path):
    ds = dcmread(file("CT_small.dcm"))
    ds.Rows = ds.Columns = 65535  # a header may ask for 8 GB; the pixel data is not even there
    path = tmp_path / "huge.dcm"
    ds.save_as(path)
    with path.open("rb") as handle, pytest.raises(PreviewError, match="too large to preview"):
        render(handle, str(ds.file_meta.TransferSyntaxUID))


def test_garbage_pixel_data_is_a_reason_not_a_crash(tmp_path):
    ds = dcmread(file("MR2_J2KI.dcm"))
    data = bytearray(ds.PixelData)
    data[200:4000] = bytes(3800)
    ds.PixelData = bytes(data)
    path = tmp_path / "damaged.dcm"
    ds.save_as(path)
    with path.open("rb") as handle:
        try:
            render(handle, str(ds.file_meta.TransferSyntaxUID))
        except PreviewError as error:
            assert "cannot be decoded" in str(error) or "codestream" in str(error)


def _series(frames: list[int]) -> Series:
    series = Series("1.2", {})
    for number, count in enumerate(frames, 1):
        instance = Instance(
            Source(f"f{number}", 0, io.BytesIO), {"NumberOfFrames": str(count)}, "1.2.840.10008.1.2.1", False
        )
        series.images.append(TreeImage(instance, number, "IMAGE"))
    return series


def test_a_stack_is_capped_evenly_from_first_to_last():
    series = _series([1] * 1000)
    picked = previews.stack(series, cap=200)
    assert len(picked) == 200
    assert picked[0].image is series.images[0] and picked[-1].image is series.images[-1]
    gaps = {b.image.number - a.image.number for a, b in zip(picked, picked[1:], strict=False)}
    assert gaps <= {5, 6}
    assert len(previews.stack(_series([1] * 30), cap=200)) == 30


def test_a_stack_pages_through_frames_of_multiframe_images():
    picked = previews.stack(_series([3, 1, 2]), cap=200)
    assert [(p.image.number, p.frame) for p in picked] == [(1, 0), (1, 1), (1, 2), (2, 0), (3, 0), (3, 1)]


def _through_pydicom(path: Path, frame: int = 0) -> np.ndarray:
    """The display picture as pydicom's full decode makes it (the path every other transfer syntax takes)."""
    header = dcmread(path, stop_before_pixels=True)
    ds = dcmread(path)
    return np.asarray(previews._display(ds.pixel_array[frame] if "NumberOfFrames" in ds else ds.pixel_array, header))


def _in_place(path: Path, frame: int = 0) -> np.ndarray:
    syntax = str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    with path.open("rb") as handle:
        header = dcmread(handle, stop_before_pixels=True, specific_tags=previews._PIXEL_HEADER)
        words = previews._native_words(handle, header, syntax, frame)
    assert words is not None, "the in-place path was not taken"
    return np.asarray(previews._display(words, header, stored_bits=int(header.BitsStored)))


@pytest.mark.parametrize(
    ("name", "frame"), [("CT_small.dcm", 0), ("MR_small_implicit.dcm", 0), ("emri_small.dcm", 6), ("RG1_UNCI.dcm", 0)]
)
def test_uncompressed_frames_read_in_place_look_exactly_as_pydicom_decodes_them(name, frame):
    assert np.array_equal(_in_place(file(name), frame), _through_pydicom(file(name), frame))


def test_unused_high_bits_and_the_sign_of_12_bit_words(tmp_path):
    # 12 bits stored in 16, signed: what the high four bits hold (an old overlay, junk) is not the value.
    ds = dcmread(file("CT_small.dcm"))
    values = np.linspace(-2048, 2047, 128 * 128).astype(np.int16).reshape(128, 128)
    junk = np.where(np.arange(128 * 128).reshape(128, 128) % 3 == 0, 0xA000, 0).astype(np.uint16)
    ds.PixelData = ((values.view(np.uint16) & 0x0FFF) | junk).tobytes()
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, 1
    ds.RescaleSlope, ds.RescaleIntercept, ds.WindowCenter, ds.WindowWidth = 1, 0, 0, 4096
    path = tmp_path / "junk.dcm"
    ds.save_as(path)
    ours = _in_place(path)
    expected = np.round(np.clip((values.astype(float) + 0.5) / 4095 + 0.5, 0, 1) * 255)
    assert np.abs(ours - expected).max() <= 1
    assert np.array_equal(ours, _through_pydicom(path))


def test_big_endian_and_colour_are_left_to_pydicom():
    for name in ("MR_small_bigendian.dcm", "SC_rgb.dcm", "OBXXXX1A.dcm"):
        path = file(name)
        syntax = str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        with path.open("rb") as handle:
            header = dcmread(handle, stop_before_pixels=True, specific_tags=previews._PIXEL_HEADER)
            assert previews._native_words(handle, header, syntax, 0) is None, name
