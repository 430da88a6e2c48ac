"""Lockout is not a weapon (issue 14, rule 11): a source that fails logins, against one partner
or many, over SFTP or on the web page, is banned before it can lock a partner out, and everyone
else still logs in.

On a host in its own network namespace (only there can it set firewall rules), deployed with
the web page; fail2ban, nftables, sshd and PAM are the real ones. The clients connect from
addresses of their own (`host.sources`).
"""

from __future__ import annotations

import re
import socket

import httpx
import paramiko
import pytest

from exchange.credentials import FAILLOCK_DIR
from exchange.policy import load_policy
from tests import testhost
from tests.e2e.clients import paramiko_sftp, portal_form
from tests.e2e.conftest import make_exchange
from tests.e2e.test_portal import client
from tests.pyinfra_run import REPO
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
    out = host.ssh(f"faillock --dir {FAILLOCK_DIR} --user {user}").stdout
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
    assert "in" not in outcomes
    # The ban lands within max_failures (and the one attempt already on its way) and holds.
    banned_from = outcomes.index("unreachable")
    assert banned_from <= POLICY.source_bans.max_failures + 1, outcomes
    assert set(outcomes[banned_from:]) == {"unreachable"}, outcomes
    assert not connects(host, host.port, attacker) and not connects(host, host.portal_port, attacker)

    # No partner was locked: their failures stayed below deny, and they still log in from elsewhere.
    assert tally(host, alice.name) < deny and tally(host, bob.name) < deny
    assert ssh_login(host, alice.name, alice.password, bystander) == "in"
    # The web page logs users in through sshd on loopback: it was not banned.
    assert web_login(banning, bob.name, bob.password, bystander) == "in"
