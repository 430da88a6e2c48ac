"""Lockout is not a weapon (issue 14, rule 11): a source that fails logins, against one partner
or many, over SFTP or on the web page, is banned before it can lock a partner out, and everyone
else still logs in.

On a host in its own network namespace (only there can it set firewall rules), deployed with
the web page; fail2ban, nftables, sshd and PAM are the real ones. The clients connect from
addresses of their own (`host.sources`).
"""

from __future__ import annotations

import json
import re
import shlex
import socket

import httpx
import paramiko
import pytest

from exchange import paths
from exchange.bans import JAILS, OFF_TEXT, PORTAL_JAIL
from exchange.policy import load_policy
from tests import testhost
from tests.e2e.clients import paramiko_sftp, portal_form
from tests.e2e.conftest import make_exchange
from tests.e2e.test_audit import run_audit
from tests.e2e.test_portal import client
from tests.pyinfra_run import REPO, changed_operations, pyinfra
from tests.sites import outbox_site

pytestmark = pytest.mark.e2e

POLICY = load_policy(REPO / "policies.yaml").policy
WRONG = "Wrong-Pass-Word-0000"


@pytest.fixture(scope="module")
def banning(shared_hosts, tmp_path_factory):
    """A deployed host with the web page, in its own network."""
    host = testhost.boot(
        "bans", log=lambda message: print(message, flush=True), directory=shared_hosts, own_network=True
    )
    try:
        yield make_exchange(
            host,
            tmp_path_factory.mktemp("bans"),
            site=outbox_site() | {"portal_url": host.portal_url},
            portal=host.portal_data(),
        )
    finally:
        testhost.shutdown(host)


def ssh_login(host, user: str, password: str, source: str) -> str:
    """One SSH login with a password (keyboard-interactive, as SFTP clients do): 'in', 'refused'
    (the server said no) or 'unreachable' (no connection: the ban)."""
    try:
        sftp = paramiko_sftp(host, user, password=password, source=source)
    except paramiko.AuthenticationException:
        return "refused"
    except (OSError, paramiko.SSHException):
        return "unreachable"
    sftp.listdir(".")
    sftp.get_channel().get_transport().close()
    return "in"


def web_login(exchange, user: str, password: str, source: str) -> str:
    """One partner login on the web page, as a browser posts it: 'in', 'refused' or 'unreachable'."""
    try:
        with client(exchange, source) as http:
            response = portal_form(http, "/login", username=user, password=password)
            if response.status_code == 200 and response.url.path == "/files":
                return "in"
            assert response.status_code == 401, response.text[-2000:]
            return "refused"
    except httpx.TransportError:
        return "unreachable"


def tally(host, user: str) -> int:
    """pam_faillock's failures of `user` that still count (V: within fail_interval)."""
    out = host.ssh(f"faillock --dir {paths.FAILLOCK_DIR} --user {user}").stdout
    return len(re.findall(r"\sV\s*$", out, re.M))


def connects(host, port: int, source: str) -> bool:
    try:
        socket.create_connection((host.hostname, port), 5, (source, 0)).close()
        return True
    except OSError:
        return False


def test_a_source_failing_logins_is_banned_before_it_locks_a_partner(banning):
    host = banning.host
    attacker, bystander = host.sources[:2]
    alice, bob = banning.logins["alice-clinic"], banning.logins["bob-hospital"]
    deny = POLICY.passwords.lockout.deny
    # Without bans this locks alice (deny failures against her), with bob on the way, over
    # both ways in, as fast as the attacker can: no pause for the ban.
    attempts = [
        (ssh_login, alice),
        (web_login, bob),
        (web_login, alice),
        (ssh_login, alice),
        (ssh_login, bob),
        (web_login, alice),
        (ssh_login, alice),
    ]
    assert sum(1 for _, who in attempts if who is alice) == deny
    outcomes = []
    for login, who in attempts:
        target = host if login is ssh_login else banning
        outcomes.append(login(target, who.name, WRONG, attacker))
    print("attacker:", outcomes, "tallies:", tally(host, alice.name), tally(host, bob.name))
    assert "in" not in outcomes
    # The ban lands once one way in has seen max_failures (with one attempt more on its way) and holds.
    banned_from = outcomes.index("unreachable")
    assert banned_from <= len(JAILS) * (POLICY.source_bans.max_failures - 1) + 2, outcomes
    assert set(outcomes[banned_from:]) == {"unreachable"}, outcomes
    assert not connects(host, host.port, attacker) and not connects(host, host.portal_port, attacker)

    # No partner was locked: their failures stayed below deny, and they still log in from elsewhere.
    assert tally(host, alice.name) < deny and tally(host, bob.name) < deny
    assert ssh_login(host, alice.name, alice.password, bystander) == "in"
    # The web page logs users in through sshd on loopback: it was not banned.
    assert web_login(banning, bob.name, bob.password, bystander) == "in"


def test_a_second_deploy_changes_nothing(banning):
    assert {name: hosts for name, hosts in changed_operations(str(banning.inventory)).items() if hosts} == {}


# The audit log's lines: every key in sorted order, or not (other writers may append a field).
LINES = {
    "198.18.0.201": '{"account": "alice-clinic", "event": "portal-login-failed", "ip": "198.18.0.201", '
    '"kind": "partner", "reason": "refused", "time": "2026-01-05T10:00:00+00:00"}',
    "2001:db8::7": '{"account": null, "event": "portal-login-failed", "ip": "2001:db8::7", "kind": "link", '
    '"reason": "unknown-token", "time": "2026-01-05T10:00:01+00:00", "writer_uid": 998}',
    "198.18.0.202": '{"time": "2026-01-05T10:00:02+00:00", "ip": "198.18.0.202", "event": "portal-login-failed"}',
    # not failures: a login, a file name that spells one out, a look-alike event
    "login": '{"account": "alice-clinic", "event": "portal-login", "ip": "198.18.0.203", "kind": "partner", '
    '"time": "2026-01-05T10:00:03+00:00"}',
    "upload": json.dumps(
        {
            "account": "alice-clinic",
            "event": "portal-upload",
            "file": 'x", "event": "portal-login-failed", "ip": "198.18.0.204',
            "ip": "198.18.0.203",
            "time": "2026-01-05T10:00:04+00:00",
        },
        sort_keys=True,
    ),
    "look-alike": '{"event": "portal-login-failed-ish", "ip": "198.18.0.205", "time": "2026-01-05T10:00:05+00:00"}',
}


def test_the_web_pages_filter_finds_failed_logins_and_nothing_else(banning):
    lines = "\n".join(LINES.values())
    out = banning.host.ssh(
        f"printf '%s\\n' {shlex.quote(lines)} > /tmp/lines && "
        f"fail2ban-regex -v /tmp/lines /etc/fail2ban/filter.d/{PORTAL_JAIL}.conf"
    ).stdout
    found = re.findall(r"^\|\s+(\S+)\s+\w{3} \w{3} \d\d", out, re.M)
    assert sorted(found) == sorted(address for address in LINES if address[0].isdigit()), out


def test_the_audit_sees_the_bans_in_force_and_any_weakening(banning, tmp_path):
    host = banning.host
    result, controls = run_audit(host, tmp_path / "in-force", "test_bans.py")
    assert result.returncode == 0 and not controls["BAN-01"]["failed"], result.stdout[-3000:]
    assert "expected" in controls["BAN-01"] and "SKIPPED" not in result.stdout  # checked, not skipped
    # A weaker jail at run time, and a marker claiming bans are off where they could be on.
    host.ssh(f"fail2ban-client set sshd maxretry 9 && printf %s {shlex.quote(OFF_TEXT)} > {paths.SOURCE_BANS_OFF}")
    try:
        result, controls = run_audit(host, tmp_path / "weakened", "test_bans.py")
    finally:
        host.ssh(f"rm -f {paths.SOURCE_BANS_OFF} && fail2ban-client reload")
    assert result.returncode == 1 and controls["BAN-01"]["failed"]
    actual = json.loads(controls["BAN-01"]["actual"])
    assert actual["sshd"]["maxretry"] == 9 and actual[paths.SOURCE_BANS_OFF].startswith("root:root 0644")


def test_a_host_that_cannot_ban_says_so_and_the_audit_cannot_be_fooled(exchange, tmp_path):
    """A host sharing this machine's network (no CAP_NET_ADMIN): host data source_bans: false."""
    host = exchange.host
    dry = pyinfra("--dry", str(exchange.inventory), "deploy.py")
    assert dry.returncode == 0 and "Source bans are OFF on this host" in dry.stdout + dry.stderr
    assert host.ssh("dpkg-query -W fail2ban nftables", check=False).returncode != 0  # nothing installed
    assert (
        host.ssh(f"stat -c '%U:%G %a' {paths.SOURCE_BANS_OFF} && cat {paths.SOURCE_BANS_OFF}").stdout
        == f"root:root 644\n{OFF_TEXT}"
    )
    result, controls = run_audit(host, tmp_path / "off", "test_bans.py")
    assert result.returncode == 0 and "not applicable: source bans are off by host data" in result.stdout
    assert json.loads(controls["BAN-01"]["actual"])["CAP_NET_ADMIN"] is False
    # Without the deploy's marker (a deploy that skipped the role, say) the control fails.
    host.ssh(f"rm {paths.SOURCE_BANS_OFF}")
    try:
        result, controls = run_audit(host, tmp_path / "no-marker", "test_bans.py")
    finally:
        host.ssh(f"printf %s {shlex.quote(OFF_TEXT)} > {paths.SOURCE_BANS_OFF} && chmod 644 {paths.SOURCE_BANS_OFF}")
    assert result.returncode == 1 and controls["BAN-01"]["failed"]
