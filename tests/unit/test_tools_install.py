"""roles.tools: the tools are installed from one uploaded archive of the wheelhouse, and only
when the installed key differs."""

import tarfile

from pyinfra.facts.files import FileContents

from roles.tools import MANIFEST, install_tools, wheelhouse_archive
from tests.unit.fakehost import run


def test_the_installed_version_needs_nothing():
    commands, noops = run(install_tools, FileContents, ["x86_64-0123abcd\n"], key="x86_64-0123abcd", archive="/a.tar")
    assert commands == [] and noops == ["exchange tools x86_64-0123abcd are installed"]


def test_another_version_replaces_the_wheels_whole_and_installs_from_them_alone():
    commands, noops = run(install_tools, FileContents, ["x86_64-old\n"], key="x86_64-new", archive="/a.tar")
    assert noops == []
    upload, unpack, venv, pip, manifest = commands
    assert "/a.tar" in upload and "/opt/imaging-exchange/.wheels-x86_64-new.tar" in upload
    assert unpack.startswith(
        "rm -rf /opt/imaging-exchange/wheels && mkdir -m 755 /opt/imaging-exchange/wheels && tar -xf"
    )
    assert unpack.endswith("rm -f /opt/imaging-exchange/.wheels-x86_64-new.tar")
    assert "--no-index --find-links /opt/imaging-exchange/wheels" in pip and "--force-reinstall imaging-exchange" in pip
    assert manifest == f"echo x86_64-new > {MANIFEST}"
    assert run(install_tools, FileContents, None, key="x86_64-new", archive="/a.tar")[0][1:] == commands[1:]


def test_the_archive_holds_the_wheels_and_is_made_once(tmp_path):
    source = tmp_path / "x86_64-0123abcd"
    source.mkdir()
    for name in ("imaging_exchange-0.1.0-py3-none-any.whl", "pydicom-3.0.2-py3-none-any.whl", ".complete"):
        (source / name).write_bytes(name.encode())
    archive = wheelhouse_archive(source)
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == ["imaging_exchange-0.1.0-py3-none-any.whl", "pydicom-3.0.2-py3-none-any.whl"]
    made = archive.stat().st_mtime_ns
    assert wheelhouse_archive(source) == archive and archive.stat().st_mtime_ns == made
