"""Every setting in policies.yaml is verified by at least one audit control."""

import importlib
import pkgutil

from pydantic import BaseModel

import tests.audit
from exchange.policy import Policy


def leaves(model: type[BaseModel], prefix: str = "") -> set[str]:
    keys = set()
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys |= leaves(annotation, f"{prefix}{name}.")
        else:
            keys.add(f"{prefix}{name}")
    return keys


def control_sources() -> dict[str, set[str]]:
    sources: dict[str, set[str]] = {}
    for module in pkgutil.iter_modules(tests.audit.__path__):
        loaded = importlib.import_module(f"tests.audit.{module.name}")
        for name in dir(loaded):
            for mark in getattr(getattr(loaded, name), "pytestmark", []):
                if mark.name == "control":
                    sources[mark.args[0]] = {s.strip() for s in mark.kwargs["source"].split(",")}
    return sources


def test_every_policy_setting_has_a_control():
    covered = set().union(*control_sources().values())
    missing = sorted(leaves(Policy) - covered)
    assert missing == [], f"settings no audit control verifies: {missing}"


def test_control_ids_are_unique_and_carry_a_reference():
    sources = control_sources()
    assert len(sources) >= 20
    for module in pkgutil.iter_modules(tests.audit.__path__):
        loaded = importlib.import_module(f"tests.audit.{module.name}")
        for name in dir(loaded):
            for mark in getattr(getattr(loaded, name), "pytestmark", []):
                if mark.name == "control":
                    assert mark.kwargs.get("reference"), mark.args[0]
