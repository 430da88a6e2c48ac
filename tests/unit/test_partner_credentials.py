"""`exchange partner credentials` when the system refuses a step: the real functions, with the
system's tools (chpasswd, chage, faillock) replaced at the process boundary by scripts that
record their calls and succeed or fail as the test says."""

import contextlib
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from exchange import cli, credentials, partner_access, paths, templates
from exchange.layout import Layout
from exchange.messaging.messages import Messages
from exchange.policy import load_policy
from exchange.site import parse_site
from roles import REPO
from tests.sites import outbox_site

POLICY = load_policy(REPO / "policies.yaml").policy
NAME = "cardiology"
LOCK_BUSY = "chpasswd: (user cardiology) pam_chauthtok() failed, error:\nAuthentication token lock busy\n"


class Host:
    def __init__(self, tmp_path: Path) -> None:
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        self.calls = tmp_path / "calls"
        self.outbox = tmp_path / "outbox"
        self.audit: list[tuple[str, dict, list[str]]] = []
        for tool in ("chpasswd", "chage", "faillock"):
            self.tool(tool)

    def tool(self, name: str, stderr: str = "", status: int = 0) -> None:
        script = self.bin / name
        script.write_text(
            f'#!/bin/sh\necho "{name} $*" >> {self.calls}\ncat > /dev/null\n'
            f"printf '%s' '{stderr}' >&2\nexit {status}\n"
        )
        script.chmod(0o755)

    def ran(self) -> list[str]:
        return [line.split()[0] for line in self.calls.read_text().splitlines()] if self.calls.exists() else []

    def sent(self) -> list[str]:
        return sorted(p.suffix for p in self.outbox.iterdir()) if self.outbox.exists() else []


@pytest.fixture
def host(tmp_path, monkeypatch) -> Host:
    host = Host(tmp_path)
    monkeypatch.setenv("PATH", f"{host.bin}:{os.environ['PATH']}")
    before = credentials.ShadowEntry(hash="$y$j9T$old", lastchg="19990", aging=("1", "90", "14", "30"))
    monkeypatch.setattr(credentials, "shadow_entry", lambda account: before)  # /etc/shadow has no partner here
    monkeypatch.setattr(partner_access, "account_lock", contextlib.nullcontext)
    monkeypatch.setattr(paths, "STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setattr(Layout, "kind_of", lambda self, name: "partner")
    monkeypatch.setattr(
        partner_access.auditlog, "record", lambda event, **fields: host.audit.append((event, fields, host.ran()))
    )
    site = parse_site(outbox_site() | {"outbox_dir": str(host.outbox)}, "test")
    tools = cli.base.Tools(POLICY, site, Messages(site, templates.MESSAGES))
    monkeypatch.setattr(cli.base, "tools", lambda command: tools)
    partners = tmp_path / "partners.yaml"
    partners.write_text(
        json.dumps(
            {
                "partners": [
                    {"name": NAME, "organisation": "Cardiology", "email": "c@hospital.example", "phone": "+31612345678"}
                ]
            }
        )
    )
    monkeypatch.setattr(paths, "PARTNERS", str(partners))
    return host


def credentials_command(*extra: str):
    return CliRunner().invoke(cli.app, ["partner", "credentials", NAME, *extra])


def test_a_password_file_lock_is_a_clean_error_that_names_it(host):
    host.tool("chpasswd", LOCK_BUSY, 1)
    result = credentials_command()
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)  # no traceback
    assert "the password file is locked" in result.stderr and "Authentication token lock busy" in result.stderr
    assert "refused" not in result.stderr  # PAM did not judge the password
    assert "nothing was sent; the partner's previous password still works" in result.stderr
    assert host.ran() == ["chpasswd"] and host.sent() == [] and host.audit == []


def test_a_password_the_policy_refuses_is_named_as_such(host):
    host.tool("chpasswd", "BAD PASSWORD: The password fails the dictionary check\n", 1)
    result = credentials_command()
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert "the password policy (PAM) refused the new password: BAD PASSWORD" in result.stderr


def test_a_tally_that_cannot_be_cleared_after_sending_is_reported_after_the_audit_record(host):
    host.tool("faillock", "faillock: Error opening the tally file\n", 1)
    result = credentials_command("--show-password")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert f"{NAME}: password sent; lockout not cleared: faillock: Error opening the tally file" in result.stderr
    assert f"new password for {NAME}" in result.stdout and "  password " in result.stdout
    assert host.sent() == [".eml", ".sms"]  # the notice and the password went out
    ((event, fields, ran_before),) = host.audit
    assert event == "partner-credentials-issued" and fields["account"] == NAME
    assert "faillock" not in ran_before  # on record before the tally was touched
    assert host.ran()[-1] == "faillock"


def test_all_steps_succeed(host):
    result = credentials_command()
    assert result.exit_code == 0, result.stderr
    assert host.ran() == ["chpasswd", "chage", "faillock"] and host.sent() == [".eml", ".sms"]
    assert [event for event, _, _ in host.audit] == ["partner-credentials-issued"]


@pytest.fixture
def link(host, tmp_path, monkeypatch):
    """A link account's record in a store of its own, for `exchange link resend`."""
    import datetime

    from exchange import links

    store = links.LinkStore(tmp_path / "state")
    now = datetime.datetime.now(datetime.UTC)
    store.save(
        links.LinkRecord(
            account="link-k7m2p9qa", email="p@example.org", phone="+31612345678", lang="nl", note="",
            created=now, expires=now + datetime.timedelta(days=7), issued_by="staff", token_sha256="0" * 64,
        )
    )  # fmt: skip
    monkeypatch.setattr(links, "LinkStore", lambda: store)
    monkeypatch.setattr(links, "account_lock", contextlib.nullcontext)
    monkeypatch.setattr(Layout, "kind_of", lambda self, name: "link")
    monkeypatch.setattr(
        links.auditlog, "record", lambda event, **fields: host.audit.append((event, fields, host.ran()))
    )
    return "link-k7m2p9qa"


def test_a_link_password_not_set_is_a_clean_error_and_sends_nothing(host, link):
    host.tool("chpasswd", LOCK_BUSY, 1)
    result = CliRunner().invoke(cli.app, ["link", "resend", link])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)  # no traceback
    assert "the password file is locked" in result.stderr
    assert host.sent() == [] and host.audit == []


def test_a_link_tally_not_cleared_after_the_sms_is_reported_after_the_audit_record(host, link):
    host.tool("faillock", "faillock: Error opening the tally file\n", 1)
    result = CliRunner().invoke(cli.app, ["link", "resend", link])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert f"{link}: the new password was sent; lockout not cleared: faillock: Error opening" in result.stderr
    assert host.sent() == [".sms"]
    ((event, _, ran_before),) = host.audit
    assert event == "link-password-resent" and "faillock" not in ran_before


def test_a_message_that_cannot_go_puts_back_the_old_password_with_its_aging(host):
    host.outbox.write_text("")  # the outbox is a file: nothing can be written there
    result = credentials_command()
    assert result.exit_code == 1 and "the partner's previous password was put back" in result.stderr
    chage = [line for line in host.calls.read_text().splitlines() if line.startswith("chage ")]
    # Set with the policy's aging (expired from the start), then the partner's own put back.
    assert chage[0].startswith("chage --mindays 1 --maxdays 90 --warndays 14 --inactive 30 --lastday ")
    assert chage[-1] == f"chage --mindays 1 --maxdays 90 --warndays 14 --inactive 30 --lastday 19990 {NAME}"
    assert host.audit == []
