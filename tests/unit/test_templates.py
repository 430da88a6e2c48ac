"""Templates render to exactly what the deploy writes (roles.templating is the only renderer)."""

import pytest
from jinja2 import UndefinedError

from roles.settings import HostSettings
from roles.templating import TEMPLATES, render


def test_security_updates_on_by_default():
    text = render("base/20auto-upgrades.j2", settings=HostSettings())
    assert 'APT::Periodic::Unattended-Upgrade "1";' in text
    assert 'APT::Periodic::Update-Package-Lists "1";' in text


def test_security_updates_can_be_switched_off():
    text = render("base/20auto-upgrades.j2", settings=HostSettings(automatic_security_updates=False))
    assert 'APT::Periodic::Unattended-Upgrade "0";' in text


def test_reboot_only_when_a_time_is_set():
    never = render("base/52imaging-exchange-unattended-upgrades.j2", settings=HostSettings())
    assert 'Automatic-Reboot "false";' in never and "Reboot-Time" not in never
    timed = render(
        "base/52imaging-exchange-unattended-upgrades.j2", settings=HostSettings(automatic_reboot_time="04:30")
    )
    assert 'Automatic-Reboot "true";' in timed and 'Automatic-Reboot-Time "04:30";' in timed


# The server's own texts (exchange/templates/) are rendered there by exchange.messaging.messages and
# exchange.portal (tests/unit/test_messages.py, tests/unit/test_portal.py).
WITH_VARIABLES = sorted(str(p.relative_to(TEMPLATES)) for p in TEMPLATES.rglob("*.j2") if "{{" in p.read_text())


@pytest.mark.parametrize("name", WITH_VARIABLES)
def test_a_missing_variable_is_an_error_not_an_empty_string(name):
    with pytest.raises(UndefinedError):
        render(name)


def sshd_config(**settings) -> str:
    from exchange.policy import load_policy
    from roles import REPO
    from roles.sshd import sshd_config

    return sshd_config(load_policy(REPO / "policies.yaml").policy, HostSettings(**settings))


def test_sshd_config_root_login_follows_the_inventory():
    assert "PermitRootLogin no\n" in sshd_config()
    assert "AllowGroups sudo exchange-staff exchange-auditors exchange-partners exchange-links\n" in sshd_config()
    as_root = sshd_config(admin_connects_as_root=True)
    assert "PermitRootLogin prohibit-password\n" in as_root
    assert "AllowGroups root sudo exchange-staff" in as_root


def test_sshd_config_has_no_include_and_one_match_block():
    text = sshd_config(sshd_port=2222, sshd_listen_addresses=["10.0.0.5", "::1"])
    assert not [line for line in text.splitlines() if line.startswith("Include")]
    assert "Port 2222\nListenAddress 10.0.0.5\nListenAddress ::1\n" in text
    assert text.count("Match ") == 1
    match = text.split("Match Group exchange-partners,exchange-links\n", 1)[1]
    force = next(line for line in match.splitlines() if "ForceCommand" in line)
    # -d must stay last (options after it are ignored by this OpenSSH), -P first.
    assert force.strip().startswith("ForceCommand internal-sftp -P setstat,fsetstat,lsetstat,symlink,hardlink ")
    assert force.endswith(" -d /")
