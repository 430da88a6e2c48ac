"""Retention on a real host: `exchange purge` deletes exactly what is older than 7 x 24 h."""

import json
import time

import pytest

from exchange import paths
from tests.e2e.conftest import PARTNERS

pytestmark = pytest.mark.e2e
RETENTION = 7 * 86400


@pytest.fixture
def aged_files(exchange):
    """Files and links on both sides of the retention boundary, aged with touch -d; removed after."""
    name = PARTNERS[0]
    chroot = f"/srv/exchange/partners/{name}"
    now = int(exchange.host.ssh("date +%s").stdout)
    old, young = now - RETENTION - 60, now - RETENTION + 60
    exchange.host.ssh(
        f"""set -e
        cd {chroot}/upload
        printf 'old study' > old.dcm && touch -d @{old} old.dcm
        printf 'young study' > young.dcm && touch -d @{young} young.dcm
        mkdir -p nested/deeper && printf 'old' > nested/deeper/old2.dcm && touch -d @{old} nested/deeper/old2.dcm
        touch -d @{old} nested/deeper nested
        mkdir -p recent && printf 'old' > recent/old3.dcm && touch -d @{old} recent/old3.dcm
        ln -s /etc etc-link && touch -h -d @{young} etc-link
        ln -s /etc/passwd old-link && touch -h -d @{old} old-link
        chown -R {name}:exchange-staff . && chown -h {name}:exchange-staff etc-link old-link
        cd {chroot}/download
        printf 'old package' > old-package.zip && touch -d @{old} old-package.zip
        printf 'new package' > new-package.zip
        """
    )
    yield name, chroot
    # The host is the session's: what is left here would age past retention under the next module.
    exchange.host.ssh(
        f"cd {chroot}/upload && rm -rf old.dcm young.dcm nested recent etc-link old-link && "
        f"cd {chroot}/download && rm -f old-package.zip new-package.zip"
    )


def listing(exchange, chroot):
    return set(exchange.host.ssh(f"cd {chroot} && find . -mindepth 1 | sort").stdout.split())


def test_dry_run_lists_and_changes_nothing(exchange, aged_files):
    name, chroot = aged_files
    before = listing(exchange, chroot)
    result = exchange.host.ssh("exchange purge --dry-run")
    planned = [json.loads(line) for line in result.stdout.splitlines()]
    assert {p["path"] for p in planned if p["event"] == "file-purged"} >= {
        "/upload/old.dcm",
        "/download/old-package.zip",
    }
    assert all(p["dry_run"] for p in planned)
    assert listing(exchange, chroot) == before


def test_purge_deletes_exactly_past_retention_and_follows_no_link(exchange, aged_files):
    name, chroot = aged_files
    audit_before = exchange.host.ssh(f"wc -l < {paths.AUDIT_LOG}").stdout.strip()
    result = exchange.host.ssh("exchange purge")
    deleted = [json.loads(line) for line in result.stdout.splitlines()]
    deleted_paths = {d["path"] for d in deleted if d["account"] == name}
    assert deleted_paths == {
        "/upload/old.dcm",
        "/upload/nested/deeper/old2.dcm",
        "/upload/nested/deeper",
        "/upload/nested",
        "/upload/recent/old3.dcm",
        "/upload/old-link",
        "/download/old-package.zip",
    }
    left = listing(exchange, chroot)
    for kept in (
        "./upload/young.dcm",
        "./upload/recent",
        "./upload/etc-link",
        "./download/new-package.zip",
        "./dev/log",
    ):
        assert kept in left
    # The links' targets are untouched, and the skeleton stays.
    assert (
        exchange.host.ssh(
            "test -f /etc/passwd && test -d /etc && test -L " + chroot + "/upload/etc-link", check=False
        ).returncode
        == 0
    )
    assert (
        exchange.host.ssh(
            f"test -d {chroot}/upload && test -d {chroot}/download && test -d {chroot}/dev", check=False
        ).returncode
        == 0
    )

    time.sleep(1)  # rsyslog writes asynchronously
    audit = exchange.host.ssh(f"tail -n +{int(audit_before) + 1} {paths.AUDIT_LOG}").stdout
    records = [json.loads(line) for line in audit.splitlines()]
    files = [r for r in records if r["event"] == "file-purged" and r["account"] == name]
    assert {r["path"] for r in files} == {p for p in deleted_paths if not p.endswith(("nested", "deeper"))}
    old_dcm = next(r for r in files if r["path"] == "/upload/old.dcm")
    assert old_dcm["size"] == len("old study") and old_dcm["age_hours"] >= 168 and old_dcm["kind"] == "partner"
    syslog = exchange.host.ssh("grep -h file-purged /var/log/auth.log | tail -n 20").stdout  # the system log
    assert '"path": "/upload/old.dcm"' in syslog


def test_a_second_purge_at_the_same_time_waits_its_turn(exchange, aged_files):
    name, chroot = aged_files
    exchange.host.ssh(f"setsid flock {paths.TOOL_RUN_DIR}/{paths.PURGE_LOCK} sleep 8 >/dev/null 2>&1 < /dev/null &")
    time.sleep(1)
    result = exchange.host.ssh("exchange purge")
    assert "purge skipped: another purge is running" in result.stderr
    assert "./upload/old.dcm" in listing(exchange, chroot)
    exchange.host.ssh("sleep 8; exchange purge --quiet")
    assert "./upload/old.dcm" not in listing(exchange, chroot)


def test_purge_runs_from_cron_on_the_policy_schedule(exchange):
    cron = exchange.host.ssh(
        "stat -c '%U:%G:%a' /etc/cron.d/imaging-exchange-purge && cat /etc/cron.d/imaging-exchange-purge"
    ).stdout
    assert cron.startswith("root:root:644\n")
    assert (
        "\n17 * * * * root /usr/local/bin/exchange purge --quiet; /usr/local/bin/exchange password-aging --quiet; "
        "[ ! -f /etc/imaging-exchange/site.yaml ] || { /usr/local/bin/exchange notify-uploads --quiet; "
        "/usr/local/bin/exchange notify-expiring --quiet; }; /usr/local/bin/exchange trail ingest --quiet; "
        "[ ! -f /etc/imaging-exchange/site.yaml ] || /usr/local/bin/exchange notify-delivery --quiet\n"
    ) in cron
    assert exchange.host.ssh("systemctl is-active cron").stdout.strip() == "active"
