"""The control catalogue (tests/audit/controls.yaml) against everything it names: the suite's
controls, their tests, the policy model, the code that enforces them and README.md's audit table;
and every setting in policies.yaml is verified by at least one control."""

import ast
import importlib
import pkgutil

import pytest
from pydantic import BaseModel

import tests.audit
from exchange.policy import Policy
from roles import REPO
from tests.audit.catalogue import README, Catalogue, CatalogueError, catalogue, control, readme_block, readme_lines

ENFORCING_FOLDERS = ("roles/", "scripts/exchange/")


def leaves(model: type[BaseModel], prefix: str = "") -> set[str]:
    keys = set()
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys |= leaves(annotation, f"{prefix}{name}.")
        else:
            keys.add(f"{prefix}{name}")
    return keys


def policy_key_exists(key: str) -> bool:
    """A dotted key, `portal.connections_per_address`, or a section, `portal`, of the policy model."""
    model: object = Policy
    for part in key.split("."):
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return False
        model = model.model_fields[part].annotation
    return True


def suite_controls() -> dict[str, list[str]]:
    """Control id -> the audit tests that carry it (module::function)."""
    found: dict[str, list[str]] = {}
    for module in pkgutil.iter_modules(tests.audit.__path__):
        loaded = importlib.import_module(f"tests.audit.{module.name}")
        for name, item in vars(loaded).items():
            if getattr(item, "__module__", None) != loaded.__name__:
                continue  # imported from another module: counted there
            for mark in getattr(item, "pytestmark", []):
                if mark.name == "control":
                    found.setdefault(mark.args[0], []).append(f"tests/audit/{module.name}.py::{name}")
    return found


def defines(path: str, name: str) -> bool:
    """Whether the module at `path` defines `name` at its top level, or `Class.method`."""
    scope = ast.parse((REPO / path).read_text(encoding="utf-8")).body
    *classes, last = name.split(".")
    for part in classes:
        found = [node for node in scope if isinstance(node, ast.ClassDef) and node.name == part]
        if not found:
            return False
        scope = found[0].body
    for node in scope:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node.name == last:
            return True
        targets = (
            node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        )
        if any(isinstance(target, ast.Name) and target.id == last for target in targets):
            return True
    return False


def test_the_catalogue_loads():
    assert isinstance(catalogue(), Catalogue)
    assert len(catalogue().controls) >= 20


def test_the_suite_and_the_catalogue_name_the_same_controls():
    suite, listed = suite_controls(), {entry.id for entry in catalogue().controls}
    assert sorted(set(suite) - listed) == [], "controls of the suite missing from tests/audit/controls.yaml"
    assert sorted(listed - set(suite)) == [], "tests/audit/controls.yaml lists controls no audit test carries"
    assert {i: tests for i, tests in suite.items() if len(tests) > 1} == {}, "one control, several tests"


def test_each_control_is_checked_by_its_catalogued_test():
    wrong = {}
    for entry in catalogue().controls:
        path, function = entry.test.split("::")
        if not (REPO / path).is_file():
            wrong[entry.id] = f"{path}: no such module"
            continue
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        marks = [mark.args[0] for mark in getattr(getattr(module, function, None), "pytestmark", [])]
        if not hasattr(module, function):
            wrong[entry.id] = f"{path} has no {function}"
        elif entry.id not in marks:
            wrong[entry.id] = f"{entry.test} is not decorated @control({entry.id!r}) (it carries {marks})"
    assert wrong == {}


def test_policy_keys_are_in_the_policy_model():
    unknown = {
        entry.id: missing
        for entry in catalogue().controls
        if (missing := [key for key in entry.policy_keys if not policy_key_exists(key)])
    }
    assert unknown == {}, "policy keys that scripts/exchange/policy.py does not have"


def test_every_policy_setting_has_a_control():
    covered = {key for entry in catalogue().controls for key in entry.policy_keys}
    missing = sorted(leaves(Policy) - covered)
    assert missing == [], f"settings no audit control verifies: {missing}"


def enforcer_problem(enforcer: str) -> str | None:
    path, _, name = enforcer.partition("::")
    if not path.startswith(ENFORCING_FOLDERS) or not path.endswith(".py") or not name:
        return f"{enforcer}: not a role or tool, file::name ({', '.join(ENFORCING_FOLDERS)})"
    if not (REPO / path).is_file():
        return f"{enforcer}: no such file"
    if not defines(path, name):
        return f"{enforcer}: {path} defines no {name}"
    return None


def test_what_enforces_each_control_exists():
    wrong = {
        entry.id: problems
        for entry in catalogue().controls
        if (problems := [p for p in map(enforcer_problem, entry.enforced_by) if p])
    }
    assert wrong == {}


def test_the_decorator_refuses_a_control_not_in_the_catalogue():
    assert control("SSH-01").mark.args == ("SSH-01",)
    with pytest.raises(CatalogueError, match="NOPE-01 is not in .*controls.yaml"):
        control("NOPE-01")


def test_readmes_audit_table_is_the_catalogues():
    """README.md's table between the markers is rendered from the catalogue (python -m
    tests.audit.catalogue --readme); a row that differs names its controls."""
    text = README.read_text(encoding="utf-8")
    listed, problems = readme_lines(text), []
    rendered = catalogue().readme_rows()
    for row, line in rendered:
        label = line.split("|")[1].strip()
        found = listed.pop(label, None)
        if found is None:
            problems.append(f"{', '.join(row.controls)}: no row {label!r} in README.md")
        elif found != line:
            said = found.rstrip(" |").split(" | ", 1)[-1].split(row.joined_by)
            wanted = [catalogue()[i].verifies for i in row.controls]
            named = (
                [i for i, a, b in zip(row.controls, said, wanted, strict=True) if a != b]
                if len(said) == len(wanted)
                else []
            )
            named = named or list(row.controls)
            problems.append(f"{', '.join(named)}: README.md says\n  {found}\nthe catalogue\n  {line}")
    problems += [f"{label}: a row in README.md the catalogue does not have" for label in listed]
    if not problems and readme_block(text) != catalogue().readme_table():
        problems.append("the rows are in another order, or the header differs")
    assert not problems, (
        "README.md's audit table is not the catalogue's (python -m tests.audit.catalogue --readme):\n"
        + ("\n".join(problems))
    )
