"""A package's own web pages, so it views itself offline in any browser: IHE PDI's web content
(RAD TF-3 4.47: INDEX.HTM at the root, XHTML and JPEG under IHE_PDI/) beside the DICOM files.

After unpacking, INDEX.HTM at the root shows the patients, their studies and every series with
one preview; each series has its page under IHE_PDI/ with all the pictures of its stack, which
read with JavaScript off as a column of images and, with it on, as a stack to page through
(IHE_PDI/VIEWER.JS: one classic script, since browsers refuse modules, `fetch` and workers from
`file://`). IHE_PDI/STACKS.JSON says the same for a program: the portal's view page reads it out
of the zip. The pictures come from exchange.dicom.previews; a series that cannot be rendered says
so on its page, and the package is made all the same.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from PIL import Image as PILImage

from exchange import templates
from exchange.dicom import previews
from exchange.dicom.dicomdir import Patient, Series, Study, Tree
from exchange.dicom.dicomfiles import Source
from exchange.dicom.pdi import FOLDER, SCRIPT, STACKS, STYLE
from exchange.messaging.messages import Messages

MAX_PER_PACKAGE = 4000  # pictures in all: a study of many series gets shorter stacks
MIN_PER_SERIES = 20


@dataclass
class SeriesView:
    """One series' page and stack."""

    number: int  # 1, 2, ... over the whole package
    patient: Patient
    study: Study
    series: Series
    pictures: list[previews.Picture]
    shown: list[tuple[str, int, int]] = field(default_factory=list)  # rendered: (name below IHE_PDI/, width, height)
    problems: dict[str, int] = field(default_factory=dict)  # why pictures were not rendered: how many

    @property
    def folder(self) -> str:
        return f"SE{self.number:04d}"

    @property
    def page(self) -> str:
        return f"{self.folder}.HTM"

    @property
    def frames(self) -> int:
        return sum(previews.frames(image) for image in self.series.images)


def plan(tree: Tree, per_series: int = previews.MAX_PER_SERIES, per_package: int = MAX_PER_PACKAGE) -> list[SeriesView]:
    """Every series with the pictures of its stack: at most `per_series` each, fewer when the
    package would hold more than `per_package` in all."""
    all_series = [
        (patient, study, series)
        for patient in tree.patients.values()
        for study in patient.studies.values()
        for series in study.series.values()
    ]
    cap = max(MIN_PER_SERIES, min(per_series, per_package // max(1, len(all_series))))
    return [
        SeriesView(number, patient, study, series, previews.stack(series, cap))
        for number, (patient, study, series) in enumerate(all_series, 1)
    ]


def jobs(views: list[SeriesView]) -> list[tuple[Source, str, int]]:
    """What the render pool renders, in the order of the views' pictures."""
    return [
        (picture.image.instance.source, picture.image.instance.transfer_syntax, picture.frame)
        for view in views
        for picture in view.pictures
    ]


def pictures(views: list[SeriesView], rendered: Iterable[tuple[int, bytes | str]]) -> Iterable[tuple[str, bytes]]:
    """The zip entries of the rendered pictures (name, JPEG), noting on each view what it shows
    and what failed; `rendered` is the pool's results in the order of `jobs(views)`."""
    results = iter(rendered)
    for view in views:
        for _picture in view.pictures:
            _, found = next(results)
            if isinstance(found, str):
                view.problems[found] = view.problems.get(found, 0) + 1
                continue
            name = f"{view.folder}/IM{len(view.shown) + 1:04d}.JPG"
            width, height = PILImage.open(io.BytesIO(found)).size  # the header only
            view.shown.append((name, width, height))
            yield f"{FOLDER}/{name}", found


def documents(messages: Messages, views: list[SeriesView], viewer: str | None, **context) -> dict[str, bytes]:
    """INDEX.HTM, a page per series, the script, its style and STACKS.JSON (after `pictures`)."""
    site = {"viewer": viewer, "views": views, **context}
    found = {"INDEX.HTM": messages.document("package-index.htm.j2", **site).encode("utf-8")}
    for position, view in enumerate(views):
        neighbours = {
            "previous": views[position - 1] if position > 0 else None,
            "next": views[position + 1] if position + 1 < len(views) else None,
        }
        page = messages.document("package-series.htm.j2", view=view, **neighbours, **site)
        found[f"{FOLDER}/{view.page}"] = page.encode("utf-8")
    found[SCRIPT] = (templates.VIEWER / "stack.js").read_bytes()
    found[STYLE] = b"".join((templates.VIEWER / name).read_bytes() for name in ("package.css", "stack.css"))
    found[STACKS] = json.dumps(stacks(views), ensure_ascii=True, indent=1).encode("ascii")
    return found


def stacks(views: list[SeriesView]) -> dict:
    """The stacks for a program (the portal's view page): plain values; the text is the sender's (cut as
    it was read, dicomfiles.compact)."""
    return {
        "format": 1,
        "series": [
            {
                "page": f"{FOLDER}/{view.page}",
                "patient_id": view.patient.id,
                "patient_name": str(view.patient.header.get("PatientName") or ""),
                "study_date": str(view.study.header.get("StudyDate") or ""),
                "study_description": str(view.study.header.get("StudyDescription") or ""),
                "modality": str(view.series.header.get("Modality") or ""),
                "series_number": str(view.series.header.get("SeriesNumber") or ""),
                "series_description": str(view.series.header.get("SeriesDescription") or ""),
                "images": len(view.series.images),
                "frames": view.frames,
                "pictures": [
                    {"name": f"{FOLDER}/{name}", "width": width, "height": height} for name, width, height in view.shown
                ],
                "problems": view.problems,
            }
            for view in views
        ],
    }
