"""The control catalogue (controls.yaml): per control, what it verifies, where its requirement
comes from, the policy keys it reads, what enforces it and the audit test that checks it.

The suite's tests name only their id (`@control("SSH-01")`); the reports take the rest from here.
README.md's audit table is rendered from it:

    python -m tests.audit.catalogue --readme   # rewrite the table in README.md
    python -m tests.audit.catalogue --check    # exit 1 if README.md's table is not the catalogue's
"""

from __future__ import annotations

import argparse
import re
import sys
from functools import cache
from itertools import groupby
from pathlib import Path
from typing import TypeVar

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from exchange.validation import describe, read_yaml_file

CATALOGUE = Path(__file__).with_name("controls.yaml")
README = Path(__file__).resolve().parents[2] / "README.md"
BEGIN, END = "<!-- controls:begin -->", "<!-- controls:end -->"
TABLE_HEADER = "| control | what it verifies |\n| --- | --- |"
M = TypeVar("M", bound=BaseModel)


class CatalogueError(Exception):
    """controls.yaml cannot be used, or names no such control; the message says where."""


class Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[A-Z]+-\d{2}$")
    verifies: str = Field(min_length=1)
    reference: str = Field(min_length=1)
    policy_keys: tuple[str, ...]
    enforced_by: tuple[str, ...] = Field(min_length=1)
    test: str = Field(pattern=r"^tests/audit/test_\w+\.py::test_\w+$")

    @property
    def source(self) -> str:
        """The reports' `source`: the policy keys, or "(baseline)" for the product's own expectation."""
        return ", ".join(self.policy_keys) or "(baseline)"


class Row(BaseModel):
    """One row of the README's audit table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    controls: tuple[str, ...] = Field(min_length=1)
    joined_by: str = "; "


class Catalogue(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    controls: tuple[Entry, ...]
    readme: tuple[Row, ...]

    @model_validator(mode="after")
    def _each_once(self) -> Catalogue:
        ids = [entry.id for entry in self.controls]
        if twice := sorted({i for i in ids if ids.count(i) > 1}):
            raise ValueError(f"controls listed more than once: {', '.join(twice)}")
        in_rows = [i for row in self.readme for i in row.controls]
        if twice := sorted({i for i in in_rows if in_rows.count(i) > 1}):
            raise ValueError(f"readme: controls in more than one row: {', '.join(twice)}")
        if unknown := sorted(set(in_rows) - set(ids)):
            raise ValueError(f"readme: rows name controls the catalogue does not have: {', '.join(unknown)}")
        if missing := sorted(set(ids) - set(in_rows)):
            raise ValueError(f"readme: controls in no row: {', '.join(missing)}")
        return self

    def __getitem__(self, control_id: str) -> Entry:
        for entry in self.controls:
            if entry.id == control_id:
                return entry
        raise CatalogueError(f"{control_id} is not in {CATALOGUE}: add it there (id, verifies, reference, ...)")

    def readme_rows(self) -> list[tuple[Row, str]]:
        """Each row of the README's table with its line."""
        return [(row, f"| {row_label(row.controls)} | {row_text(self, row)} |") for row in self.readme]

    def readme_table(self) -> str:
        return "\n".join([TABLE_HEADER, *(line for _, line in self.readme_rows())])


def row_label(ids: tuple[str, ...]) -> str:
    """ "SSH-01..05" for three or more consecutive ids of one prefix, else each: "SUDO-01, SUDO-02"."""
    parts = []
    for prefix, group in groupby(ids, key=lambda i: i.rsplit("-", 1)[0]):
        numbers = [int(i.rsplit("-", 1)[1]) for i in group]
        runs: list[list[int]] = []
        for number in numbers:
            if runs and number == runs[-1][-1] + 1:
                runs[-1].append(number)
            else:
                runs.append([number])
        for run in runs:
            if len(run) >= 3:
                parts.append(f"{prefix}-{run[0]:02d}..{run[-1]:02d}")
            else:
                parts += [f"{prefix}-{n:02d}" for n in run]
    return ", ".join(parts)


def row_text(catalogue: Catalogue, row: Row) -> str:
    return row.joined_by.join(catalogue[i].verifies for i in row.controls)


def load_model(model: type[M], path: Path, what: str, error: type[Exception]) -> M:
    """The audit's own data file `path` as `model`, or `error` naming the file and the key."""
    try:
        return model.model_validate(read_yaml_file(path, what, error))
    except ValidationError as problem:
        raise error(describe(str(path), problem)) from None


@cache
def catalogue() -> Catalogue:
    return load_model(Catalogue, CATALOGUE, "the control catalogue", CatalogueError)


def control(control_id: str) -> pytest.MarkDecorator:
    """The decorator of an audit test: `@control("SSH-01")`. An id not in the catalogue stops
    the suite as it is collected."""
    catalogue()[control_id]
    return pytest.mark.control(control_id)


def readme_block(text: str) -> str:
    """What stands between the markers in README.md's text."""
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise CatalogueError(f"{README} needs one line {BEGIN} and, after it, one line {END}")
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n")


def with_table(text: str, table: str) -> str:
    readme_block(text)  # the markers are there
    before, rest = text.split(BEGIN, 1)
    return f"{before}{BEGIN}\n{table}\n{END}{rest.split(END, 1)[1]}"


def readme_lines(text: str) -> dict[str, str]:
    """Row label -> line, of the table in README.md's block."""
    return {
        match[1].strip(): line
        for line in readme_block(text).splitlines()[2:]
        if (match := re.match(r"\|([^|]*)\|", line))
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.audit.catalogue", description=__doc__.split("\n\n")[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--readme", action="store_true", help=f"rewrite the audit table in {README.name}")
    action.add_argument("--check", action="store_true", help=f"exit 1 if {README.name}'s table is not the catalogue's")
    arguments = parser.parse_args(argv)
    try:
        text = README.read_text(encoding="utf-8")
        table = catalogue().readme_table()
        if arguments.check:
            if readme_block(text) != table:
                print(f"{README}: the audit table is not the catalogue's; run python -m tests.audit.catalogue --readme")
                return 1
            return 0
        updated = with_table(text, table)
        if updated != text:
            README.write_text(updated, encoding="utf-8")
            print(f"{README}: audit table rewritten")
        return 0
    except CatalogueError as error:
        print(error, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
