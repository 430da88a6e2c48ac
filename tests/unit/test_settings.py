"""Host data from an inventory: declared keys only, validated, with a message naming host and key."""

import re
import typing

import pytest
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from roles import REPO
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


def declared_keys(model: type[BaseModel] = HostSettings, prefix: str = "") -> dict[str, list[FieldInfo]]:
    """Every host data key as the inventory spells it ("portal.listen_port", "staff[].name"), with
    its declarations: more than one where the key is in several models of a union (site.email)."""
    keys: dict[str, list[FieldInfo]] = {}
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        keys.setdefault(key, []).append(field)
        models, in_list = nested_models(field.annotation)
        for nested in models:
            for nested_key, fields in declared_keys(nested, f"{key}[]." if in_list else f"{key}.").items():
                keys.setdefault(nested_key, []).extend(fields)
    return keys


def nested_models(annotation: object) -> tuple[list[type[BaseModel]], bool]:
    """The models inside an annotation (through Optional, unions and lists), and whether in a list."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation], False
    models, in_list = [], typing.get_origin(annotation) is list
    for arg in typing.get_args(annotation):
        found, nested_list = nested_models(arg)
        models += [model for model in found if model not in models]
        in_list = in_list or (nested_list and bool(found))
    return models, in_list


# Defaults the deploy fills in from other host data (HostSettings._sftp_port_is_sshd_port; test_site.py).
FILLED_IN = {"site.sftp_port": "the host's `sshd_port`"}


def shown_default(field: FieldInfo) -> str:
    """A default as docs/admins.md writes it: as in the inventory, a Python file."""
    if field.is_required():
        return "required"
    default = field.get_default(call_default_factory=True)
    return "unset" if default is None else f"`{repr(default).replace(chr(39), chr(34))}`"


def documented_keys() -> dict[str, tuple[str, str]]:
    """key -> (default, meaning), from the tables headed "| key | default | meaning |"."""
    documented: dict[str, tuple[str, str]] = {}
    for table in (REPO / "docs" / "admins.md").read_text(encoding="utf-8").split("| key | default | meaning |\n")[1:]:
        rows = table.split("\n\n", 1)[0].splitlines()
        assert rows[0] == "| --- | --- | --- |"
        for row in rows[1:]:
            keys, default, meaning = (cell.strip() for cell in row.strip().strip("|").split(" | "))
            for key in re.findall(r"`([^`]+)`", keys):
                assert key not in documented, f"{key} documented twice"
                documented[key] = (default, meaning)
    return documented


def test_docs_admins_names_every_host_data_key_with_its_default():
    declared, documented = declared_keys(), documented_keys()
    assert sorted(set(declared) - set(documented)) == [], "host data keys missing from docs/admins.md"
    assert sorted(set(documented) - set(declared)) == [], "docs/admins.md names keys the deploy does not read"
    for key, fields in declared.items():
        default, meaning = documented[key]
        assert meaning, f"docs/admins.md: {key} has no meaning"
        for expected in [FILLED_IN[key]] if key in FILLED_IN else {shown_default(field) for field in fields}:
            assert expected in default, f"docs/admins.md: {key}: default {default!r}, declared {expected!r}"
