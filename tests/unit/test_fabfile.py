"""The staff's Fabric tasks (fabfile.py): what `fab` on a workstation makes the server run."""

import pytest
from invoke import Collection
from invoke.exceptions import Exit
from invoke.parser import Parser

import fabfile


def server_command(monkeypatch, *argv: str) -> list[str]:
    """Parse `fab TASK ...` as fab does and return the `exchange` arguments the task would run."""
    tasks = Collection.from_module(fabfile)
    (parsed,) = Parser(contexts=tasks.to_contexts()).parse_argv(list(argv))
    ran = []
    monkeypatch.setattr(fabfile, "_exchange", lambda c, *args: ran.append(list(args)))
    tasks[parsed.name].body(None, **parsed.as_kwargs)
    (args,) = ran
    return args


def test_package_takes_each_path_as_given_with_commas_and_spaces(monkeypatch):
    args = server_command(
        monkeypatch, "package", "--to", "link-k7m2p9qa", "--paths", "/data/CT thorax, contrast",
        "--paths", " /data/MR knee ", "--label", "CT thorax",
    )  # fmt: skip
    assert args == [
        "package", "--to", "link-k7m2p9qa", "--label", "CT thorax", "--", "/data/CT thorax, contrast", " /data/MR knee ",
    ]  # fmt: skip


def test_package_without_paths_stops_before_the_server(monkeypatch):
    with pytest.raises(Exit) as stopped:
        server_command(monkeypatch, "package", "--to", "link-k7m2p9qa")
    assert stopped.value.code == 2 and "--paths" in str(stopped.value.message)


def test_package_from_pacs_passes_the_study_named(monkeypatch):
    args = server_command(
        monkeypatch, "package", "--to", "link-k7m2p9qa", "--accession", "A 123", "--pacs", "main", "--all"
    )
    assert args == ["package", "--to", "link-k7m2p9qa", "--accession", "A 123", "--pacs", "main", "--all"]
    with pytest.raises(Exit) as stopped:
        server_command(monkeypatch, "package", "--to", "link-k7m2p9qa", "--accession", "A1", "--paths", "/data/ct")
    assert stopped.value.code == 2 and "not both" in str(stopped.value.message)


def test_pacs_tasks_run_the_pacs_commands(monkeypatch):
    assert server_command(monkeypatch, "pacs-echo", "main") == ["pacs", "echo", "main"]
    assert server_command(monkeypatch, "pacs-find", "--patient-id", "P1", "--date", "2026-01-01") == [
        "pacs", "find", "--patient-id", "P1", "--date", "2026-01-01",
    ]  # fmt: skip


def test_import_takes_the_path_as_given_after_the_options(monkeypatch):
    args = server_command(
        monkeypatch, "import", "--to-pacs", "main", "--patient-id", "1234567", "--force-reconcile",
        "/srv/exchange/partners/cardiology/upload/--disc 0412.zip",
    )  # fmt: skip
    assert args == [
        "import", "--to-pacs", "main", "--patient-id", "1234567", "--force-reconcile", "--",
        "/srv/exchange/partners/cardiology/upload/--disc 0412.zip",
    ]  # fmt: skip
    assert server_command(monkeypatch, "import", "/data/disc.zip", "--to-pacs", "main") == [
        "import", "--to-pacs", "main", "--", "/data/disc.zip",
    ]  # fmt: skip


def test_link_issue_passes_the_downloaded_notice_on_only_when_asked(monkeypatch):
    base = ["link", "issue", "--email", "p@example.org", "--phone", "+31612345678", "--lang", "en"]
    asked = server_command(
        monkeypatch, "link-issue", "--email", "p@example.org", "--phone", "+31612345678", "--lang", "en",
        "--notify-downloaded",
    )  # fmt: skip
    assert asked == [*base, "--notify-downloaded"]
    assert (
        server_command(monkeypatch, "link-issue", "--email", "p@example.org", "--phone", "+31612345678", "--lang", "en")
        == base
    )
