"""Host data from an inventory: declared keys only, validated, with a message naming host and key."""

import pytest

from roles.settings import HostSettings, HostSettingsError, host_settings


def test_defaults_and_pass_through_keys():
    settings = host_settings("web1", {"ssh_user": "admin", "_sudo": True, "sshd_port": 2222})
    assert settings.sshd_port == 2222
    assert settings.apt_cache_time == HostSettings().apt_cache_time
    assert settings.staff is None  # staff managed by hand: the deploy leaves them alone


@pytest.mark.parametrize(
    "data, words",
    [
        ({"sshd_prot": 22}, "inventory host web1: sshd_prot: unknown host data key"),
        ({"sshd_port": 70000}, "inventory host web1: sshd_port: Input should be less than or equal to 65535"),
        ({"automatic_reboot_time": "4:30am"}, "inventory host web1: automatic_reboot_time: String should match"),
        ({"auditors": [{"name": "jdoe"}]}, "inventory host web1: auditors.0.public_keys: required key is missing"),
        (
            {"auditors": [{"name": "J Doe", "public_keys": ["k"]}]},
            "inventory host web1: auditors.0.name: String should match",
        ),
        (
            {"staff": [{"name": "jdoe", "public_keys": ["k"]}, {"name": "jdoe", "public_keys": ["l"]}]},
            "inventory host web1: staff: listed more than once: jdoe",
        ),
    ],
)
def test_bad_host_data(data, words):
    with pytest.raises(HostSettingsError) as caught:
        host_settings("web1", data)
    assert words in str(caught.value)


def test_every_key_is_documented():
    for name, field in HostSettings.model_fields.items():
        assert field.description, f"host data key {name} has no description"
