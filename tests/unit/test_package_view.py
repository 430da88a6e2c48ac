"""The view page's reading of a study, a package in place (exchange.portal.package_view) or a
folder of DICOM files (exchange.portal.folder_view), through a real SFTP session: asyncssh's client against asyncssh's own SFTP server on loopback, chrooted to a
test folder (the e2e tests do the same through the test host's sshd and its chroots)."""

from __future__ import annotations

import asyncio
import json
import os
import struct
import zipfile
from pathlib import Path

import asyncssh
import pytest

from exchange.dicom import pdi
from exchange.portal import folder_view, package_view
from exchange.portal.package_view import open_package, read_picture
from exchange.portal.study_view import NotViewable
from tests.dicom_synth import ct_study
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
        renderer = folder_view.Renderer(workers=1)
        try:
            file, frame = view.picture(1, 3)
            data = await folder_view.read_file(sftp, f"/CT from abroad/{file.path}", file)
            return view, await renderer.render(data, file.transfer_syntax, frame)
        finally:
            renderer.close()

    view, jpeg = over_sftp(tmp_path / "share", work)
    assert [(s.frames, len(s.pictures)) for s in view.series] == [(5, 5), (3, 3)]
    assert {s.texts["patient_id"] for s in view.series} == {"FOLDER01"}  # the link's OUTSIDE1 is not followed
    assert all(p.name.startswith("more/deeper/") for p in view.series[1].pictures)
    assert isinstance(jpeg, bytes) and jpeg.startswith(b"\xff\xd8\xff")


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


def test_a_render_worker_that_dies_fails_its_picture_only_and_the_next_renders(tmp_path):
    (path,) = ct_study(tmp_path / "one", 1)
    data = path.read_bytes()

    async def work():
        renderer = folder_view.Renderer(workers=1)
        try:
            first = await renderer.render(data, "1.2.840.10008.1.2.1", 0)
            for process in list(renderer._pool._processes.values()):
                os.kill(process.pid, 9)  # as a decoder's crash on a sender's file would
                process.join()
            failed = await renderer.render(data, "1.2.840.10008.1.2.1", 0)
            again = await renderer.render(data, "1.2.840.10008.1.2.1", 0)
            return first, failed, again
        finally:
            renderer.close()

    first, failed, again = asyncio.run(work())
    assert first.startswith(b"\xff\xd8") and failed == "its pixel data cannot be decoded" and again == first


# -- the routes (exchange.portal.viewing), with a session on that SFTP server -------------------


def _routes(tmp_path: Path, made, asks: list[str]) -> list:
    """Each path asked of the view routes in one web session whose SFTP session is chrooted to
    an account's two folders: a package and a folder of DICOM files in download, a letter.zip."""
    from starlette.requests import Request

    from exchange.portal.pages import Pages
    from exchange.portal.sessions import SessionStore
    from exchange.portal.sftp import SshLogin
    from exchange.portal.viewing import Viewing
    from tests.unit.test_portal import POLICY, make_config

    account = tmp_path / "account"
    (account / "upload").mkdir(parents=True)
    (account / "download").mkdir()
    (account / "download" / "study.zip").write_bytes(made.path.read_bytes())
    (account / "download" / "letter.zip").write_bytes(b"not a zip")
    ct_study(account / "upload" / "scans", 2)

    async def work(sftp):
        sessions = SessionStore(600, 10)
        login = SshLogin(sftp.connection_for_tests, sftp)
        session = sessions.open("alice", "partner", "192.0.2.1", login)
        viewing = Viewing(
            Pages(make_config(tmp_path), POLICY), sessions, {"download": "/download", "upload": "/upload"}, 2
        )
        answers = []
        try:
            for ask in asks:
                path, _, query = ask.partition("?")
                route, rest = ("picture", path.removeprefix("/files/picture/")) if "/picture/" in path else (
                    "view", path.removeprefix("/files/view/"))  # fmt: skip
                folder, _, rest = rest.partition("/")
                params = {"folder": folder}
                if route == "picture":
                    series, index, rest = rest.split("/", 2)
                    params |= {"series": int(series), "index": int(index)}
                params["name"] = __import__("urllib.parse").parse.unquote(rest)
                scope = {"type": "http", "method": "GET", "path": path, "query_string": query.encode(),
                         "headers": [(b"cookie", f"exchange_session={session.id}".encode()), (b"accept-language", b"en")], "path_params": params,
                         "client": ("192.0.2.1", 1)}  # fmt: skip
                answers.append(await getattr(viewing, route)(Request(scope)))
        finally:
            viewing.close()
        return answers

    return over_sftp(account, work)


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
    assert b"/files/picture/download/1/15/study.zip" in overview and b'class="stack"' not in overview
    assert stack.count(b"<figure>") == 30 and b"/static/viewer/stack.js" in stack
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
    refused = [r["reason"] for r in records if r["event"] == "portal-view-refused"]
    assert refused[0] == "it is not a zip file, or a damaged one" and refused.count("no such file") == 2
