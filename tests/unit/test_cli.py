"""The `exchange` console script, run as installed."""

import json
import subprocess
from pathlib import Path

from roles import REPO

EXCHANGE = REPO / ".venv/bin/exchange"


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(EXCHANGE), *args], text=True, capture_output=True, env=env)


def test_policy_check_accepts_the_repository_policy():
    result = run("policy", "check", str(REPO / "policies.yaml"))
    assert result.returncode == 0
    assert "valid (sha256 " in result.stdout


def test_policy_check_rejects_a_bad_policy(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((REPO / "policies.yaml").read_text().replace("days: 7 ", "days: 0 ", 1))
    result = run("policy", "check", str(bad))
    assert result.returncode == 1
    assert f"{bad}: retention.days: " in result.stderr
    assert result.stdout == ""


def test_policy_defaults_to_the_environment_then_the_installed_file(tmp_path: Path):
    env = {"EXCHANGE_POLICY": str(REPO / "policies.yaml"), "PATH": "/usr/bin:/bin"}
    shown = json.loads(run("policy", "show", env=env).stdout)
    assert shown["retention"]["days"] == 7
    missing = run("policy", "check", env={"PATH": "/usr/bin:/bin"})
    assert missing.returncode == 1
    assert "/etc/imaging-exchange/policies.yaml: cannot read policy file" in missing.stderr


def test_version():
    assert run("--version").stdout.startswith("exchange ")


def test_every_command_shares_one_handler_for_refusals_and_failures(monkeypatch):
    """An ExchangeError anywhere in any command: its message, escaped, and its exit status."""
    from typer.testing import CliRunner

    from exchange import cli
    from exchange.dicom.package import PackageError
    from exchange.links import LinkError

    def refused(*args, **kwargs):
        raise LinkError("link-zzzzzzzz\x1b[2K: no such link account")

    def failed(*args, **kwargs):
        raise PackageError("packing failed, nothing was left")

    monkeypatch.setattr(cli.base, "tools", refused)
    answer = CliRunner().invoke(cli.app, ["link", "resend", "link-zzzzzzzz"])
    assert answer.exit_code == 2 and isinstance(answer.exception, SystemExit)  # no traceback
    assert answer.stderr == "link-zzzzzzzz\\x1b[2K: no such link account\n"
    monkeypatch.setattr(cli.base, "tools", failed)
    answer = CliRunner().invoke(cli.app, ["link", "list"])
    assert answer.exit_code == 1 and answer.stderr == "packing failed, nothing was left\n"
