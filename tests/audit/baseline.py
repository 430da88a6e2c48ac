"""The audit's own baseline (baseline.yaml): owners, modes, names and texts that are the
product's, not the site's, stated by the audit rather than imported from the deploy's code.
`Expected` fills in the audited policy's names."""

from __future__ import annotations

import string
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from exchange.policy import Policy
from tests.audit.catalogue import load_model

BASELINE_FILE = Path(__file__).with_name("baseline.yaml")
ACCOUNT = "account"  # the one placeholder that is not a policy key: the account's name


class BaselineError(Exception):
    """baseline.yaml cannot be used; the message says where."""


class Baseline(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    shell: str
    chroot: dict[Literal["partner", "link"], str]
    chroot_folders: dict[str, str]
    tree: dict[str, str]
    jails: dict[Literal["sshd", "portal"], str]
    never_banned: tuple[str, ...] = Field(min_length=1)
    bans_off_text: str
    sudo: dict[Literal["staff", "auditor"], tuple[str, ...]]

    def templates(self) -> list[str]:
        """Every text with placeholders: the chroots, and the folders' paths and owners."""
        folders = {**self.chroot_folders, **self.tree}
        return [*self.chroot.values(), *folders, *folders.values()]


def placeholders(template: str) -> list[str]:
    """The names in a template's braces: "accounts.root", "account"."""
    return [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]


@cache
def baseline() -> Baseline:
    return load_model(Baseline, BASELINE_FILE, "the audit's baseline", BaselineError)


@dataclass(frozen=True)
class Expected:
    """The baseline for one policy: what ACC-02..06 and BAN-01 expect on its server."""

    policy: Policy

    @property
    def baseline(self) -> Baseline:
        return baseline()

    def fill(self, template: str, account: str = "") -> str:
        sections = {name: getattr(self.policy, name) for name in type(self.policy).model_fields}
        return template.format(**sections, **{ACCOUNT: account})

    @property
    def shell(self) -> str:
        return self.baseline.shell

    def chroot(self, kind: str, name: str) -> str:
        return self.fill(self.baseline.chroot[kind], name)

    def _owned(self, folders: dict[str, str], account: str = "") -> dict[str, tuple[str, str, str]]:
        """Path -> (owner, group, mode)."""
        owned = {}
        for path, spec in folders.items():
            owner, group, mode = self.fill(spec, account).split()
            owned[self.fill(path, account)] = (owner, group, mode)
        return owned

    def chroot_folders(self, name: str) -> dict[str, tuple[str, str, str]]:
        """Relative path in the account's chroot -> (owner, group, mode)."""
        return self._owned(self.baseline.chroot_folders, name)

    def tree(self) -> dict[str, tuple[str, str, str]]:
        return self._owned(self.baseline.tree)

    def sudo_rights(self, kind: str) -> list[str]:
        """What `sudo -l` lists for one kind of account: one line, its commands comma-separated."""
        commands = self.baseline.sudo.get(kind, ())
        return [f"(root) NOPASSWD: {', '.join(commands)}"] if commands else []
