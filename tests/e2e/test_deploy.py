"""deploy.py against real Debian 12 hosts: converge two at once, then a re-run changes nothing."""

import subprocess

import pytest
from passlib.hash import sha512_crypt

from exchange import paths
from roles.ops import apply_marker
from tests.pyinfra_run import changed_operations, pyinfra
from tests.testhost import RUN_DIR_ENV

pytestmark = pytest.mark.e2e
INVENTORY = "inventory/testhost.py"


def test_bad_policy_stops_before_the_inventory_is_read(tmp_path):
    bad = tmp_path / "policy.yaml"
    bad.write_text("sshd: {}\nretention: {days: 0}\n")
    result = pyinfra("-y", INVENTORY, "deploy.py", env={"EXCHANGE_POLICY": str(bad), RUN_DIR_ENV: str(tmp_path)})
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert f"{bad}: retention.days: Input should be greater than or equal to 1" in output
    assert f"{bad}: sshd.kex_algorithms: required key is missing" in output
    assert "Loading inventory" not in output and "Connecting" not in output


def deploy_with(host, tmp_path, **data):
    """deploy.py on `host` with these host data keys besides the connection."""
    inventory = tmp_path / f"{host.name}_inventory.py"
    connection = dict(
        ssh_hostname=host.hostname, ssh_port=host.port, ssh_user="root", ssh_key=str(host.key),
        ssh_known_hosts_file=str(host.known_hosts),
    )  # fmt: skip
    inventory.write_text(f"hosts = [({host.name!r}, {connection | data!r})]\n")
    return pyinfra("-y", str(inventory), "deploy.py")


def test_bad_host_data_changes_nothing(boot_host, tmp_path):
    host = boot_host("typo")
    result = deploy_with(host, tmp_path, sshd_prot=22)
    assert result.returncode != 0
    assert "inventory host typo: sshd_prot: unknown host data key" in result.stdout + result.stderr
    assert host.ssh("test -e /etc/apt/apt.conf.d/20auto-upgrades", check=False).returncode == 1
    # A key sshd would refuse at login (RequiredRSASize) stops the deploy with its owner's name.
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", str(tmp_path / "old")], check=True)
    short = (tmp_path / "old.pub").read_text().strip()
    result = deploy_with(
        host,
        tmp_path,
        auditors=[{"name": "audit-old", "public_keys": [short]}],
        staff=[{"name": "staff-old", "public_keys": [short]}],
    )
    assert result.returncode != 0
    assert "auditor audit-old: key 0 is an RSA key of 2048 bits, below 3072" in result.stdout + result.stderr
    assert "staff member staff-old: key 0 is an RSA key of 2048 bits, below 3072" in result.stdout + result.stderr
    assert host.ssh("test -e /etc/apt/apt.conf.d/20auto-upgrades", check=False).returncode == 1
    # One name in two of auditors, staff and partners: each role would undo the other's account.
    partners = tmp_path / "partners.yaml"
    partners.write_text("partners:\n  - {name: carol, organisation: C, email: c@c.example, phone: '+31612345678'}\n")
    key = (host.key.parent / "admin_ed25519.pub").read_text().strip()
    result = deploy_with(
        host,
        tmp_path,
        partners_file=str(partners),
        auditors=[{"name": "carol", "public_keys": [key]}, {"name": "dave", "public_keys": [key]}],
        staff=[{"name": "dave", "public_keys": [key]}],
    )
    assert result.returncode != 0
    assert "carol: both an auditor and a partner; rename one" in result.stdout + result.stderr
    assert "dave: both an auditor and a staff member; rename one" in result.stdout + result.stderr
    assert host.ssh("test -e /etc/apt/apt.conf.d/20auto-upgrades", check=False).returncode == 1


def test_converges_several_hosts_and_a_rerun_changes_nothing(boot_host):
    hosts = [boot_host("alpha"), boot_host("beta")]
    first = pyinfra("-y", INVENTORY, "deploy.py")
    assert first.returncode == 0, first.stderr + first.stdout
    # The test hosts' exchange root is on the container's overlay: nothing limits one account's uploads.
    assert "/srv/exchange is on / (overlay) without user quotas" in first.stdout + first.stderr
    for host in hosts:
        packages = host.ssh("dpkg-query -W -f='${Status}\\n' cron unattended-upgrades").stdout
        assert packages.count("install ok installed") == 2
        upgrades = host.ssh("cat /etc/apt/apt.conf.d/20auto-upgrades").stdout
        assert 'APT::Periodic::Unattended-Upgrade "1";' in upgrades
        assert host.ssh("ps -p 1 -o comm=").stdout.strip() == "systemd"
        # A key-only account never meets the partners' password aging (it could not renew it).
        for account in ("auditor", host.staff_user):
            assert host.ssh(f"getent shadow {account} | cut -d: -f2,4,5,7").stdout.strip() == "!:0::"

    changes = changed_operations(INVENTORY)
    assert {name: hosts for name, hosts in changes.items() if hosts} == {}

    # A deploy stopped between moving sshd_config into place and reloading sshd (or a failed
    # reload) leaves its marker: the next run reloads, once.
    alpha = hosts[0]
    alpha.ssh(f"mkdir -p {paths.APPLY_PENDING_DIR} && touch {apply_marker(paths.SSHD_CONFIG)}")
    # Admins added since get login.defs' aging from useradd: those with a key only (no password
    # to renew) lose it at the next run, those with a password keep it. A staff account made by
    # hand is not in the inventory's staff list: it goes.
    alpha.ssh(
        "useradd -m -G sudo admin-keys && useradd -m -G exchange-staff staff-by-hand && "
        f"useradd -m -G sudo admin-pw && usermod -p '{sha512_crypt.hash('Some-Admin-Pass-1234')}' admin-pw"
    )
    changes = changed_operations(INVENTORY)
    assert {name: hosts for name, hosts in changes.items() if hosts} == {
        "OpenSSH server | sshd_config (validated with sshd -t)": [alpha.name],
        "Staff | Accounts of exchange-staff not in the inventory: locked, then removed": [alpha.name],
        "Password rules | Key-only staff and admins keep no password aging": [alpha.name],
    }
    assert pyinfra("-y", INVENTORY, "deploy.py").returncode == 0
    assert alpha.ssh(f"test -e {apply_marker(paths.SSHD_CONFIG)}", check=False).returncode == 1
    aging = alpha.ssh("for u in admin-keys admin-pw; do getent shadow $u | cut -d: -f4,5,7; done").stdout
    assert aging.split() == ["0::", "1:90:30"]
    assert alpha.ssh("getent passwd staff-by-hand", check=False).returncode == 2
    assert {name: hosts for name, hosts in changed_operations(INVENTORY).items() if hosts} == {}
