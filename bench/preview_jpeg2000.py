"""Benchmark: the previews of a JPEG 2000 study against OpenJPEG's own `opj_decompress -r N`,
same images, same reduction, same run.

The study is encoded here as a PACS's encoder would (pylibjpeg-openjpeg, which is OpenJPEG with
its defaults: lossless, 6 resolutions, so 5 decomposition levels, as pydicom-data's own J2K files
have too): pydicom-data's uncompressed radiographs and one MR, and one radiograph tiled 2 x 2 to a
mammogram's size (3,682 x 3,910), so that a reduction of two levels is timed too; each image
cloned under new UIDs. Its codestreams are extracted to .j2k files for `opj_decompress`, which
decodes a folder at a time (`-ImgDir`, one process per reduction) at the reduction previews choose
for each (`previews.reduction`) and writes raw samples, the cheapest of its outputs. Ours:
`previews.render` over the same DICOM files in one child process, serially: the file read and
parse, the decode at that reduction (OpenJPEG through Pillow), the window, the scaling to 512 px
and the JPEG; timed from its first picture to its last (Python's start and imports are the
packager's, paid once whatever it renders; printed beside). Both on one core (opj_decompress
without `-threads`, Pillow's decoder single-threaded), input in the page cache, the two in turn
for several rounds, each first every other round; the ratio is taken round by round, median.

Target (issue 16): our preview time at most 1.2x opj_decompress's. Exit status 1 if missed.

    .venv/bin/python -m bench.preview_jpeg2000 [--copies 8] [--rounds 5] [--workdir /var/tmp]
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from statistics import median

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.encaps import get_frame
from pydicom.uid import JPEG2000Lossless

from exchange.dicom import previews
from tests.dicom_synth import clone

TARGET = 1.2
OPJ = "/usr/bin/opj_decompress"  # Debian's libopenjp2-tools
# OpenJPEG reads its thread count from here (both sides: one core); none set means one thread.
ENV = {key: value for key, value in os.environ.items() if key != "OPJ_NUM_THREADS"}
# (pydicom-data file, tiles each way): chest radiographs of 15 and 10 bits, an MR, a mammogram's size.
SOURCES = [("RG1_UNCI.dcm", 1), ("RG3_UNCI.dcm", 1), ("MR2_UNCI.dcm", 1), ("RG1_UNCI.dcm", 2)]

CHILD = r"""
import sys, time
from pathlib import Path
from exchange.dicom import previews
syntax, files = sys.argv[1], [Path(p) for p in sys.argv[2:]]
wall, cpu = time.perf_counter(), time.process_time()
for path in files:
    with path.open("rb") as handle:
        previews.render(handle, syntax)
print(time.perf_counter() - wall, time.process_time() - cpu)
"""


def make_study(work: Path, copies: int) -> tuple[list[Path], dict[int, Path], list[str]]:
    """The DICOM files, the .j2k folder for each reduction, and a line per source image."""
    templates, study, described = work / "templates", work / "study", []
    templates.mkdir()
    files: list[Path] = []
    folders: dict[int, Path] = {}
    for number, (name, tiles) in enumerate(SOURCES, 1):
        ds = dcmread(get_testdata_file(name, download=False))
        pixels = ds.pixel_array
        if tiles > 1:
            pixels = np.ascontiguousarray(np.tile(pixels, (tiles, tiles)))
            ds.Rows, ds.Columns = pixels.shape
        ds.compress(JPEG2000Lossless, pixels, encoding_plugin="pylibjpeg")
        template = templates / f"image{number}.dcm"
        ds.save_as(template)
        codestream = get_frame(ds.PixelData, 0, number_of_frames=1)
        main = previews._codestream_header(codestream)
        levels, precision = main.levels, main.precision
        reduce = previews.reduction(levels, max(main.size[:2]))
        described.append(
            f"{name} x{tiles * tiles}: {ds.Columns} x {ds.Rows}, {precision} bits, {levels} levels, "
            f"{len(codestream) / 1e6:.1f} MB, reduction {reduce} ({-(-ds.Columns // 2**reduce)} x "
            f"{-(-ds.Rows // 2**reduce)}), {copies} copies"
        )
        cloned = clone(template, study, copies)
        files += cloned
        folder = folders.setdefault(reduce, work / f"j2k-r{reduce}")
        folder.mkdir(exist_ok=True)
        for path in cloned:
            (folder / f"{path.stem}.j2k").write_bytes(codestream)  # the same bytes as in the DICOM file
    return files, folders, described


def check_previews(files: list[Path]) -> None:
    """Ours must be what the issue asks for: 512 px on the longest side."""
    for path in files[:: max(1, len(files) // len(SOURCES))]:
        with path.open("rb") as handle:
            size = Image.open(io.BytesIO(previews.render(handle, JPEG2000Lossless))).size
        assert max(size) == previews.PREVIEW_SIZE, f"{path.name}: a preview of {size}"


def run_opj(folders: dict[int, Path]) -> tuple[float, float]:
    """Wall and CPU seconds of opj_decompress over every folder at its reduction (it writes the
    pictures into the folder it reads: removed after)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    for reduce, folder in folders.items():
        done = subprocess.run(
            [OPJ, "-quiet", "-ImgDir", str(folder), "-OutFor", "RAW", "-r", str(reduce)],
            check=False,
            capture_output=True,  # it names every file it opens
            env=ENV,
        )
        if done.returncode:
            raise SystemExit(f"opj_decompress failed: {done.stderr.decode(errors='replace')}")
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    written = [picture for folder in folders.values() for picture in folder.glob("*.raw")]
    expected = sum(1 for folder in folders.values() for _ in folder.glob("*.j2k"))
    for picture in written:
        picture.unlink()
    if len(written) != expected:
        raise SystemExit(f"opj_decompress wrote {len(written)} pictures of {expected}")
    return elapsed, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def run_ours(files: list[Path]) -> tuple[float, float, float]:
    """Rendering wall and CPU seconds (measured inside), and the child's whole wall time."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", CHILD, JPEG2000Lossless, *map(str, files)],
        check=True,
        capture_output=True,
        text=True,
        env=ENV,
    )
    whole = time.perf_counter() - start
    wall, cpu = (float(value) for value in done.stdout.split())
    return wall, cpu, whole


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--copies", type=int, default=8, help="clones of each source image")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of both (median of the ratios)")
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp"))
    args = parser.parse_args()
    if not Path(OPJ).exists():
        raise SystemExit(f"{OPJ} is missing: apt-get install libopenjp2-tools (make deps does)")
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="bench-j2k-") as tmp:
        work = Path(tmp)
        files, folders, described = make_study(work, args.copies)
        check_previews(files)
        subprocess.run(f"cat {work}/study/* {work}/j2k-*/* > /dev/null", shell=True, check=True)
        print(f"study: {len(files)} JPEG 2000 lossless images")
        for line in described:
            print(f"  {line}")
        runs: dict[str, list[float]] = defaultdict(list)
        for number in range(args.rounds + 1):  # the first round warms up, not counted
            order = ("opj", "ours") if number % 2 else ("ours", "opj")
            measured: dict[str, tuple[float, ...]] = {}
            for side in order:
                measured[side] = run_opj(folders) if side == "opj" else run_ours(files)
            if number == 0:
                continue
            (opj_wall, opj_cpu), (ours_wall, ours_cpu, ours_whole) = measured["opj"], measured["ours"]
            for key, value in {
                "opj_wall": opj_wall,
                "opj_cpu": opj_cpu,
                "ours_wall": ours_wall,
                "ours_cpu": ours_cpu,
                "ours_whole": ours_whole,
                "ratio": ours_wall / opj_wall,
                "cpu_ratio": ours_cpu / opj_cpu,
                "whole_ratio": ours_whole / opj_wall,
            }.items():
                runs[key].append(value)
    count = len(files)
    print(f"median of {args.rounds} rounds (the two in turn, each first every other round):")
    print(
        f"  opj_decompress -r N:       {median(runs['opj_wall']):6.2f} s ({median(runs['opj_wall']) / count * 1e3:5.1f} "
        f"ms an image), CPU {median(runs['opj_cpu']):6.2f} s   runs {' '.join(f'{t:.2f}' for t in runs['opj_wall'])}"
    )
    print(
        f"  previews.render:           {median(runs['ours_wall']):6.2f} s ({median(runs['ours_wall']) / count * 1e3:5.1f} "
        f"ms an image), CPU {median(runs['ours_cpu']):6.2f} s   runs {' '.join(f'{t:.2f}' for t in runs['ours_wall'])}"
    )
    print(f"  ours, whole child process: {median(runs['ours_whole']):6.2f} s (Python's start and imports included)")
    ratio = median(runs["ratio"])
    print(
        f"ours / opj_decompress = {ratio:.2f}x (target <= {TARGET}x; rounds "
        f"{' '.join(f'{r:.2f}' for r in runs['ratio'])}); CPU {median(runs['cpu_ratio']):.2f}x; "
        f"whole process {median(runs['whole_ratio']):.2f}x"
    )
    ok = ratio <= TARGET
    print("meets the target" if ok else "MISSES the target")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
