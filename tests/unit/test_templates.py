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


@pytest.mark.parametrize("name", sorted(str(p.relative_to(TEMPLATES)) for p in TEMPLATES.rglob("*.j2")))
def test_a_missing_variable_is_an_error_not_an_empty_string(name):
    with pytest.raises(UndefinedError):
        render(name)
