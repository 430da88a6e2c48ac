"""What the view page shows of a study, whatever holds it: a study package's zip
(exchange.portal.package_view) or a folder of DICOM files (exchange.portal.folder_view), and the
threads both parse in."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

PARSING_THREADS = 2  # a zip's directory, STACKS.JSON, DICOM headers: what the view page parses
# Its own threads, not the event loop's default executor: logins (asyncssh) and everything else use
# that one, and a package's 32 MB directory takes seconds to parse. Each account reads one study at a
# time (exchange.portal.viewing), so no account holds both.
_parsing = ThreadPoolExecutor(PARSING_THREADS, thread_name_prefix="study-parsing")
_T = TypeVar("_T")


async def parsed(parse: Callable[..., _T], *args) -> _T:
    """`parse(*args)` in the view page's parsing threads."""
    return await asyncio.get_running_loop().run_in_executor(_parsing, parse, *args)


# The sender's DICOM text a series carries (STACKS.JSON's names, exchange.dicom.webcontent.stacks).
TEXTS = ("patient_id", "patient_name", "study_date", "study_description", "modality", "series_number",
         "series_description")  # fmt: skip


class NotViewable(Exception):
    """This file or folder cannot be shown (no study in it, or damaged); the message says why."""


@dataclass(frozen=True)
class Picture:
    name: str  # a zip's entry, or a DICOM file's path in the folder
    width: int  # 0 when not known before it is rendered
    height: int
    frame: int = 0  # of a multi-frame file


@dataclass(frozen=True)
class SeriesStack:
    number: int  # 1, 2, ... in the study's order
    texts: dict[str, str]  # the sender's DICOM text (TEXTS): shown escaped, as every other value
    images: int
    frames: int
    pictures: tuple[Picture, ...]
    problems: dict[str, int]  # why pictures cannot be shown, and how many

    @property
    def middle(self) -> int:
        """The picture of the series the overview shows (view.htm.j2 picks the same), from 1."""
        return (len(self.pictures) + 1) // 2
