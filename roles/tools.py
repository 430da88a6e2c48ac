"""The on-host tools: the `exchange` package in its own venv, `exchange` on PATH, and the
policy they obey at /etc/imaging-exchange/policies.yaml.

The servers need no access to a package index: the deploy builds a wheelhouse on the
admin's machine (cached in build/wheelhouse, keyed on the package source and the
server's architecture) and installs from it with `pip --no-index`.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy, operation
from pyinfra.facts.files import FileContents
from pyinfra.facts.server import Arch
from pyinfra.operations import apt, files, server

from exchange.paths import TOOL_RUN_DIR, TOOLS_TMPFILES
from exchange.policy import HOST_POLICY_PATH, LoadedPolicy
from roles import REPO
from roles.ops import config_file, files_digest, sudo_rule
from roles.templating import render

PREFIX = "/opt/imaging-exchange"
VENV = f"{PREFIX}/venv"
WHEELS = f"{PREFIX}/wheels"
MANIFEST = f"{VENV}/.wheelhouse"
EXCHANGE = "/usr/local/bin/exchange"
# The servers run Debian 12's CPython 3.11 (glibc 2.36).
TARGET = ["--python-version", "3.11", "--implementation", "cp", "--abi", "cp311"]


def source_digest(arch: str) -> str:
    """What the tools are built from, for this architecture (the wheelhouse's cache key)."""
    sources = [REPO / "pyproject.toml", *(REPO / "scripts").rglob("*.py"), *(REPO / "scripts").rglob("py.typed")]
    return files_digest(sources, seed=arch.encode())[:16]


def wheelhouse(arch: str) -> tuple[Path, str]:
    """Build (once per source version) the wheels the servers install from."""
    key = f"{arch}-{source_digest(arch)}"
    out = REPO / "build" / "wheelhouse" / key
    if (out / ".complete").exists():
        return out, key
    out.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    # A fixed timestamp makes our wheel byte-identical for the same source.
    env = {**os.environ, "SOURCE_DATE_EPOCH": "315532800"}
    subprocess.run([*pip, "wheel", "--no-deps", "--wheel-dir", str(out), str(REPO)], check=True, env=env)
    (own,) = out.glob("imaging_exchange-*.whl")
    platforms = [f"--platform=manylinux_2_{minor}_{arch}" for minor in (17, 28, 34)] + [
        f"--platform=manylinux2014_{arch}"
    ]
    subprocess.run(
        [*pip, "download", "--only-binary=:all:", *TARGET, *platforms, "--dest", str(out), str(own)],
        check=True,
        env=env,
    )
    (out / ".complete").touch()
    return out, key


@operation()
def install_tools(key: str):
    """(Re)install the exchange package into the venv when the wheelhouse changed."""
    installed = host.get_fact(FileContents, path=MANIFEST)
    if installed and installed[0].strip() == key:
        host.noop(f"exchange tools {key} are installed")
        return
    yield f"[ -x {VENV}/bin/python ] || python3 -m venv {VENV}"
    yield (
        f"{VENV}/bin/pip install --quiet --disable-pip-version-check --no-index --find-links {WHEELS} "
        f"--upgrade --force-reinstall imaging-exchange"
    )
    yield f"echo {shlex.quote(key)} > {MANIFEST}"


@deploy("Exchange tools")
def tools(policy: LoadedPolicy) -> None:
    apt.packages(name="Install Python venv support", packages=["python3-venv"], no_recommends=True)
    arch = host.get_fact(Arch)
    source, key = wheelhouse(arch)
    files.directory(name="Tools directory", path=PREFIX, user="root", group="root", mode="755")
    files.directory(
        name="Configuration directory", path=str(HOST_POLICY_PATH.parent), user="root", group="root", mode="755"
    )
    files.sync(
        name="Upload the wheelhouse",
        src=str(source),
        dest=WHEELS,
        delete=True,
        user="root",
        group="root",
        mode="644",
        dir_mode="755",
        exclude=".complete",
    )
    install_tools(name="Install the exchange tools", key=key)
    files.link(name="Put `exchange` on PATH", path=EXCHANGE, target=f"{VENV}/bin/exchange")
    config_file(
        name="Install the policy the tools obey",
        dest=str(HOST_POLICY_PATH),
        content=policy.path.read_text(encoding="utf-8"),
        mode="644",
        validate=f"{VENV}/bin/exchange policy check {{path}} >/dev/null",
    )
    config_file(
        name="The tools' lock folder: root only",
        dest=TOOLS_TMPFILES,
        content=render("tools/tmpfiles.conf.j2", run_dir=TOOL_RUN_DIR),
        apply=f"systemd-tmpfiles --create {TOOLS_TMPFILES}",
    )
    staff = policy.policy.accounts.staff_group
    server.group(name=f"Group {staff}", group=staff, system=True)
    sudo_rule(
        name="Staff may run `exchange` as root, nothing else",
        dest="/etc/sudoers.d/imaging-exchange-staff",
        group=staff,
        command=EXCHANGE,
    )
