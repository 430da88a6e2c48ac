"""The on-host tools: the `exchange` package in its own venv, `exchange` on PATH, and the
policy they obey at /etc/imaging-exchange/policies.yaml.

The servers need no access to a package index: the deploy builds a wheelhouse on the
admin's machine (cached outside the checkout, see `wheelhouse_cache`, keyed on the package
source and the server's architecture) and installs from it with `pip --no-index`.
"""

from __future__ import annotations

import fnmatch
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy, operation
from pyinfra.api.command import FileUploadCommand
from pyinfra.facts.files import FileContents
from pyinfra.facts.server import Arch
from pyinfra.operations import apt, files, server

from exchange import paths
from exchange.policy import LoadedPolicy
from roles import REPO
from roles.ops import config_file, files_digest, sudo_rule
from roles.templating import render

MANIFEST = f"{paths.TOOLS_VENV}/.wheelhouse"
# The servers run Debian 12's CPython 3.11 (glibc 2.36).
TARGET = ["--python-version", "3.11", "--implementation", "cp", "--abi", "cp311"]
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
# What a build or an import leaves beside the sources, never part of the package.
NOT_SOURCES = ("*.egg-info", "__pycache__")


def package_files() -> list[Path]:
    """The on-host package's files: its code and the texts it ships (messages, pages)."""
    return [
        p
        for p in (REPO / "scripts").rglob("*")
        if p.is_file() and not any(fnmatch.fnmatch(part, pattern) for part in p.parts for pattern in NOT_SOURCES)
    ]


def source_digest(arch: str) -> str:
    """What the tools are built from, for this architecture (the wheelhouse's cache key)."""
    sources = [REPO / "pyproject.toml", *package_files()]
    return files_digest(sources, seed=arch.encode())[:16]


def wheelhouse_cache() -> Path:
    """Where the admin's machine keeps built wheelhouses: outside the checkout, so a read-only
    checkout deploys ($EXCHANGE_WHEELHOUSE, else the user's cache folder)."""
    named = os.environ.get("EXCHANGE_WHEELHOUSE")
    if named:
        return Path(named)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "imaging-exchange" / "wheelhouse"


def build_own_wheel(out: Path, env: dict[str, str]) -> Path:
    """The exchange package's wheel, built from a copy of its sources: setuptools writes its
    build and egg-info folders beside the sources, never into the checkout."""
    with tempfile.TemporaryDirectory(prefix="imaging-exchange-build-") as folder:
        copy = Path(folder)
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(REPO / name, copy / name)
        shutil.copytree(REPO / "scripts", copy / "scripts", ignore=shutil.ignore_patterns(*NOT_SOURCES))
        subprocess.run([*PIP, "wheel", "--no-deps", "--wheel-dir", str(out), str(copy)], check=True, env=env)
    (own,) = out.glob("imaging_exchange-*.whl")
    return own


def wheelhouse(arch: str) -> tuple[Path, str]:
    """Build (once per source version) the wheels the servers install from."""
    key = f"{arch}-{source_digest(arch)}"
    out = wheelhouse_cache() / key
    if (out / ".complete").exists():
        return out, key
    out.parent.mkdir(parents=True, exist_ok=True)
    # Built aside and renamed into place whole: deploys side by side never share a half-built one.
    building = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=out.parent))
    # A fixed timestamp makes our wheel byte-identical for the same source.
    env = {**os.environ, "SOURCE_DATE_EPOCH": "315532800"}
    own = build_own_wheel(building, env)
    platforms = [f"--platform=manylinux_2_{minor}_{arch}" for minor in (17, 28, 34)] + [
        f"--platform=manylinux2014_{arch}"
    ]
    subprocess.run(
        [*PIP, "download", "--only-binary=:all:", *TARGET, *platforms, "--dest", str(building), str(own)],
        check=True,
        env=env,
    )
    (building / ".complete").touch()
    building.chmod(0o755)
    try:
        building.rename(out)
    except OSError:  # another deploy got there first, or a stale unfinished one is in the way
        if not (out / ".complete").exists():
            shutil.rmtree(out)
            building.rename(out)
        else:
            shutil.rmtree(building)
    return out, key


def wheelhouse_archive(source: Path) -> Path:
    """The wheelhouse as one tar beside it (made once): one upload instead of a file sync of
    some forty wheels, each checked and sent on its own."""
    archive = source.with_name(f"{source.name}.tar")
    if not archive.exists():
        handle, name = tempfile.mkstemp(prefix=f".{source.name}-", suffix=".tar", dir=source.parent)
        making = Path(name)
        with os.fdopen(handle, "wb") as file, tarfile.open(fileobj=file, mode="w") as tar:
            for wheel in sorted(source.glob("*.whl")):
                tar.add(wheel, arcname=wheel.name)
        making.rename(archive)  # whole or not at all, for deploys side by side
    return archive


@operation()
def install_tools(key: str, archive: str):
    """(Re)install the exchange package into the venv when the wheelhouse changed: its wheels
    replace the server's copy whole, then pip installs from them alone."""
    installed = host.get_fact(FileContents, path=MANIFEST)
    if installed and installed[0].strip() == key:
        host.noop(f"exchange tools {key} are installed")
        return
    upload = f"{paths.TOOLS_PREFIX}/.wheels-{key}.tar"
    yield FileUploadCommand(archive, upload)
    yield (
        f"rm -rf {paths.TOOLS_WHEELS} && mkdir -m 755 {paths.TOOLS_WHEELS} && "
        f"tar -xf {upload} -C {paths.TOOLS_WHEELS} --no-same-owner && chmod 644 {paths.TOOLS_WHEELS}/* && rm -f {upload}"
    )
    yield f"[ -x {paths.TOOLS_VENV}/bin/python ] || python3 -m venv {paths.TOOLS_VENV}"
    yield (
        f"{paths.TOOLS_VENV}/bin/pip install --quiet --disable-pip-version-check --no-index --find-links {paths.TOOLS_WHEELS} "
        f"--upgrade --force-reinstall imaging-exchange"
    )
    yield f"echo {shlex.quote(key)} > {MANIFEST}"


@deploy("Exchange tools")
def tools(policy: LoadedPolicy) -> None:
    apt.packages(name="Install Python venv support", packages=["python3-venv"], no_recommends=True)
    arch = host.get_fact(Arch)
    source, key = wheelhouse(arch)
    files.directory(name="Tools directory", path=paths.TOOLS_PREFIX, user="root", group="root", mode="755")
    files.directory(name="Configuration directory", path=paths.CONFIG_DIR, user="root", group="root", mode="755")
    install_tools(name="Install the exchange tools", key=key, archive=str(wheelhouse_archive(source)))
    files.link(name="Put `exchange` on PATH", path=paths.EXCHANGE, target=f"{paths.TOOLS_VENV}/bin/exchange")
    config_file(
        name="Install the policy the tools obey",
        dest=paths.POLICY,
        content=policy.path.read_text(encoding="utf-8"),
        mode="644",
        validate=f"{paths.TOOLS_VENV}/bin/exchange policy check {{path}} >/dev/null",
    )
    config_file(
        name="The tools' lock folder: root only",
        dest=paths.TOOLS_TMPFILES,
        content=render("tools/tmpfiles.conf.j2", run_dir=paths.TOOL_RUN_DIR),
        apply=f"systemd-tmpfiles --create {paths.TOOLS_TMPFILES}",
    )
    # Who saw which patient's images, kept for years: root only, outside the exchange root the
    # purge walks (exchange.trail; the purge removes its months past audit.retention_years only).
    files.directory(name="The access trail: root only", path=paths.TRAIL_DIR, user="root", group="root", mode="700")
    staff = policy.policy.accounts.staff_group
    server.group(name=f"Group {staff}", group=staff, system=True)
    sudo_rule(
        name="Staff may run `exchange` as root, nothing else",
        dest=paths.STAFF_SUDOERS,
        group=staff,
        command=paths.EXCHANGE,
    )
