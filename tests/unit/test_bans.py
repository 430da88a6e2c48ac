"""Source bans: the jail file says what the policy says, the filter check is a real failed web
login, and only test hosts of their own network ban (tests/testhost.py)."""

import configparser
import re

import pytest

from exchange import paths
from exchange.bans import PORTAL_JAIL, SSHD_JAIL
from exchange.policy import load_policy
from roles import REPO, bans
from roles.settings import HostSettings, host_settings
from roles.templating import render
from tests import hostnet, testhost

POLICY = load_policy(REPO / "policies.yaml").policy


def jails() -> configparser.ConfigParser:
    # fail2ban reads jail.d files with Python's configparser (its own subclass).
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(
        render(
            "bans/jail.conf.j2",
            bans=POLICY.source_bans,
            never_banned=bans.NEVER_BANNED,
            sshd_jail=SSHD_JAIL,
            portal_jail=PORTAL_JAIL,
            audit_log=paths.AUDIT_LOG,
        )
    )
    return parser


def test_both_jails_ban_by_the_policy_from_every_port_but_never_loopback():
    parser = jails()
    assert parser.sections() == [SSHD_JAIL, PORTAL_JAIL]
    for name in parser.sections():
        jail = parser[name]
        assert jail["enabled"] == "true" and jail["banaction"] == "nftables-allports"
        assert (jail["maxretry"], jail["findtime"], jail["bantime"]) == ("2", "900", "1200")
        assert jail["ignoreip"].split() == ["127.0.0.1/8", "::1"]
    assert parser[SSHD_JAIL]["backend"] == "systemd"  # Debian 12 need not write auth.log
    assert parser[PORTAL_JAIL]["logpath"] == paths.AUDIT_LOG and parser[PORTAL_JAIL]["filter"] == PORTAL_JAIL


def test_the_filter_is_checked_against_a_failed_login_as_the_portal_writes_it():
    command = bans.filter_test().format(path="/etc/fail2ban/filter.d/x.conf.imaging-exchange-new")
    line = re.search(r"fail2ban-regex '(\{.*\})' ", command)[1]
    assert line == bans.FAILED_WEB_LOGIN and '"event": "portal-login-failed"' in line and '"ip": "192.0.2.1"' in line
    # The filter's own pattern finds the address in that line (the e2e test runs fail2ban itself).
    pattern = re.search(r"^failregex = (.*)$", render("bans/portal-filter.conf.j2"), re.M)[1]
    found = re.search(pattern.replace("<ADDR>", r"(?P<ip>[0-9.]+)"), line)
    assert found and found["ip"] == "192.0.2.1"


def test_bans_are_on_unless_the_host_data_says_the_host_cannot():
    assert HostSettings().source_bans is True
    assert HostSettings(source_bans=False).source_bans is False


@pytest.mark.parametrize("own_network, hostname, bans_on", [(False, "127.0.0.1", False), (True, "198.18.0.26", True)])
def test_only_a_test_host_of_its_own_network_bans(tmp_path, own_network, hostname, bans_on):
    host = testhost.TestHost(
        name="t", port=testhost.FIRST_PORT + 3, pid=0, directory=str(tmp_path), own_network=own_network
    )
    if own_network:
        host.hostname = host.network.host
    host.auditor_key.with_suffix(".pub").write_text("ssh-ed25519 AAAA auditor@t\n")
    host.staff_key.with_suffix(".pub").write_text("ssh-ed25519 AAAA staff@t\n")
    data = host.host_data()
    assert (data["ssh_hostname"], data["source_bans"]) == (hostname, bans_on)
    # With its own network the web page still reaches sshd on loopback.
    assert "127.0.0.1" in data["sshd_listen_addresses"]
    assert host_settings("t", data).source_bans is bans_on


def test_each_own_network_has_its_own_addresses():
    one, two = hostnet.OwnNetwork(2201, 0), hostnet.OwnNetwork(2202, 1)
    assert (one.admin, one.host, one.sources[0]) == ("198.18.0.1", "198.18.0.2", "198.18.0.3")
    assert two.admin == "198.18.0.9" and not set(two.sources) & set(one.sources)
    assert len(one.outer) <= 15 and len(one.inner) <= 15  # the kernel's limit for interface names
