"""The OpenSSH server as it runs: hardened crypto, policy values, and a config that can
never lock the admins out."""

import subprocess

import pytest

from exchange.policy import load_policy
from roles import REPO
from tests.e2e.conftest import PARTNERS, write_inventory
from tests.pyinfra_run import pyinfra

pytestmark = pytest.mark.e2e
POLICY = load_policy(REPO / "policies.yaml").policy


def effective(exchange, match: str = "") -> dict[str, str]:
    command = "sshd -T" + (f" -C {match}" if match else "")
    lines = exchange.host.ssh(command).stdout.splitlines()
    values: dict[str, str] = {}
    for line in lines:
        key, _, value = line.partition(" ")
        values[key] = f"{values[key]} {value}" if key in values else value
    return values


def test_ssh_audit_hardened_debian_12_policy_passes(exchange):
    audit = subprocess.run(
        [
            str(REPO / ".venv/bin/ssh-audit"),
            "-P",
            "Hardened Debian 12 (version 3)",
            "-p",
            str(exchange.host.port),
            exchange.host.hostname,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert audit.returncode == 0, audit.stdout
    assert "Passed" in audit.stdout


def test_running_config_matches_the_policy(exchange):
    sshd = POLICY.sshd
    got = effective(exchange)
    assert got["kexalgorithms"] == ",".join(sshd.kex_algorithms)
    assert got["ciphers"] == ",".join(sshd.ciphers)
    assert got["macs"] == ",".join(sshd.macs)
    assert got["hostkeyalgorithms"] == ",".join(sshd.host_key_algorithms)
    assert got["loglevel"] == sshd.log_level
    assert got["maxauthtries"] == str(sshd.max_auth_tries)
    assert got["logingracetime"] == str(sshd.login_grace_time)
    assert got["clientaliveinterval"] == str(sshd.client_alive_interval)
    assert got["clientalivecountmax"] == str(sshd.client_alive_count_max)
    assert got["maxstartups"] == sshd.max_startups
    assert got["permitemptypasswords"] == "no"
    assert got["passwordauthentication"] == "no"
    assert got["authenticationmethods"] == "publickey"
    assert got["disableforwarding"] == "yes"
    assert got["x11forwarding"] == "no"
    key_bits = exchange.host.ssh("ssh-keygen -lf /etc/ssh/ssh_host_rsa_key.pub").stdout.split()[0]
    assert int(key_bits) == sshd.rsa_host_key_bits
    weak = exchange.host.ssh(f"awk '$1 !~ /^#/ && $5 < {sshd.moduli_min_bits}' /etc/ssh/moduli | wc -l").stdout.strip()
    assert weak == "0"


@pytest.mark.parametrize("account", PARTNERS)
def test_sftp_accounts_get_the_match_block(exchange, account):
    got = effective(exchange, f"user={account},host=client.example,addr=192.0.2.10")
    assert got["chrootdirectory"] == "%h"
    assert got["forcecommand"].startswith("internal-sftp -P setstat,fsetstat,lsetstat,symlink,hardlink")
    assert got["forcecommand"].endswith(f"-u {POLICY.sshd.sftp.umask} -f AUTHPRIV -l {POLICY.sshd.sftp.log_level} -d /")
    assert got["authenticationmethods"] == "publickey keyboard-interactive"
    assert got["permittty"] == "no"
    assert got["allowtcpforwarding"] == "no" and got["allowagentforwarding"] == "no"


def test_a_bad_value_is_refused_and_the_admin_keeps_access(exchange, tmp_path):
    before = exchange.host.ssh("sha256sum /etc/ssh/sshd_config").stdout
    broken = write_inventory(
        tmp_path, [exchange.host], partners_file=str(exchange.partners_file), sshd_listen_addresses=["203.0.113.999"]
    )
    result = pyinfra("-y", str(broken), "deploy.py")
    assert result.returncode != 0
    assert "refused /etc/ssh/sshd_config: validation failed" in result.stdout + result.stderr
    assert exchange.host.ssh("sha256sum /etc/ssh/sshd_config").stdout == before
    assert exchange.host.ssh("test -e /etc/ssh/sshd_config.imaging-exchange-new", check=False).returncode == 1
    assert exchange.host.ssh("systemctl is-active ssh").stdout.strip() == "active"


def test_a_config_that_would_shut_out_the_admin_is_refused(exchange, tmp_path):
    before = exchange.host.ssh("sha256sum /etc/ssh/sshd_config").stdout
    lockout = write_inventory(
        tmp_path,
        [exchange.host],
        partners_file=str(exchange.partners_file),
        admin_connects_as_root=False,
        ssh_admin_groups=["sudo"],
    )
    result = pyinfra("-y", str(lockout), "deploy.py")
    assert result.returncode != 0
    assert "the admin 'root' (groups: root) is in none of AllowGroups" in result.stdout + result.stderr
    assert exchange.host.ssh("sha256sum /etc/ssh/sshd_config").stdout == before
