"""Every setting in policies.yaml is verified by at least one audit control, and every control
is in the README's audit table."""

import importlib
import pkgutil
import re

from pydantic import BaseModel

import tests.audit
from exchange.policy import Policy
from roles import REPO


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


CONTROLS_BEGIN, CONTROLS_END = "<!-- controls:begin -->", "<!-- controls:end -->"


def readme_controls() -> set[str]:
    """The ids in the first column of the README's audit table, which stands alone between its two
    marker lines: "ACC-01..06", "SUDO-01, SUDO-02"."""
    readme = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert readme.count(CONTROLS_BEGIN) == 1 and readme.count(CONTROLS_END) == 1, "the table's marker lines"
    table = "\n".join(readme[readme.index(CONTROLS_BEGIN) + 1 : readme.index(CONTROLS_END)]).strip().splitlines()
    assert table[:2] == ["| control | what it verifies |", "| --- | --- |"]
    ids = set()
    for row in table[2:]:
        for item in row.split("|")[1].split(","):
            prefix, first, last = re.fullmatch(r"\s*([A-Z]+)-(\d+)(?:\.\.(\d+))?\s*", item).groups()
            ids |= {f"{prefix}-{n:02d}" for n in range(int(first), int(last or first) + 1)}
    return ids


def test_the_readme_lists_every_control():
    listed, controls = readme_controls(), set(control_sources())
    assert sorted(controls - listed) == [], "controls missing from the README's audit table"
    assert sorted(listed - controls) == [], "the README's audit table lists controls the suite does not have"
