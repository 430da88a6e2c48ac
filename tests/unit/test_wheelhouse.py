"""The deploy's wheelhouse is built outside the checkout, so a read-only checkout deploys."""

import os
import subprocess
import zipfile
from pathlib import Path

from roles import REPO
from roles.tools import build_own_wheel, wheelhouse_cache


def checkout_files() -> set[str]:
    """Every file in the checkout, ignored ones too (a build/ or egg-info folder would show)."""
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "--cached", "--others", "-z"], capture_output=True, check=True
    ).stdout
    return {name for name in listed.decode().split("\0") if name and not name.startswith((".venv/", "reports/"))}


def test_the_cache_is_named_or_the_users_own(monkeypatch, tmp_path):
    monkeypatch.setenv("EXCHANGE_WHEELHOUSE", str(tmp_path / "named"))
    assert wheelhouse_cache() == tmp_path / "named"
    monkeypatch.delenv("EXCHANGE_WHEELHOUSE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert wheelhouse_cache() == tmp_path / "cache" / "imaging-exchange" / "wheelhouse"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert wheelhouse_cache() == Path.home() / ".cache" / "imaging-exchange" / "wheelhouse"
    assert REPO not in wheelhouse_cache().parents


def test_building_the_wheel_writes_nothing_into_the_checkout(tmp_path):
    before = checkout_files()
    wheel = build_own_wheel(tmp_path, {**os.environ, "SOURCE_DATE_EPOCH": "315532800"})
    assert checkout_files() == before
    with zipfile.ZipFile(wheel) as built:
        names = built.namelist()
    assert "exchange/paths.py" in names and "exchange/cli/__init__.py" in names
    # The texts the server renders ship with the tools that render them.
    assert (
        "exchange/templates/messages/link-email.nl.j2" in names
        and "exchange/templates/portal/static/upload.js" in names
    )
