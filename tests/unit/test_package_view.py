"""The view page's reading of a study, a package in place (exchange.portal.package_view) or a
folder of DICOM files (exchange.portal.folder_view), through a real SFTP session: asyncssh's client against asyncssh's own SFTP server on loopback, chrooted to a
test folder (the e2e tests do the same through the test host's sshd and its chroots)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import struct
import sys
import time
import zipfile
import zlib
from pathlib import Path

import asyncssh
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from exchange.dicom import pdi
from exchange.portal import folder_view, package_view, rendering
from exchange.portal.package_view import open_package, read_picture
from exchange.portal.study_view import NotViewable
from tests.dicom_synth import ct_study, deflated, peak_memory
from tests.unit.test_package import package


class _NoAuth(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return False  # the test's own loopback server: no authentication


def over_sftp(root: Path, work):
    """Run `await work(sftp)` with an SFTP session chrooted to `root`."""

    async def main():
        key = asyncssh.generate_private_key("ssh-ed25519")
        server = await asyncssh.listen(
            "127.0.0.1", 0, server_host_keys=[key], server_factory=_NoAuth,
            sftp_factory=lambda channel: asyncssh.SFTPServer(channel, chroot=str(root).encode()),
        )  # fmt: skip
        port = server.sockets[0].getsockname()[1]
        try:
            async with asyncssh.connect(
                "127.0.0.1", port, username="u", known_hosts=None, client_keys=None, agent_path=None, config=None
            ) as connection:
                async with connection.start_sftp_client() as sftp:
                    sftp.connection_for_tests = connection  # a web session holds both
                    return await work(sftp)
        finally:
            server.close()

    return asyncio.run(main())


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("view-study")
    ct_study(root / "ct", 30)
    return package(root, root / "ct")


def test_a_package_is_read_in_place_with_its_series_and_every_picture_as_in_the_zip(made):
    folder = made.path.parent

    async def work(sftp):
        view = await open_package(sftp, f"/{made.path.name}", made.path.name)
        first = view.series[0]
        pictures = [await read_picture(sftp, f"/{made.path.name}", view, view.picture(1, i)) for i in (1, 30)]
        return view, first, pictures

    view, first, pictures = over_sftp(folder, work)
    with zipfile.ZipFile(made.path) as archive:
        stacks = json.loads(archive.read(pdi.STACKS))
        expected = [archive.read(p["name"]) for p in stacks["series"][0]["pictures"]]
    assert len(view.series) == 1 and first.frames == 30 and len(first.pictures) == 30
    assert first.texts["modality"] == "CT" and first.texts["patient_id"] == stacks["series"][0]["patient_id"]
    assert pictures == [expected[0], expected[29]] and pictures[0].startswith(b"\xff\xd8\xff")
    assert view.picture(1, 0) is None and view.picture(1, 31) is None and view.picture(2, 1) is None


@pytest.mark.parametrize("tail", [package_view.TAIL_BYTES, 100, 0])
def test_the_zips_end_comes_in_one_read_and_a_directory_beyond_it_reads_the_same(made, monkeypatch, tail):
    """A package's end record, directory and STACKS.JSON come in one SFTP read (each was a read of
    its own); where the end read holds less (100 bytes, or none), the rest is read through the
    session and the view is the same."""
    whole = tail == package_view.TAIL_BYTES
    monkeypatch.setattr(package_view, "TAIL_BYTES", tail)
    reads = []
    real = asyncssh.SFTPClientFile.read

    async def counted(self, size=-1, offset=None):
        reads.append((size, offset))
        return await real(self, size, offset)

    monkeypatch.setattr(asyncssh.SFTPClientFile, "read", counted)

    async def work(sftp):
        view = await open_package(sftp, f"/{made.path.name}", made.path.name)
        opened = len(reads)
        return view, opened, await read_picture(sftp, f"/{made.path.name}", view, view.picture(1, 30))

    view, opened, picture = over_sftp(made.path.parent, work)
    with zipfile.ZipFile(made.path) as archive:
        stacks = json.loads(archive.read(pdi.STACKS))["series"][0]["pictures"]
        assert picture == archive.read(stacks[29]["name"])
    assert [p.name for p in view.series[0].pictures] == [p["name"] for p in stacks]
    # Without it: the end record, the zip64 locator, the directory and STACKS.JSON, a read each.
    assert opened == (1 if whole else 3 if tail else 4), reads
    assert all(size <= package_view.MAX_DIRECTORY_BYTES for size, _ in reads)


def test_a_replaced_package_is_noticed_and_not_read_with_the_old_directory(made, tmp_path):
    copy = tmp_path / "study.zip"
    copy.write_bytes(made.path.read_bytes())

    async def work(sftp):
        view = await open_package(sftp, "/study.zip", "study.zip")
        os.utime(copy, (1, 1))  # another file under the same name, as far as size and time tell
        return await read_picture(sftp, "/study.zip", view, view.picture(1, 1))

    assert over_sftp(tmp_path, work) is None


def _open(tmp_path: Path, content: bytes | None = None, name: str = "x.zip"):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    return over_sftp(tmp_path, lambda sftp: open_package(sftp, f"/{name}", name))


def _zip(tmp_path: Path, members: dict[str, tuple[bytes, int]]) -> bytes:
    path = tmp_path / "built.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for name, (data, method) in members.items():
            archive.writestr(zipfile.ZipInfo(name), data, compress_type=method)
    return path.read_bytes()


JPEG = b"\xff\xd8\xff\xe0" + b"picture" * 10


def _stacks(pictures: list[dict], **series) -> bytes:
    return json.dumps(
        {"format": 1, "series": [{"modality": "CT", "frames": 2, "pictures": pictures, **series}]}
    ).encode()


@pytest.mark.parametrize(
    "content, why",
    [
        (b"not a zip at all", "not a zip file"),
        (b"PK\x05\x06" + b"\x00" * 18, "holds no preview pictures"),  # an empty zip
    ],
)
def test_what_is_no_study_package_is_said_so(tmp_path, content, why):
    with pytest.raises(NotViewable, match=why):
        _open(tmp_path, content)


def test_a_zip_without_previews_is_said_so(tmp_path):
    with pytest.raises(NotViewable, match="holds no preview pictures"):
        _open(tmp_path, _zip(tmp_path, {"DICOM/IM1": (b"x", zipfile.ZIP_DEFLATED)}))


def test_a_forged_directory_size_is_refused_before_it_is_read(tmp_path, monkeypatch):
    """An end record naming a central directory of 40 MB in a 40 MB (sparse) file: refused
    without a read of that size (the cap is checked before any memory is taken)."""
    path = tmp_path / "x.zip"
    size = package_view.MAX_DIRECTORY_BYTES + (8 << 20)
    with path.open("wb") as handle:
        handle.truncate(size - 22)
        handle.seek(size - 22)
        handle.write(struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 65535, 65535, size - 22 - 8, 8, 0))
    asked = []
    real = package_view._RemoteReader.read
    monkeypatch.setattr(package_view._RemoteReader, "read", lambda self, n=-1: asked.append(n) or real(self, n))
    with pytest.raises(NotViewable, match="table of contents is larger"):
        _open(tmp_path)
    assert max(asked) > package_view.MAX_DIRECTORY_BYTES  # it was asked for, and refused


def test_only_stored_jpegs_the_zip_holds_are_listed_and_odd_values_become_nothing(tmp_path):
    pictures = [
        {"name": "IHE_PDI/SE0001/IM0001.JPG", "width": 512, "height": 512},
        {"name": "IHE_PDI/SE0001/IM0002.JPG", "width": 512, "height": 512},  # deflated: not read in place
        {"name": "IHE_PDI/SE0001/IM0003.JPG", "width": 512, "height": 512},  # not in the zip
        {"name": "DICOM/IM1", "width": 512, "height": 512},  # not a picture of the web content
        {"name": "IHE_PDI/SE0001/IM0001.JPG", "width": "512", "height": 512},
        "not a picture",
    ]
    stacks = _stacks(pictures, frames="2", images=True, problems={"x": "1", "y": 2}, series_description=["<b>"])
    content = _zip(
        tmp_path,
        {
            pdi.STACKS: (stacks, zipfile.ZIP_DEFLATED),
            "IHE_PDI/SE0001/IM0001.JPG": (JPEG, zipfile.ZIP_STORED),
            "IHE_PDI/SE0001/IM0002.JPG": (JPEG, zipfile.ZIP_DEFLATED),
            "DICOM/IM1": (JPEG, zipfile.ZIP_STORED),
        },
    )
    view = _open(tmp_path, content)
    (series,) = view.series
    assert [p.name for p in series.pictures] == ["IHE_PDI/SE0001/IM0001.JPG"]
    assert (series.frames, series.images, series.problems, series.texts["series_description"]) == (0, 0, {"y": 2}, "")


@pytest.mark.parametrize(
    "stacks, why",
    [
        (b"{not json", "damaged"),
        (b"\xff\xfe", "damaged"),
        (json.dumps({"format": 2, "series": []}).encode(), "form this page does not know"),
        (json.dumps({"format": 1, "series": ["x"]}).encode(), "damaged"),
        (b"[" * 100_000 + b"]" * 100_000, "damaged"),  # nesting beyond the parser's recursion
    ],
)
def test_a_damaged_or_unknown_list_of_pictures_is_said_so(tmp_path, stacks, why):
    with pytest.raises(NotViewable, match=why):
        _open(tmp_path, _zip(tmp_path, {pdi.STACKS: (stacks, zipfile.ZIP_DEFLATED)}))


def test_the_senders_texts_in_a_list_of_pictures_are_cut_for_the_page(tmp_path):
    stacks = _stacks([], patient_name="A" * 100_000, series_description="B" * 300)
    (series,) = _open(tmp_path, _zip(tmp_path, {pdi.STACKS: (stacks, zipfile.ZIP_DEFLATED)})).series
    assert (series.texts["patient_name"], series.texts["series_description"]) == ("A" * 200, "B" * 200)


def test_a_list_of_pictures_that_inflates_beyond_its_cap_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(package_view, "MAX_STACKS_BYTES", 1000)
    with pytest.raises(NotViewable, match="larger than expected"):
        _open(tmp_path, _zip(tmp_path, {pdi.STACKS: (b" " * 5000, zipfile.ZIP_DEFLATED)}))


def _picture_zip(tmp_path: Path, data: bytes) -> Path:
    name = "IHE_PDI/SE0001/IM0001.JPG"
    stacks = _stacks([{"name": name, "width": 10, "height": 10}])
    content = _zip(tmp_path, {pdi.STACKS: (stacks, zipfile.ZIP_DEFLATED), name: (data, zipfile.ZIP_STORED)})
    path = tmp_path / "x.zip"
    path.write_bytes(content)
    return path


def _read_first(tmp_path: Path):
    async def work(sftp):
        view = await open_package(sftp, "/x.zip", "x.zip")
        return await read_picture(sftp, "/x.zip", view, view.picture(1, 1))

    return over_sftp(tmp_path, work)


def test_a_damaged_picture_is_refused_by_its_checksum(tmp_path):
    path = _picture_zip(tmp_path, JPEG)
    content = path.read_bytes()
    at = content.index(b"picturepicture")
    path.write_bytes(content[:at] + b"P" + content[at + 1 :])  # same size: only the CRC tells
    with pytest.raises(NotViewable, match="checksum does not match"):
        _read_first(tmp_path)


def test_a_stored_entry_that_is_no_jpeg_is_never_served(tmp_path):
    _picture_zip(tmp_path, b"<html><script>alert(1)</script></html>")
    with pytest.raises(NotViewable, match="no JPEG picture"):
        _read_first(tmp_path)


def test_an_entry_whose_local_header_disagrees_with_the_directory_is_refused(tmp_path):
    path = _picture_zip(tmp_path, JPEG)
    content = path.read_bytes()
    name_at = content.index(b"IHE_PDI/SE0001/IM0001.JPG")  # first in its local header, then in the directory
    path.write_bytes(content[:name_at] + b"X" + content[name_at + 1 :])
    with pytest.raises(NotViewable, match="disagree"):
        _read_first(tmp_path)


# -- a folder of DICOM files ---------------------------------------------------------------


def _folder(tmp_path: Path) -> Path:
    """What a partner uploads: a study in a folder, with a second series one level down, a
    letter, a hidden upload in progress and a link to files outside."""
    root = tmp_path / "share" / "CT from abroad"
    ct_study(root, 5, patient_id="FOLDER01")
    ct_study(root / "more" / "deeper", 3, patient_id="FOLDER01")
    (root / "letter.pdf").write_bytes(b"%PDF-1.4 letter")
    (root / ".upload-1234.partial").write_bytes(b"half")
    ct_study(tmp_path / "outside", 2, patient_id="OUTSIDE1")
    (root / "elsewhere").symlink_to(tmp_path / "outside")
    return root


def test_a_folder_shows_its_series_read_through_sftp_and_renders_each_picture(tmp_path):
    _folder(tmp_path)

    async def work(sftp):
        view = await folder_view.open_folder(sftp, "/CT from abroad", "CT from abroad", max_depth=2)
        renderer = rendering.Renderer(workers=1)
        try:
            file, frame = view.picture(1, 3)
            async with folder_view.opened(sftp, f"/CT from abroad/{file.path}", file) as handle:
                chunks = folder_view.chunks(handle, file)
                return view, await renderer.render(chunks, file.size, file.transfer_syntax, frame)
        finally:
            await renderer.close()

    view, jpeg = over_sftp(tmp_path / "share", work)
    assert [(s.frames, len(s.pictures)) for s in view.series] == [(5, 5), (3, 3)]
    assert {s.texts["patient_id"] for s in view.series} == {"FOLDER01"}  # the link's OUTSIDE1 is not followed
    assert all(p.name.startswith("more/deeper/") for p in view.series[1].pictures)
    assert isinstance(jpeg, bytes) and jpeg.startswith(b"\xff\xd8\xff")


def test_a_folders_deflated_headers_inflate_no_further_than_a_plain_head_and_their_texts_are_cut(tmp_path):
    """In the portal's own process: pydicom would inflate each whole (64 MB from 90 KB), and a
    100,000-character name would be kept, then escaped character by character on the event loop."""
    ct = Path(get_testdata_file("CT_small.dcm", download=False))
    folder = tmp_path / "share" / "scans"
    folder.mkdir(parents=True)
    deflated(ct, folder / "long-name.dcm", PatientName=100_000)
    bomb = dcmread(deflated(ct, folder / "bomb.dcm", padding=64 << 20))
    bomb.SeriesInstanceUID = "1.2.3.4"  # a series of its own, which must not be shown
    bomb.save_as(folder / "bomb.dcm")
    with peak_memory() as peak:
        view = over_sftp(tmp_path / "share", lambda sftp: folder_view.open_folder(sftp, "/scans", "scans", 2))
    assert peak[0] < 32 << 20
    assert list(view.files) == ["long-name.dcm"] and len(view.series) == 1
    name = view.series[0].texts["patient_name"]
    assert len(name) == 200 and "A" * 190 in name  # untrusted.TEXT_LIMIT (an UN value: as pydicom shows it)


def test_a_folder_is_walked_no_deeper_than_the_policy_allows(tmp_path):
    _folder(tmp_path)
    view = over_sftp(tmp_path / "share", lambda sftp: folder_view.open_folder(sftp, "/CT from abroad", "x", 1))
    assert [s.frames for s in view.series] == [5]  # more/deeper/ is two levels down


def test_a_folder_of_too_many_files_or_without_dicom_is_said_so(tmp_path, monkeypatch):
    _folder(tmp_path)
    (tmp_path / "share" / "letters").mkdir()
    (tmp_path / "share" / "letters" / "a.pdf").write_bytes(b"%PDF")
    with pytest.raises(NotViewable, match="holds no DICOM files"):
        over_sftp(tmp_path / "share", lambda sftp: folder_view.open_folder(sftp, "/letters", "letters", 2))
    monkeypatch.setattr(folder_view, "MAX_FILES", 4)
    with pytest.raises(NotViewable, match="more than 4 files"):
        over_sftp(tmp_path / "share", lambda sftp: folder_view.open_folder(sftp, "/CT from abroad", "x", 2))


def _renderer(**options):
    """Render workers that run tests.unit.render_stub (hangs, deaths and pids on demand)."""
    return rendering.Renderer(command=[sys.executable, "-P", "-m", "tests.unit.render_stub"], **options)


async def _pieces(data: bytes, size: int = 1 << 16):
    for at in range(0, len(data), size):
        await asyncio.sleep(0)
        yield data[at : at + size]


def _job(renderer, what: str, milliseconds: int = 0, data: bytes = b"x" * 100):
    return renderer.render(_pieces(data), len(data), what, milliseconds)


def _pid(answer: bytes) -> int:
    return int(answer[3:-2].split(b":")[0])


def _gone(pid: int) -> bool:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().split()[2] in "ZX":
                return True  # dead, not yet reaped
        except FileNotFoundError:
            return True
        time.sleep(0.02)
    return False


def test_a_render_over_its_time_is_stopped_and_its_worker_replaced():
    async def work():
        renderer = _renderer(workers=1, seconds=1)
        try:
            first = await _job(renderer, "ok")
            started = time.monotonic()
            late = await _job(renderer, "hang")
            took = time.monotonic() - started
            return first, late, took, await _job(renderer, "ok")
        finally:
            await renderer.close()

    first, late, took, after = asyncio.run(work())
    assert late == "rendering it takes longer than 1 s" and 1 <= took < 4
    assert _gone(_pid(first)) and _pid(after) != _pid(first)


def test_a_worker_that_dies_fails_its_own_picture_only():
    """One worker's death broke the whole pool: every account's picture in flight failed with it
    (exp15). Each job now has a worker of its own."""

    async def work():
        renderer = _renderer(workers=2)
        try:
            return await asyncio.gather(_job(renderer, "die", 300), *(_job(renderer, "ok", 200) for _ in range(5)))
        finally:
            await renderer.close()

    died, *others = asyncio.run(work())
    assert died == "its pixel data cannot be decoded"
    assert all(isinstance(answer, bytes) and answer.startswith(b"\xff\xd8\xff") for answer in others)


def test_a_worker_found_dead_before_its_job_is_replaced_and_the_job_given_to_another():
    async def work():
        renderer = _renderer(workers=1)
        try:
            first = await _job(renderer, "ok")
            os.kill(_pid(first), 9)  # between two jobs: it had not taken the next one
            return first, await _job(renderer, "ok"), await _job(renderer, "refuse")
        finally:
            await renderer.close()

    first, second, refused = asyncio.run(work())
    assert isinstance(second, bytes) and _pid(second) != _pid(first) and refused == "not an image"


def test_a_real_worker_renders_a_file_streamed_to_it_in_pieces_and_survives_a_crash(tmp_path):
    (path,) = ct_study(tmp_path / "one", 1)
    data = path.read_bytes()

    async def work():
        renderer = rendering.Renderer(workers=1)
        try:
            first = await renderer.render(_pieces(data), len(data), "1.2.840.10008.1.2.1", 0)
            (worker,) = renderer._idle
            os.kill(worker.process.pid, 9)  # as a decoder's crash would
            again = await renderer.render(_pieces(data), len(data), "1.2.840.10008.1.2.1", 0)
            missing = await renderer.render(_pieces(data), len(data), "1.2.840.10008.1.2.1", 5)
            return first, again, missing
        finally:
            await renderer.close()

    first, again, missing = asyncio.run(work())
    assert first.startswith(b"\xff\xd8\xff") and again == first and missing == "no frame 6"


def test_no_account_may_hold_every_parsing_thread_or_render_worker():
    from exchange.portal import study_view, viewing

    assert viewing.STUDY_READS_PER_ACCOUNT < study_view.PARSING_THREADS
    assert viewing.RENDERS_PER_ACCOUNT < rendering.RENDER_WORKERS


def test_one_account_renders_one_picture_at_a_time_from_pieces_of_its_file(made, tmp_path, monkeypatch):
    """One link account's 20 picture requests held the shared render workers for minutes and 20
    whole files in the portal (exp3, exp11): now one render at a time per account, fed a piece
    of the file at a time, and another account's picture is not held back."""
    monkeypatch.setattr(folder_view, "CHUNK_BYTES", 64 << 10)
    account = _account(tmp_path, made)
    size = (account / "upload" / "scans" / os.listdir(account / "upload" / "scans")[0]).stat().st_size
    running, most, pieces, took = [0], [0], [], {}

    class Slow:
        async def render(self, chunks, size, transfer_syntax, frame):
            running[0] += 1
            most[0] = max(most[0], running[0])
            try:
                async for piece in chunks:
                    pieces.append(len(piece))
                await asyncio.sleep(0.1)
                return b"\xff\xd8\xff\xd9"
            finally:
                running[0] -= 1

        async def close(self):
            pass

    async def work(viewing, store, login):
        viewing.renderer = Slow()
        alice = [store.open("alice", "link", "192.0.2.1", login) for _ in range(2)]
        bob = store.open("bob", "partner", "192.0.2.2", login)
        for session in (*alice, bob):
            await _ask(viewing, session, "/files/view/upload/scans")

        async def timed(who, session):
            started = time.monotonic()
            answer = await _ask(viewing, session, "/files/picture/upload/1/1/scans")
            took.setdefault(who, []).append(time.monotonic() - started)
            return answer.status_code

        async def bob_later():
            await asyncio.sleep(0.05)
            return await timed("bob", bob)

        flood = [timed("alice", session) for session in alice for _ in range(4)]
        return await asyncio.gather(*flood, bob_later())

    codes = _portal(tmp_path, account, work)
    assert set(codes) == {200} and most[0] == 2  # alice's one, and bob's
    assert max(pieces) <= 64 << 10 and sum(pieces) == size * 9
    assert max(took["alice"]) >= 0.75 and took["bob"][0] < 0.35


# -- the routes (exchange.portal.viewing), with a session on that SFTP server -------------------


def _request(session, ask: str):
    """The view route and the request for `ask` (a path, with a query) in `session`."""
    from urllib.parse import unquote

    from starlette.requests import Request

    path, _, query = ask.partition("?")
    route, rest = ("picture", path.removeprefix("/files/picture/")) if "/picture/" in path else (
        "view", path.removeprefix("/files/view/"))  # fmt: skip
    folder, _, rest = rest.partition("/")
    params = {"folder": folder}
    if route == "picture":
        series, index, rest = rest.split("/", 2)
        params |= {"series": int(series), "index": int(index)}
    params["name"] = unquote(rest)
    scope = {"type": "http", "method": "GET", "path": path, "query_string": query.encode(),
             "headers": [(b"cookie", f"exchange_session={session.id}".encode()), (b"accept-language", b"en")],
             "path_params": params, "client": ("192.0.2.1", 1)}  # fmt: skip
    return route, Request(scope)


async def _ask(viewing, session, ask: str):
    route, request = _request(session, ask)
    return await getattr(viewing, route)(request)


def _account(tmp_path: Path, made) -> Path:
    """An account's two folders: a package and a letter.zip in download, a folder of DICOM files in upload."""
    account = tmp_path / "account"
    (account / "upload").mkdir(parents=True)
    (account / "download").mkdir()
    (account / "download" / "study.zip").write_bytes(made.path.read_bytes())
    (account / "download" / "letter.zip").write_bytes(b"not a zip")
    ct_study(account / "upload" / "scans", 2)
    return account


def _portal(tmp_path: Path, account: Path, work):
    """`await work(viewing, store, login)`: the real view routes and session store, over an SFTP
    session chrooted to `account` (sessions opened on `login`, of any account name, share it)."""
    from exchange.portal.pages import Pages
    from exchange.portal.sessions import SessionStore
    from exchange.portal.sftp import SshLogin
    from exchange.portal.viewing import Viewing
    from tests.unit.test_portal import POLICY, make_config

    async def main(sftp):
        store = SessionStore(600, 20, per_account=5)
        viewing = Viewing(
            Pages(make_config(tmp_path), POLICY), store, {"download": "/download", "upload": "/upload"}, 2
        )
        try:
            return await work(viewing, store, SshLogin(sftp.connection_for_tests, sftp))
        finally:
            await viewing.close()

    return over_sftp(account, main)


def _routes(tmp_path: Path, made, asks: list[str]) -> list:
    """Each path asked of the view routes in one web session (_account's folders)."""

    async def work(viewing, store, login):
        session = store.open("alice", "partner", "192.0.2.1", login, agent="Browser/1.0")
        return [await _ask(viewing, session, ask) for ask in asks]

    return _portal(tmp_path, _account(tmp_path, made), work)


def _first_img(page: bytes) -> str:
    return re.search(rb'<img src="([^"]+)"', page)[1].decode()


def _routes_picture(made, series: int, index: int) -> bytes:
    """The package's picture as STACKS.JSON lists it, read straight from the zip."""
    with zipfile.ZipFile(made.path) as archive:
        listed = json.loads(archive.read(pdi.STACKS))["series"][series - 1]["pictures"]
        return archive.read(listed[index - 1]["name"])


def test_the_view_routes_show_a_package_a_folder_and_refuse_what_is_not_there(made, tmp_path, audit_socket):
    answers = _routes(tmp_path, made, [
        "/files/view/download/study.zip",
        "/files/view/download/study.zip?series=1",
        "/files/picture/download/1/2/study.zip",
        "/files/view/download/letter.zip",
        "/files/view/upload/scans",
        "/files/picture/upload/1/1/scans",
        "/files/view/download/..%2Fupload%2Fscans",
        "/files/view/home/study.zip",
        "/files/view/download/study.zip?series=9",
        "/files/picture/download/1/31/study.zip",
    ])  # fmt: skip
    codes = [answer.status_code for answer in answers]
    assert codes == [200, 200, 200, 200, 200, 200, 404, 404, 404, 404]
    overview, stack, picture, letter, folder, rendered = (answer.body for answer in answers[:6])
    # The picture a patient sees first comes in the page itself: the overview's middle one, a series' first.
    assert _first_img(overview) == "data:image/jpeg;base64," + base64.b64encode(_routes_picture(made, 1, 15)).decode()
    assert b"/files/picture/download/1/15/study.zip" not in overview and b'class="stack"' not in overview
    assert stack.count(b"<figure>") == 30 and b"/static/viewer/stack.js" in stack
    assert _first_img(stack) == "data:image/jpeg;base64," + base64.b64encode(_routes_picture(made, 1, 1)).decode()
    assert b"/files/picture/download/1/1/study.zip" not in stack and b"/files/picture/download/1/2/study.zip" in stack
    assert picture.startswith(b"\xff\xd8\xff") and answers[2].media_type == "image/jpeg"
    assert b"This file cannot be shown here: it is not a zip file" in letter and b"/files/download/letter.zip" in letter
    assert b"/files/picture/upload/1/1/scans" in folder and b"/files/download/" not in folder
    assert rendered.startswith(b"\xff\xd8\xff")
    records = audit_socket.records()
    views = [(r["folder"], r["file"], r["series"], r["by"]) for r in records if r["event"] == "portal-view"]
    assert views == [
        ("download", "study.zip", None, "page"), ("download", "study.zip", 1, "page"),
        ("upload", "scans", None, "page"),
    ]  # fmt: skip
    # For the access trail: whose images the view showed, and to which browser.
    seen = [(r["patient_ids"], r["agent"]) for r in records if r["event"] == "portal-view"]
    assert seen == [(["SYN0001"], "Browser/1.0")] * 3
    refused = [r["reason"] for r in records if r["event"] == "portal-view-refused"]
    assert refused[0] == "it is not a zip file, or a damaged one" and refused.count("no such file") == 2


# -- what a crafted package cannot make the portal do ----------------------------------------------


def _stored(*names: str) -> dict[str, zipfile.ZipInfo]:
    """Directory entries of stored JPEGs, as the zip's directory gives them."""
    entries = {}
    for name in names:
        info = zipfile.ZipInfo(name)
        info.compress_type, info.file_size, info.compress_size = zipfile.ZIP_STORED, 100, 100
        entries[name] = info
    return entries


def _listing(*series: list[str], **fields) -> bytes:
    return json.dumps(
        {
            "format": 1,
            "series": [
                {"pictures": [{"name": n, "width": 8, "height": 8} for n in names], **fields} for names in series
            ],
        }  # fmt: skip
    ).encode()


def test_a_series_listing_more_pictures_than_a_package_holds_or_one_twice_is_refused(tmp_path):
    """STACKS.JSON of 24 KB naming one stored picture 180,000 times made a page of 180,000
    figures, written on the event loop at every view: exchange package writes at most 200 a
    series, each once."""
    names = [f"IHE_PDI/SE0001/IM{i:04d}.JPG" for i in range(1, 202)]
    assert len(package_view.parse_stacks(_listing(names[:200]), _stored(*names))[0].pictures) == 200
    with pytest.raises(NotViewable, match="more pictures than a study package holds"):
        package_view.parse_stacks(_listing(names), _stored(*names))
    with pytest.raises(NotViewable, match="names a picture twice"):
        package_view.parse_stacks(_listing(names[:3], names[2:4]), _stored(*names))
    name = "IHE_PDI/A.JPG"  # exp5: the whole zip, one picture listed 20,000 times
    stacks = _listing([name] * 20_000)
    content = _zip(tmp_path, {pdi.STACKS: (stacks, zipfile.ZIP_DEFLATED), name: (JPEG, zipfile.ZIP_STORED)})
    with pytest.raises(NotViewable, match="more pictures than a study package holds"):
        _open(tmp_path, content)


def test_a_series_may_hold_as_many_pictures_as_the_packager_gives_it_and_no_more():
    """exchange.dicom.webcontent.plan: 200 a series, fewer when the package would hold more than
    4,000, never fewer than 20: the page holds a package to the same rule."""
    from exchange.dicom import previews, webcontent

    assert (package_view.MAX_PER_SERIES, package_view.MAX_PER_PACKAGE, package_view.MIN_PER_SERIES) == (
        previews.MAX_PER_SERIES, webcontent.MAX_PER_PACKAGE, webcontent.MIN_PER_SERIES)  # fmt: skip
    many = [[f"IHE_PDI/SE{s:04d}/IM{i:04d}.JPG" for i in range(1, 22)] for s in range(1, 251)]
    entries = _stored(*(name for names in many for name in names))
    found = package_view.parse_stacks(_listing(*(names[:20] for names in many)), entries)
    assert len(found) == 250 and sum(len(s.pictures) for s in found) == 5000  # 20 each beyond 200 series
    with pytest.raises(NotViewable, match=r"series 250 lists more pictures than a study package holds \(20\)"):
        package_view.parse_stacks(_listing(*(names[:20] for names in many[:-1]), many[-1]), entries)


def test_more_series_than_the_page_shows_are_refused_and_the_senders_texts_are_cut():
    with pytest.raises(NotViewable, match="more than 1000 series"):
        package_view.parse_stacks(_listing(*([] for _ in range(1001))), {})
    long = "x" * 100_000
    problems = {f"reason {i}": 1 for i in range(100)}
    (series,) = package_view.parse_stacks(_listing([], series_description=long, problems={long: 2, **problems}), {})
    assert series.texts["series_description"] == "x" * 200
    assert len(series.problems) == 20 and series.problems["x" * 200] == 2


@pytest.mark.parametrize("name", [["IHE_PDI/A.JPG"], {"a": 1}, 7, None])
def test_a_picture_named_by_anything_but_a_text_is_left_out(name):
    raw = json.dumps({"format": 1, "series": [{"pictures": [{"name": name, "width": 1, "height": 1}]}]}).encode()
    (series,) = package_view.parse_stacks(raw, _stored("IHE_PDI/A.JPG"))
    assert series.pictures == ()


def _forged(cd_offset: int | None = None, zip64_offset: int | None = None, prefix: bytes = b"", version: int = 45):
    """A zip of STACKS.JSON whose end record or zip64 field lie about where things are (exp7)."""
    stacks, name = json.dumps({"format": 1, "series": []}).encode(), pdi.STACKS.encode()
    crc = zlib.crc32(stacks)
    local = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0, crc, len(stacks), len(stacks), len(name), 0)
    local += name + stacks
    extra, offset = (struct.pack("<HHQ", 1, 8, zip64_offset), 0xFFFFFFFF) if zip64_offset is not None else (b"", 0)
    central = struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 45, version, 0, 0, 0, 0, crc, len(stacks), len(stacks),
                          len(name), len(extra), 0, 0, 0, 0, offset) + name + extra  # fmt: skip
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, len(central), cd_offset or len(local), 0)
    return prefix + local + central + end


@pytest.mark.parametrize(
    "content, why",
    [
        (_forged(cd_offset=4070), "points outside the file"),  # zipfile's header_offset: -3994
        (_forged(zip64_offset=(1 << 64) - 1, prefix=b"\0" * 100), "points outside the file"),  # 2**64 + 99
        (_forged(version=200), "not a zip file"),  # zipfile: NotImplementedError("zip file version 20.0")
    ],
)
def test_a_forged_directory_is_not_viewable_rather_than_an_error(tmp_path, content, why):
    with pytest.raises(NotViewable, match=why):
        _open(tmp_path, content)


def test_a_view_keeps_only_where_its_listed_pictures_are(made):
    view = over_sftp(made.path.parent, lambda sftp: open_package(sftp, f"/{made.path.name}", made.path.name))
    listed = {p.name for s in view.series for p in s.pictures}
    assert set(view.entries) == listed and len(listed) == 30  # not STACKS.JSON, the pages, the script
    assert not any(isinstance(entry, zipfile.ZipInfo) for entry in view.entries.values())


def test_a_zip_with_more_web_content_entries_than_a_package_writes_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(package_view, "MAX_WEB_ENTRIES", 10)
    members = {f"IHE_PDI/X{i}.JPG": (JPEG, zipfile.ZIP_STORED) for i in range(10)}
    content = _zip(tmp_path, {pdi.STACKS: (_listing([]), zipfile.ZIP_DEFLATED), **members})
    with pytest.raises(NotViewable, match="more entries under IHE_PDI/ than any study package"):
        _open(tmp_path, content)
    del members["IHE_PDI/X9.JPG"]
    assert _open(tmp_path, _zip(tmp_path, {pdi.STACKS: (_listing([]), zipfile.ZIP_DEFLATED), **members}))


def test_a_study_is_read_once_per_session_at_a_time_and_once_per_account(made, tmp_path, monkeypatch):
    """Twelve page requests of one session read a zip's directory twelve times at once (1.7 GB
    for a 32 MB directory): now one read per session at a time, the others use what it read, and
    one per account over its sessions; another account is not held back."""
    account = _account(tmp_path, made)
    (account / "download" / "other.zip").write_bytes(made.path.read_bytes())
    reading, reads, most = [0], [], [0]
    real = package_view.open_package

    async def watched(sftp, path, name):
        reads.append(name)
        reading[0] += 1
        most[0] = max(most[0], reading[0])
        try:
            await asyncio.sleep(0.2)
            return await real(sftp, path, name)
        finally:
            reading[0] -= 1

    monkeypatch.setattr(package_view, "open_package", watched)

    async def work(viewing, store, login):
        alice = store.open("alice", "partner", "192.0.2.1", login)
        answers = await asyncio.gather(*(_ask(viewing, alice, "/files/view/download/study.zip") for _ in range(12)))
        once = (list(reads), most[0], {a.status_code for a in answers})
        reads.clear(), most.__setitem__(0, 0)
        second = store.open("alice", "partner", "192.0.2.1", login)
        alice.views.clear()
        await asyncio.gather(*(_ask(viewing, s, f"/files/view/download/{n}") for s, n in
                               [(alice, "study.zip"), (second, "other.zip")]))  # fmt: skip
        account_most = most[0]
        most[0] = 0
        bob = store.open("bob", "partner", "192.0.2.2", login)
        alice.views.clear()
        await asyncio.gather(*(_ask(viewing, s, "/files/view/download/other.zip") for s in (alice, bob)))
        return once, account_most, most[0]

    (once_reads, once_most, codes), account_most, two_accounts = _portal(tmp_path, account, work)
    assert once_reads == ["study.zip"] and once_most == 1 and codes == {200}
    assert account_most == 1 and two_accounts == 2


def test_studies_are_parsed_in_threads_of_the_view_pages_own(made, tmp_path):
    """Directories and headers were parsed in the loop's default executor, which logins and
    everything else share: a package's 32 MB directory held it for seconds."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    async def work(viewing, store, login):
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(1))
        release = threading.Event()
        taken = loop.run_in_executor(None, release.wait, 30)  # the shared executor is busy
        try:
            session = store.open("alice", "partner", "192.0.2.1", login)
            return [(await asyncio.wait_for(_ask(viewing, session, ask), 10)).status_code
                    for ask in ("/files/view/download/study.zip", "/files/view/upload/scans")]  # fmt: skip
        finally:
            release.set()
            await taken

    assert _portal(tmp_path, _account(tmp_path, made), work) == [200, 200]


@pytest.fixture(scope="module")
def made_two(tmp_path_factory):
    root = tmp_path_factory.mktemp("view-two")
    ct_study(root / "ct", 5, series=2)
    return package(root, root / "ct")


def test_pictures_read_with_a_kept_directory_name_their_series_in_the_audit_trail(made_two, tmp_path, audit_socket):
    """The overview's record covers the picture it shows of each series (the middle one), a series
    page's its stack; a picture no record covered names its series once (exp18: 60 pictures
    served after one record)."""
    answers = _routes(tmp_path, made_two, [
        "/files/view/download/study.zip",
        "/files/picture/download/1/3/study.zip",  # on the overview
        "/files/picture/download/2/3/study.zip",
        "/files/picture/download/1/1/study.zip",  # not on it: series 1 is named
        "/files/picture/download/1/2/study.zip",
        "/files/picture/download/1/5/study.zip",
        "/files/view/download/study.zip?series=2",
        "/files/picture/download/2/1/study.zip",  # on that page
    ])  # fmt: skip
    assert [a.status_code for a in answers] == [200] * 8
    views = [(r["series"], r["by"]) for r in audit_socket.records() if r["event"] == "portal-view"]
    assert views == [(None, "page"), (1, "picture"), (2, "page")]


def test_a_picture_asked_for_without_a_page_names_its_series_once(made_two, tmp_path, audit_socket):
    answers = _routes(tmp_path, made_two, [f"/files/picture/download/2/{i}/study.zip" for i in (1, 2, 3)])
    assert [a.status_code for a in answers] == [200] * 3
    views = [(r["series"], r["by"]) for r in audit_socket.records() if r["event"] == "portal-view"]
    assert views == [(2, "picture")]


def test_hidden_names_count_toward_the_folders_cap(tmp_path, monkeypatch):
    """exp20: 60,000 dot-files were walked, not one of them counted."""
    ct_study(tmp_path / "share" / "scans", 1)
    for i in range(6):
        (tmp_path / "share" / "scans" / f".hidden{i}").touch()
    monkeypatch.setattr(folder_view, "MAX_ENTRIES", 5)
    with pytest.raises(NotViewable, match="more than 5 names"):
        over_sftp(tmp_path / "share", lambda sftp: folder_view.open_folder(sftp, "/scans", "scans", 2))


def test_a_folder_refused_midway_has_its_listing_closed_at_once(tmp_path, monkeypatch):
    """Left to the loop's finalizer, the listing's handle was closed later, if at all (a session
    closed meanwhile: never, and the portal's shutdown waited for it)."""
    ct_study(tmp_path / "share" / "scans", 6)
    monkeypatch.setattr(folder_view, "MAX_ENTRIES", 5)
    closed = []

    async def work(sftp):
        listing = sftp.scandir

        async def watched(path):
            try:
                async for entry in listing(path):
                    yield entry
            finally:
                closed.append(path)

        sftp.scandir = watched
        with pytest.raises(NotViewable, match="more than 5 names"):
            await folder_view.open_folder(sftp, "/scans", "scans", 2)
        return list(closed)

    assert over_sftp(tmp_path / "share", work) == ["/scans"]


def _package_reads(monkeypatch) -> list[str]:
    """The names of the packages whose directory is read from now on, in order."""
    reads = []
    real = package_view.open_package

    async def watched(sftp, path, name):
        reads.append(name)
        return await real(sftp, path, name)

    monkeypatch.setattr(package_view, "open_package", watched)
    return reads


def test_the_files_page_reads_the_newest_package_ahead_and_its_view_page_uses_it(
    made, tmp_path, monkeypatch, audit_socket
):
    """What a patient opens after the files page is a package's View: the files page starts
    reading the newest package's directory, once at a time per session, a file that was not
    viewable not again; the view page then reads nothing again, and only it is recorded."""
    from exchange.portal import files

    account = _account(tmp_path, made)
    for age, name in enumerate(["letter.zip", "c.zip", "study.zip"]):
        path = account / "download" / name
        if not path.exists():
            path.write_bytes(made.path.read_bytes())
        os.utime(path, (time.time() - 60 * (age + 1),) * 2)
    reads = _package_reads(monkeypatch)

    async def files_page(viewing, session):
        viewing.read_ahead(session, await files.listing(session.ssh.sftp, "/download"))
        task = viewing.reading_ahead.get(session.id)
        viewing.read_ahead(session, await files.listing(session.ssh.sftp, "/download"))  # while one runs, no second
        if task:
            await task

    async def work(viewing, store, login):
        session = store.open("alice", "partner", "192.0.2.1", login)
        await files_page(viewing, session)  # letter.zip, the newest, is no zip
        await files_page(viewing, session)  # and is not read again
        os.utime(account / "download" / "c.zip")  # now the newest
        await files_page(viewing, session)
        ahead, kept, before_page = list(reads), list(session.views), audit_socket.records()
        page = await _ask(viewing, session, "/files/view/download/c.zip")
        await files_page(viewing, session)  # what it holds is not read again
        return ahead, kept, before_page, page, list(reads)

    ahead, kept, before_page, page, after = _portal(tmp_path, account, work)
    assert ahead == ["letter.zip", "c.zip"], ahead
    assert kept == [("download", "c.zip")], kept
    assert not [r for r in before_page if r["event"].startswith("portal-view")]
    assert page.status_code == 200 and b"data:image/jpeg;base64," in page.body
    assert after == ahead
    views = [(r["file"], r["by"]) for r in audit_socket.records() if r["event"] == "portal-view"]
    assert views == [("c.zip", "page")]


def test_a_package_replaced_while_read_ahead_is_not_shown_as_it_was(made, tmp_path, monkeypatch, audit_socket):
    """A view page that waited for the files page's read-ahead took its view unchecked: staff
    replaced the package meanwhile, and the page showed the old study's patient. Now its own
    stat decides, as for any kept view."""
    from exchange.portal import files

    account = _account(tmp_path, made)
    target = account / "download" / "study.zip"
    os.utime(account / "download" / "letter.zip", (time.time() - 600,) * 2)
    real = package_view.open_package

    async def work(viewing, store, login):
        gate, started = asyncio.Event(), asyncio.Event()

        async def slow(sftp, path, name):
            view = await real(sftp, path, name)
            if name == "study.zip":
                started.set()
                await gate.wait()
            return view

        monkeypatch.setattr(package_view, "open_package", slow)
        session = store.open("alice", "partner", "192.0.2.1", login)
        viewing.read_ahead(session, await files.listing(session.ssh.sftp, "/download"))
        await started.wait()
        target.write_bytes(b"replaced: not a zip any more" * 10)
        page = asyncio.create_task(_ask(viewing, session, "/files/view/download/study.zip"))
        await asyncio.sleep(0.2)
        gate.set()
        return await page

    page = _portal(tmp_path, account, work)
    assert page.status_code == 200 and b"it is not a zip file" in page.body and b"SYN0001" not in page.body
    records = [r for r in audit_socket.records() if r["event"].startswith("portal-view")]
    assert [r["event"] for r in records] == ["portal-view-refused"]


def test_a_read_ahead_stops_for_a_session_that_ended(made, tmp_path, monkeypatch):
    from exchange.portal import files

    account = _account(tmp_path, made)
    reads = _package_reads(monkeypatch)

    async def work(viewing, store, login):
        session = store.open("alice", "partner", "192.0.2.1", login)
        viewing.read_ahead(session, await files.listing(session.ssh.sftp, "/download"))
        task = viewing.reading_ahead[session.id]
        store._sessions.pop(session.id)  # logged out (the test's connection is shared: not closed)
        await task
        return list(session.views), session.id in viewing.reading_ahead

    assert _portal(tmp_path, account, work) == ([], False) and reads == []


def test_a_pages_own_picture_waits_its_turn_with_the_sessions_other_pictures(made, tmp_path, monkeypatch):
    """The picture a page carries was read outside the session's turns: many pages at once
    read as many pictures at once. Now at most PICTURE_READS_PER_SESSION."""
    from exchange.portal import viewing as viewing_module

    reading, most = [0], [0]
    real = package_view.read_picture

    async def watched(*args):
        reading[0] += 1
        most[0] = max(most[0], reading[0])
        try:
            await asyncio.sleep(0.05)
            return await real(*args)
        finally:
            reading[0] -= 1

    monkeypatch.setattr(package_view, "read_picture", watched)

    async def work(viewing, store, login):
        session = store.open("alice", "partner", "192.0.2.1", login)
        await _ask(viewing, session, "/files/view/download/study.zip")
        asks = [f"/files/view/download/study.zip?series=1&n={n}" for n in range(12)]
        return {a.status_code for a in await asyncio.gather(*(_ask(viewing, session, ask) for ask in asks))}

    assert _portal(tmp_path, _account(tmp_path, made), work) == {200}
    assert most[0] == viewing_module.PICTURE_READS_PER_SESSION


@pytest.mark.parametrize("ask", ["/files/view/download/study.zip", "/files/view/download/study.zip?series=1"])
def test_a_package_replaced_after_it_was_viewed_is_read_anew_by_its_next_page(made, tmp_path, audit_socket, ask):
    """A page of a package the session holds is checked by its picture's own read: a file
    replaced since is never shown with the directory held."""
    account = _account(tmp_path, made)
    target = account / "download" / "study.zip"

    async def work(viewing, store, login):
        session = store.open("alice", "partner", "192.0.2.1", login)
        first = await _ask(viewing, session, ask)
        target.write_bytes(b"replaced: not a zip any more" * 10)
        return first, await _ask(viewing, session, ask), list(session.views)

    first, second, kept = _portal(tmp_path, account, work)
    assert first.status_code == 200 and b"SYN0001" in first.body
    assert second.status_code == 200 and b"it is not a zip file" in second.body and b"SYN0001" not in second.body
    assert kept == []
    events = [r["event"] for r in audit_socket.records() if r["event"].startswith("portal-view")]
    assert events == ["portal-view", "portal-view-refused"]


def test_a_hostile_package_name_shows_escaped_on_both_pages(made, tmp_path):
    """A name staff (or a sender's file) chose, markup and all: in the URLs quoted, in the text escaped."""
    from urllib.parse import quote

    hostile = 'x"><img src=x onerror=alert(1)>&amp;.zip'
    account = _account(tmp_path, made)
    (account / "download" / hostile).write_bytes(made.path.read_bytes())

    async def work(viewing, store, login):
        session = store.open("alice", "partner", "192.0.2.1", login)
        return [await _ask(viewing, session, f"/files/view/download/{quote(hostile)}{q}") for q in ("", "?series=1")]

    for page in _portal(tmp_path, account, work):
        assert page.status_code == 200 and b"<img src=x" not in page.body and b'x"><' not in page.body
        assert quote(hostile).encode() in page.body


def test_a_page_reads_no_picture_for_a_series_it_lacks_and_reads_anew_a_file_replaced_just_after(
    made, tmp_path, monkeypatch
):
    """A series the package lacks is a 404 without a picture read first; a file found replaced
    by the page's picture read (None: not the view's file) is read anew, held or not."""
    reads = _package_reads(monkeypatch)
    pictures = []
    real = package_view.read_picture

    async def replaced_once(*args):
        pictures.append(args[3].filename)
        return None if len(pictures) == 1 else await real(*args)

    monkeypatch.setattr(package_view, "read_picture", replaced_once)

    async def work(viewing, store, login):
        session = store.open("alice", "partner", "192.0.2.1", login)
        first = await _ask(viewing, session, "/files/view/download/study.zip")
        asked = len(pictures)
        missing = await _ask(viewing, session, "/files/view/download/study.zip?series=9")
        return first, asked, missing

    first, asked, missing = _portal(tmp_path, _account(tmp_path, made), work)
    assert first.status_code == 200 and b"data:image/jpeg;base64," in first.body
    assert reads == ["study.zip", "study.zip"] and asked == 2
    assert missing.status_code == 404 and len(pictures) == 2
