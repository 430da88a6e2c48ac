"""The access trail (NEN 7513): root only and append-only, its chain intact, kept as long as the
policy says and no longer, and out of the purge's reach."""

import datetime
import re
from pathlib import PurePosixPath

from exchange import paths
from tests.audit.catalogue import control
from tests.audit.test_tools import KINDS, owner_and_mode

MONTH = re.compile(r"^(\d{4}-\d{2})\.jsonl(\.gz)?$")


def trail_entries(read) -> dict[str, str]:
    """The folder and each entry in it, as root sees them (only root can list it)."""
    found = {}
    for number, line in enumerate(read.privileged("trail-files").splitlines()):
        name, owner, group, mode, kind = line.rsplit("|", 4)
        path = paths.TRAIL_DIR if number == 0 else f"{paths.TRAIL_DIR}/{name}"
        found[path] = owner_and_mode(owner, group, int(mode, 8), KINDS.get(kind, kind))
    return found


def months(entries: dict[str, str]) -> list[str]:
    return sorted({m.group(1) for path in entries if (m := MONTH.match(PurePosixPath(path).name))})


@control("TRAIL-01")
def test_the_trail_is_root_only_and_its_months_append_only_or_immutable(read, control):
    entries = trail_entries(read)
    wanted = {path: owner_and_mode("root", "root", 0o600, "file") for path in entries}
    wanted[paths.TRAIL_DIR] = owner_and_mode("root", "root", 0o700, "directory")
    # lsattr: "flags path". The month written in is append-only, an ended month once compressed
    # immutable (until the hourly purge compresses it, an ended month stays append-only).
    flags = {}
    for line in read.privileged("trail-attributes").splitlines():
        attributes, _, path = line.partition(" ")
        if MONTH.match(PurePosixPath(path).name):
            flags[path] = {"append-only": "a" in attributes, "immutable": "i" in attributes}
    wanted |= {path: {"append-only": not path.endswith(".gz"), "immutable": path.endswith(".gz")} for path in flags}
    control.verify(wanted, entries | flags)


@control("TRAIL-02")
def test_the_trails_chain_is_intact(read, control):
    _, result = read.run("trail-verify")
    said = result.stdout.splitlines()
    # The report keeps the count (`intact: N records in ...`): a later run can never see fewer.
    control.record("trail", said[0] if said else result.stderr.strip())
    found = {"intact": result.rc == 0 and bool(said) and said[0].startswith("intact: "), "breaks": said[1:]}
    control.verify({"intact": True, "breaks": []}, found)


def first_kept(today: datetime.date, years: int) -> str:
    """A month is removed once its last day is more than `years` before today."""
    try:
        cutoff = today.replace(year=today.year - years)
    except ValueError:  # 29 February
        cutoff = today.replace(year=today.year - years, day=28)
    return f"{cutoff.year:04d}-{cutoff.month:02d}"


@control("TRAIL-03")
def test_the_trail_keeps_no_month_past_retention_and_is_out_of_the_purges_reach(read, policy, control):
    kept_from = first_kept(datetime.date.today(), policy.audit.retention_years)
    trail, root = PurePosixPath(paths.TRAIL_DIR), PurePosixPath(policy.accounts.root)
    found = {
        "months older than the retention": [month for month in months(trail_entries(read)) if month < kept_from],
        "outside accounts.root": trail != root and root not in trail.parents and trail not in root.parents,
    }
    control.verify({"months older than the retention": [], "outside accounts.root": True}, found)
