"""Preview pictures rendered from real pixel data: pydicom-data's files in every transfer syntax
the packager stores, decoded by pydicom's pylibjpeg plugins and OpenJPEG (through Pillow)."""

from __future__ import annotations

import io
import os
import signal
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
from tests.dicom_synth import ct_study, deflated, peak_memory

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
    main = previews._codestream_header(_codestream("RG3_J2KR.dcm"))
    assert (main.precision, main.signed, main.size) == (10, False, (1760, 1760, 1)) and main.levels >= 2
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


# A header that lies about its frame: (header columns, rows, samples) against the codestream's own.
LYING = {
    "MR2_J2KI.dcm": (512, 512, 1),  # JPEG 2000 of 1024 x 1024 (the lie of a 12,000 px one is the same)
    "JPEG-LL.dcm": (128, 128, 1),  # JPEG lossless, SOF3 of 256 x 1024
    "SC_rgb_jpeg_dcmtk.dcm": (100, 100, 1),  # JPEG baseline, SOF0 of 3 components: one sample said
    "MR_small_jpeg_ls_lossless.dcm": (64, 32, 1),  # JPEG-LS, SOF55 of 64 x 64
}


@pytest.mark.parametrize("name", sorted(LYING))
def test_a_codestream_of_another_size_than_its_header_says_is_refused_before_decoding(name, tmp_path, monkeypatch):
    ds = dcmread(file(name))
    ds.Columns, ds.Rows, ds.SamplesPerPixel = LYING[name]
    path = tmp_path / name
    ds.save_as(path)
    decoded = []
    monkeypatch.setattr(previews, "pixel_array", lambda *a, **k: decoded.append(a) or np.zeros((8, 8), np.uint8))
    monkeypatch.setattr(previews.PILImage, "open", lambda *a, **k: decoded.append(a) or Image.new("L", (8, 8)))
    with path.open("rb") as handle, pytest.raises(PreviewError, match="its header says"):
        render(handle, str(ds.file_meta.TransferSyntaxUID))
    assert decoded == []


def test_pillow_itself_decodes_no_frame_beyond_the_bound():
    assert Image.MAX_IMAGE_PIXELS == previews.MAX_FRAME_PIXELS


def test_a_deflated_image_is_previewed_from_its_dataset_inflated(tmp_path):
    for name in ("CT_small.dcm", "SC_rgb.dcm"):  # in place (grey), and by pydicom (colour)
        path = deflated(file(name), tmp_path / name)
        with path.open("rb") as handle:
            ours = np.asarray(Image.open(io.BytesIO(render(handle, "1.2.840.10008.1.2.1.99"))), dtype=np.float64)
        assert np.abs(ours - np.asarray(preview(name), dtype=np.float64)).mean() < 1, name


def test_a_deflated_dataset_that_expands_beyond_its_bound_is_never_inflated_whole(tmp_path):
    # 90 KB that inflate to 64 MB: more than 200 times the file (a zip entry's bound too) is refused.
    path = deflated(file("CT_small.dcm"), tmp_path / "bomb.dcm", padding=64 << 20)
    with peak_memory() as peak, path.open("rb") as handle, pytest.raises(PreviewError) as refused:
        render(handle, "1.2.840.10008.1.2.1.99")
    assert str(refused.value).startswith("too large to preview") and "expands beyond" in str(refused.value)
    assert peak[0] < 40 << 20


def test_a_package_render_worker_that_runs_out_of_memory_fails_its_own_picture_only(tmp_path, monkeypatch):
    files = ct_study(tmp_path / "ct", 3)
    hungry = dcmread(files[1])
    hungry.Modality = "MR"
    hungry.save_as(files[1])
    real = previews._native_words

    def native_words(handle, header, syntax, frame):  # a decoder a sender's file makes ask for 8 GB
        if header.Modality == "MR":
            np.empty(8 << 30, np.uint8)  # beyond what any renderer may hold (previews.EXTRA_MEMORY)
        return real(handle, header, syntax, frame)

    monkeypatch.setattr(previews, "_native_words", native_words)  # the workers are forked: they have it
    pictures = [(Source(str(f), f.stat().st_size, lambda f=f: f.open("rb")), "1.2.840.10008.1.2.1", 0) for f in files]
    with previews.RenderPool(pictures, workers=1) as pool:
        found = [result for _, result in pool.results()]
    assert found[1] == "too large to preview"
    assert found[0][:3] == found[2][:3] == b"\xff\xd8\xff"


@pytest.mark.parametrize(("workers", "crashing"), [(1, {2}), (2, {2}), (2, {0, 5, 6})])
def test_a_render_worker_that_crashes_costs_its_own_picture_only(tmp_path, monkeypatch, workers, crashing):
    files = ct_study(tmp_path / "ct", 9)
    for index in crashing:
        hostile = dcmread(files[index])
        hostile.Modality = "MR"
        hostile.save_as(files[index])
    real = previews._native_words

    def native_words(handle, header, syntax, frame):  # a codec a sender's file makes crash (a segfault)
        if header.Modality == "MR":
            os.kill(os.getpid(), signal.SIGKILL)
        return real(handle, header, syntax, frame)

    monkeypatch.setattr(previews, "_native_words", native_words)  # the workers are forked: they have it
    pictures = [(Source(str(f), f.stat().st_size, lambda f=f: f.open("rb")), "1.2.840.10008.1.2.1", 0) for f in files]
    with previews.RenderPool(pictures, workers=workers) as pool:
        found = [result for _, result in pool.results()]
    assert {
        index for index, result in enumerate(found) if result == "the renderer failed (it ended on this picture)"
    } == crashing
    assert all(jpeg[:3] == b"\xff\xd8\xff" for index, jpeg in enumerate(found) if index not in crashing), found


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
