"""OpenSSH as it runs (sshd -T), the SFTP Match block, and ssh-audit's policy."""

import subprocess
import sys
from pathlib import Path

from tests.audit.catalogue import control


@control("SSH-01")
def test_algorithms(read, policy, control):
    sshd = read.sshd()
    expected = {
        k: ",".join(getattr(policy.sshd, k)) for k in ("kex_algorithms", "ciphers", "macs", "host_key_algorithms")
    }
    names = {
        "kex_algorithms": "kexalgorithms",
        "ciphers": "ciphers",
        "macs": "macs",
        "host_key_algorithms": "hostkeyalgorithms",
    }
    control.verify(expected, {k: sshd.get(v) for k, v in names.items()})


@control("SSH-02")
def test_limits_and_logging(read, policy, control):
    sshd = read.sshd()
    p = policy.sshd
    expected = {
        "loglevel": p.log_level,
        "maxauthtries": str(p.max_auth_tries),
        "maxsessions": str(p.max_sessions),
        "maxstartups": p.max_startups,
        "logingracetime": str(p.login_grace_time),
        "clientaliveinterval": str(p.client_alive_interval),
        "clientalivecountmax": str(p.client_alive_count_max),
    }
    control.verify(expected, {key: sshd.get(key) for key in expected})


@control("SSH-03")
def test_authentication_and_forwarding_baseline(read, control):
    sshd = read.sshd()
    expected = {
        "permitemptypasswords": "no",
        "passwordauthentication": "no",
        "authenticationmethods": "publickey",
        "hostbasedauthentication": "no",
        "ignorerhosts": "yes",
        "disableforwarding": "yes",
        "x11forwarding": "no",
        "allowtcpforwarding": "no",
        "allowagentforwarding": "no",
        "permituserenvironment": "no",
        "usepam": "yes",
    }
    control.verify(expected, {key: sshd.get(key) for key in expected})


@control("SSH-04")
def test_rsa_key_sizes(host, read, policy, control):
    # The public host key is world-readable.
    bits = host.check_output("ssh-keygen -lf /etc/ssh/ssh_host_rsa_key.pub").split()[0]
    control.verify(
        {"host key bits": policy.sshd.rsa_host_key_bits, "requiredrsasize": str(policy.sshd.rsa_min_key_bits)},
        {"host key bits": int(bits), "requiredrsasize": read.sshd().get("requiredrsasize")},
    )


@control("SSH-05")
def test_moduli(host, policy, control):
    smallest = host.check_output("awk '$1 !~ /^#/ && NF >= 7 {print $5}' /etc/ssh/moduli | sort -n | head -1")
    control.verify(True, int(smallest) >= policy.sshd.moduli_min_bits)


def resolved_address(host) -> tuple[str, str]:
    """Host name and port as the auditor's ssh resolves them (--ssh-config included)."""
    backend = host.backend
    config = ["-F", backend.ssh_config] if getattr(backend, "ssh_config", None) else []
    port = ["-p", str(backend.host.port)] if backend.host.port else []
    resolved = subprocess.run(
        ["ssh", "-G", *config, *port, backend.host.name], capture_output=True, text=True, check=True
    )
    values = dict(line.split(" ", 1) for line in resolved.stdout.splitlines() if " " in line)
    return values["hostname"], values["port"]


@control("SSH-06")
def test_ssh_audit_policy(host, control):
    name, port = resolved_address(host)
    audit = subprocess.run(
        [
            str(Path(sys.executable).parent / "ssh-audit"),
            "-n",
            "-P",
            "Hardened Debian 12 (version 3)",
            "-p",
            port,
            name,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    control.verify(
        "exit 0 (Passed)",
        "exit 0 (Passed)" if audit.returncode == 0 else f"exit {audit.returncode}: {audit.stdout.strip()}",
    )


@control("SFTP-01")
def test_sftp_accounts_get_the_match_block(read, policy, control):
    sftp = policy.sshd.sftp
    accounts = read.group_members(policy.accounts.partner_group) + read.group_members(policy.accounts.link_group)
    want = {
        "chrootdirectory": "%h",
        "forcecommand": f"internal-sftp -P setstat,fsetstat,lsetstat,symlink,hardlink -u {sftp.umask} -f AUTHPRIV -l {sftp.log_level} -d /",
        "authenticationmethods": "publickey keyboard-interactive",
        "permittty": "no",
        "disableforwarding": "yes",
        "allowtcpforwarding": "no",
        "allowagentforwarding": "no",
        "allowstreamlocalforwarding": "no",
        "x11forwarding": "no",
        "permittunnel": "no",
    }
    deviations = {}
    read.prefetch("sshd", accounts)
    for account in accounts:
        got = read.sshd(account)
        wrong = {key: got.get(key) for key, value in want.items() if got.get(key) != value}
        if wrong:
            deviations[account] = wrong
    control.verify({}, deviations)
