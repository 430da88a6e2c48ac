"""Staff accounts by code (host data `staff`) on a real host: key login only, sudo for
`exchange` only; a member dropped from the list is locked, its sessions ended, then removed,
each step in the audit log, and so is an auditor dropped from `auditors`."""

import subprocess
import time

import paramiko
import pytest
from passlib.hash import sha512_crypt

from tests.e2e.clients import openssh, transport
from tests.e2e.conftest import audit_events, deployed_host, module_host_name, public_key, ssh_key, write_inventory
from tests.pyinfra_run import changed_operations
from tests.sites import outbox_site

pytestmark = pytest.mark.e2e
STAFF = ("staff-anna", "staff-bram")
PASSWORD = "Harbour-Tulip-Staff-4242!"


def member(name: str, key) -> dict:
    return {"name": name, "public_keys": [public_key(key)]}


@pytest.fixture(scope="module")
def staffed(shared_hosts, tmp_path_factory, request):
    """A host deployed with staff anna and bram (and site data, for `exchange link`), and their keys."""
    directory = tmp_path_factory.mktemp("staff")
    keys = {name: ssh_key(directory, name) for name in STAFF}
    staff = [member(name, keys[name]) for name in STAFF]
    with deployed_host(module_host_name(request), shared_hosts, directory, staff=staff, site=outbox_site()) as exchange:
        yield exchange, keys


def password_refused(host, name: str, password: str) -> bool:
    sock = transport(host)
    try:
        sock.auth_password(name, password)
        return False
    except paramiko.AuthenticationException:
        return True
    finally:
        sock.close()


def test_staff_log_in_with_their_key_and_may_sudo_exchange_only(staffed):
    exchange, keys = staffed
    for name in STAFF:
        listed = openssh(exchange.host, name, keys[name], "sudo -n exchange link list")
        assert listed.returncode == 0, listed.stderr
        refused = openssh(exchange.host, name, keys[name], "sudo -n id")
        assert refused.returncode == 1 and "uid=0" not in refused.stdout, refused.stdout + refused.stderr
        # Key only: no password, and none set by hand opens sshd either.
        assert exchange.host.ssh(f"getent shadow {name} | cut -d: -f2,4,5,7").stdout.strip() == "!:0::"
        exchange.host.ssh(f"usermod -p '{sha512_crypt.hash(PASSWORD)}' {name}")
        assert password_refused(exchange.host, name, PASSWORD)


def wait_for(check, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.5)


def test_a_dropped_member_is_locked_then_removed_and_the_rest_converges(staffed):
    exchange, keys = staffed
    host = exchange.host
    anna, bram = STAFF
    session = subprocess.Popen(
        [*host.ssh_args(bram, keys[bram]), "sleep 600"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: host.ssh(f"pgrep -u {bram} -x sleep", check=False).returncode == 0)
        # In the staff group by hand, never the deploy's to remove: root and an admin.
        host.ssh("useradd -m -G sudo,exchange-staff admin-kees && usermod -aG exchange-staff root")
        host.ssh(f"usermod -p '{sha512_crypt.hash(PASSWORD)}' {anna}")
        inventory = write_inventory(
            exchange.inventory.parent,
            [host],
            partners_file=str(exchange.partners_file),
            site=outbox_site(),
            staff=[member(anna, keys[anna])],
            auditors=[],
        )
        assert inventory == exchange.inventory
        result = exchange.deploy()
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert session.wait(timeout=30) != 0, "bram's open session was not ended"
    finally:
        session.kill()

    assert openssh(host, bram, keys[bram], "true").returncode == 255
    gone = host.ssh(f"getent passwd {bram} auditor; ls -d /home/{bram} /home/auditor 2>/dev/null; true").stdout
    assert gone == ""
    for event in ("account-locked", "account-removed"):
        kinds = {e["account"]: e["kind"] for e in audit_events(host, event)}
        assert kinds == {bram: "staff", "auditor": "auditor"}, event
    assert openssh(host, anna, keys[anna], "sudo -n exchange link list").returncode == 0
    assert host.ssh(f"getent shadow {anna} | cut -d: -f2").stdout.strip() == "!"  # the password set by hand is gone
    assert set(host.ssh("getent group exchange-staff | cut -d: -f4").stdout.strip().split(",")) == {
        anna,
        "admin-kees",
        "root",
    }
    assert {name: hosts for name, hosts in changed_operations(str(inventory)).items() if hosts} == {}
