"""A partner's life on a real host: added, marked absent (locked at once), dropped, restored,
removed after retention; a link account removed when its validity ended; and a deploy
killed half-way converges on the next run."""

import json
import os
import signal
import subprocess
import time

import paramiko
import pytest

from exchange import paths
from tests.e2e.clients import openssh_sftp, paramiko_sftp
from tests.e2e.conftest import PARTNERS, audit_events, partner_entry, write_inventory
from tests.pyinfra_run import PYINFRA, REPO, changed_operations, pyinfra

pytestmark = pytest.mark.e2e


def can_login(exchange, name) -> dict[str, bool]:
    login = exchange.logins[name]
    by_key = openssh_sftp(exchange.host, name, login.key, "ls /\n").returncode == 0
    try:
        paramiko_sftp(exchange.host, name, password=login.password).close()
        by_password = True
    except paramiko.AuthenticationException:
        by_password = False
    return {"key": by_key, "password": by_password}


def test_converged_server_has_nothing_left_to_change(exchange):
    changes = changed_operations(str(exchange.inventory))
    assert {name: hosts for name, hosts in changes.items() if hosts} == {}


def test_absent_partner_is_locked_at_once_then_removed_after_retention(own_exchange):
    exchange = own_exchange
    alice, bob = PARTNERS
    assert can_login(exchange, bob) == {"key": True, "password": True}
    exchange.host.ssh(f"printf 'for bob' > /srv/exchange/partners/{bob}/download/keep.zip")
    session = paramiko_sftp(exchange.host, bob, password=exchange.logins[bob].password)

    exchange.write_partners(
        [partner_entry(alice, exchange.logins[alice].key), partner_entry(bob, exchange.logins[bob].key, present=False)]
    )
    result = exchange.deploy()
    assert result.returncode == 0, result.stderr[-2000:]

    assert can_login(exchange, bob) == {"key": False, "password": False}
    assert can_login(exchange, alice) == {"key": True, "password": True}
    with pytest.raises((EOFError, OSError, paramiko.SSHException)):
        session.listdir("/")  # the open session was ended
    assert exchange.host.ssh(f"cat /srv/exchange/partners/{bob}/download/keep.zip").stdout == "for bob"
    assert bob in [e["account"] for e in audit_events(exchange.host, "account-locked")]
    assert not any(changed_operations(str(exchange.inventory)).values()), "a locked partner must stay converged"

    # 7 days after the lock day, uploads made late that day have not had their 7 x 24 h: kept.
    # A partner still in the data but locked by hand (a compromised account) is never removed.
    exchange.host.ssh(f"usermod --expiredate $(date -d '7 days ago' +%F) {bob}")
    exchange.host.ssh(f"usermod --expiredate $(date -d '30 days ago' +%F) {alice}")
    try:
        said = exchange.host.ssh("exchange purge").stderr
        assert exchange.host.ssh(f"getent passwd {bob} {alice}").stdout.count("\n") == 2
        assert f"kept {alice}: locked, but not by the partner data" in said
        # Retention later (the lock day moved back 8 days) it goes, but only once retention has
        # emptied its folders: a lock day can be older than the lock (a lock by hand, then dropped).
        exchange.host.ssh(f"usermod --expiredate $(date -d '8 days ago' +%F) {bob}")
        exchange.host.ssh("exchange purge --quiet")
        assert exchange.host.ssh(f"getent passwd {bob}", check=False).returncode == 0  # keep.zip is new
        exchange.host.ssh(f"touch -d '8 days ago' /srv/exchange/partners/{bob}/download/keep.zip")
        exchange.host.ssh("exchange purge --quiet")
        assert exchange.host.ssh(f"getent passwd {alice}", check=False).returncode == 0
    finally:
        exchange.host.ssh(f"usermod --expiredate '' {alice}")
    gone = exchange.host.ssh(
        f"getent passwd {bob}; test -e /srv/exchange/partners/{bob} && echo chroot; "
        f"test -e {paths.AUTHORIZED_KEYS_DIR}/{bob} && echo keys; "
        f"test -e {paths.LOG_SOCKETS_DIR}/{bob}.conf && echo socket; true"
    ).stdout
    assert gone == ""
    assert bob in [e["account"] for e in audit_events(exchange.host, "account-removed")]


def test_dropped_partner_is_locked_and_restored_when_it_returns(own_exchange):
    exchange = own_exchange
    alice, bob = PARTNERS
    # Dropped together with a new name that cannot be made (the group `users` exists): the
    # deploy fails with the reason, and the dropped partner is locked all the same.
    exchange.write_partners([partner_entry(bob, exchange.logins[bob].key), partner_entry("users")])
    result = exchange.deploy()
    assert result.returncode != 0
    assert "users: a group of that name exists on the host" in result.stdout + result.stderr
    assert can_login(exchange, alice) == {"key": False, "password": False}
    exchange.write_partners([partner_entry(bob, exchange.logins[bob].key)])
    assert exchange.deploy().returncode == 0

    exchange.write_partners([partner_entry(name, exchange.logins[name].key) for name in PARTNERS])
    assert exchange.deploy().returncode == 0
    assert can_login(exchange, alice) == {"key": True, "password": True}
    assert alice in [e["account"] for e in audit_events(exchange.host, "account-unlocked")]


def test_link_account_is_removed_when_its_validity_ended(own_exchange):
    exchange = own_exchange
    exchange.host.ssh(
        "useradd --user-group --no-create-home --home-dir /srv/exchange/links/lnk-expired --shell /usr/sbin/nologin "
        "--groups exchange-links --expiredate $(date -d yesterday +%F) lnk-expired && "
        "install -d -o root -g root -m 0755 /srv/exchange/links/lnk-expired && "
        "install -d -o root -g exchange-staff -m 2775 /srv/exchange/links/lnk-expired/download && "
        "printf x > /srv/exchange/links/lnk-expired/download/study.zip && "
        "useradd --user-group --no-create-home --home-dir /srv/exchange/links/lnk-valid --shell /usr/sbin/nologin "
        "--groups exchange-links --expiredate $(date -d '+3 days' +%F) lnk-valid && "
        "install -d -o root -g root -m 0755 /srv/exchange/links/lnk-valid && "
        # One that cannot be removed (a file system mounted in its folder, which rm never crosses):
        # named so it comes first, it must not keep the others from going.
        "useradd --user-group --no-create-home --home-dir /srv/exchange/links/lnk-a-stuck --shell /usr/sbin/nologin "
        "--groups exchange-links --expiredate $(date -d yesterday +%F) lnk-a-stuck && "
        "install -d -o root -g root -m 0755 /srv/exchange/links/lnk-a-stuck/download && "
        "mount -t tmpfs none /srv/exchange/links/lnk-a-stuck/download"
    )
    try:
        stuck = exchange.host.ssh("exchange purge --quiet", check=False)
        assert stuck.returncode == 1 and "could not remove account lnk-a-stuck" in stuck.stderr, stuck.stderr
        assert [e["account"] for e in audit_events(exchange.host, "account-removal-failed")] == ["lnk-a-stuck"]
    finally:
        exchange.host.ssh("umount /srv/exchange/links/lnk-a-stuck/download")
    exchange.host.ssh("exchange purge --quiet")  # the next run removes it
    assert exchange.host.ssh("test -e /srv/exchange/links/lnk-a-stuck", check=False).returncode == 1
    assert exchange.host.ssh("getent passwd lnk-expired", check=False).returncode == 2
    assert exchange.host.ssh("test -e /srv/exchange/links/lnk-expired", check=False).returncode == 1
    assert exchange.host.ssh("getent passwd lnk-valid", check=False).returncode == 0
    removed = {e["account"]: e["reason"] for e in audit_events(exchange.host, "account-removed")}
    assert removed.get("lnk-expired") == "validity ended" and "lnk-valid" not in removed


def test_a_deploy_killed_half_way_converges_on_the_next_run(boot_host, tmp_path):
    host = boot_host("killed")
    partners = tmp_path / "partners.yaml"
    partners.write_text(json.dumps({"partners": [partner_entry(f"partner-{i:02d}") for i in range(5)]}))
    inventory = write_inventory(tmp_path, [host], partners_file=str(partners))
    run = subprocess.Popen(
        [str(PYINFRA), "-y", str(inventory), "deploy.py"],
        cwd=REPO,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    seen = []
    for line in run.stdout:
        seen.append(line)
        if "Starting operation: Exchange accounts" in line:
            time.sleep(0.3)
            os.killpg(run.pid, signal.SIGKILL)
            break
    run.wait(timeout=30)
    assert run.returncode == -signal.SIGKILL, "".join(seen[-20:])

    again = pyinfra("-y", str(inventory), "deploy.py")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert {name: hosts for name, hosts in changed_operations(str(inventory)).items() if hosts} == {}
    assert (
        host.ssh("getent group exchange-partners")
        .stdout.strip()
        .endswith(",".join(f"partner-{i:02d}" for i in range(5)))
    )
