"""deploy.py against real Debian 12 hosts: converge two at once, then a re-run changes nothing."""

import pytest

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


def test_bad_host_data_changes_nothing(boot_host, tmp_path):
    host = boot_host("typo")
    inventory = tmp_path / "typo_inventory.py"
    inventory.write_text(
        f"hosts = [({host.name!r}, dict(ssh_hostname={host.hostname!r}, ssh_port={host.port}, ssh_user='root',"
        f" ssh_key={str(host.key)!r}, ssh_known_hosts_file={str(host.known_hosts)!r}, sshd_prot=22))]\n"
    )
    result = pyinfra("-y", str(inventory), "deploy.py")
    assert result.returncode != 0
    assert "inventory host typo: sshd_prot: unknown host data key" in result.stdout + result.stderr
    assert host.ssh("test -e /etc/apt/apt.conf.d/20auto-upgrades", check=False).returncode == 1


def test_converges_several_hosts_and_a_rerun_changes_nothing(boot_host):
    hosts = [boot_host("alpha"), boot_host("beta")]
    first = pyinfra("-y", INVENTORY, "deploy.py")
    assert first.returncode == 0, first.stderr + first.stdout
    for host in hosts:
        packages = host.ssh("dpkg-query -W -f='${Status}\\n' cron unattended-upgrades").stdout
        assert packages.count("install ok installed") == 2
        upgrades = host.ssh("cat /etc/apt/apt.conf.d/20auto-upgrades").stdout
        assert 'APT::Periodic::Unattended-Upgrade "1";' in upgrades
        assert host.ssh("ps -p 1 -o comm=").stdout.strip() == "systemd"

    changes = changed_operations(INVENTORY)
    assert {name: hosts for name, hosts in changes.items() if hosts} == {}
