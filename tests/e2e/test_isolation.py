"""Partners are isolated: each reaches its own two folders over SFTP and nothing else."""

import io
import itertools
import socket
import subprocess

import paramiko
import pytest

from exchange import paths
from tests.e2e.clients import openssh, openssh_sftp, paramiko_sftp, transport
from tests.e2e.conftest import PARTNERS

pytestmark = pytest.mark.e2e
PAIRS = list(itertools.permutations(PARTNERS, 2))


@pytest.fixture(scope="module")
def staged(exchange):
    """A package waiting in each partner's download folder, put there as staff would."""
    for name in PARTNERS:
        exchange.host.ssh(
            f"printf 'study for {name}\\n' > /srv/exchange/partners/{name}/download/study.zip && "
            f"chown root:exchange-staff /srv/exchange/partners/{name}/download/study.zip && "
            f"chmod 0644 /srv/exchange/partners/{name}/download/study.zip"
        )
    return exchange


@pytest.mark.parametrize("me, other", PAIRS)
def test_openssh_sftp_reads_download_and_writes_upload_only(staged, tmp_path, me, other):
    login = staged.logins[me]
    local = tmp_path / "report.txt"
    local.write_text(f"from {me}\n")
    ok = openssh_sftp(
        staged.host,
        me,
        login.key,
        f"ls /\nget /download/study.zip {tmp_path}/got.zip\nput {local} /upload/report.txt\nls -l /upload\n",
    )
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "got.zip").read_text() == f"study for {me}\n"
    assert "report.txt" in ok.stdout
    owner = staged.host.ssh(f"stat -c '%U:%G:%a' /srv/exchange/partners/{me}/upload/report.txt").stdout.strip()
    assert owner == f"{me}:exchange-staff:640"  # staff may read it, nobody else

    refused = {
        "write into download": f"put {local} /download/evil.txt",
        "delete from download": "rm /download/study.zip",
        "rename in download": "rename /download/study.zip /download/x.zip",
        "mkdir in chroot root": "mkdir /mine",
        "chmod": "chmod 777 /upload/report.txt",
        "symlink": "symlink /etc/passwd /upload/passwd",
        "read the other's folder": f"ls /srv/exchange/partners/{other}",
        "read outside": "get /etc/passwd",
        "reach the parent": f"ls /../{other}",
    }
    for what, command in refused.items():
        result = openssh_sftp(staged.host, me, login.key, command + "\n")
        assert result.returncode != 0, f"{me} could {what}: {result.stdout}"
    assert staged.host.ssh(f"cat /srv/exchange/partners/{me}/download/study.zip").stdout == f"study for {me}\n"


@pytest.mark.parametrize("me, other", PAIRS)
def test_paramiko_sees_only_its_chroot(staged, me, other):
    sftp = paramiko_sftp(staged.host, me, password=staged.logins[me].password)
    try:
        assert sorted(sftp.listdir("/")) == ["dev", "download", "upload"]
        assert sorted(sftp.listdir("/..")) == ["dev", "download", "upload"]
        assert sftp.listdir("/download") == ["study.zip"]
        with sftp.open("/download/study.zip") as handle:
            assert handle.read() == f"study for {me}\n".encode()
        sftp.putfo(io.BytesIO(b"paramiko upload"), "/upload/paramiko.bin")
        for path in (f"/srv/exchange/partners/{other}", f"/../{other}/download", "/etc/shadow", "/proc/self"):
            with pytest.raises(IOError):
                sftp.stat(path)
        with pytest.raises(IOError):
            sftp.putfo(io.BytesIO(b"x"), "/download/planted.zip")
        with pytest.raises(IOError):
            sftp.remove("/download/study.zip")
        with pytest.raises(IOError):
            sftp.utime("/upload/paramiko.bin", (0, 0))  # ages cannot be forged
    finally:
        sftp.close()


@pytest.mark.parametrize("me", PARTNERS)
def test_no_shell_no_command_no_tty(exchange, me):
    login = exchange.logins[me]
    command = openssh(exchange.host, me, login.key, "id; echo escaped")
    assert "uid=" not in command.stdout and "escaped" not in command.stdout
    tty = openssh(exchange.host, me, login.key, "-tt", "sh")
    assert "escaped" not in tty.stdout
    assert "PTY allocation request failed" in tty.stderr
    # scp's legacy protocol runs `scp -t` on the server, which ForceCommand replaces.
    scp = subprocess.run(
        [
            "scp",
            "-O",
            "-P",
            str(exchange.host.port),
            "-i",
            str(login.key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            f"UserKnownHostsFile={exchange.host.known_hosts}",
            "-o",
            "HostKeyAlgorithms=ssh-ed25519",
            str(login.key) + ".pub",
            f"{me}@127.0.0.1:/etc/",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert scp.returncode != 0
    rsync = openssh(exchange.host, me, login.key, "rsync --server -e.LsfxC . /tmp/")
    assert "rsync" not in rsync.stdout and "@RSYNCD" not in rsync.stdout


@pytest.mark.parametrize("me", PARTNERS)
def test_no_forwarding_of_any_kind(exchange, me):
    sock = transport(exchange.host)
    try:
        sock.auth_publickey(me, paramiko.Ed25519Key.from_private_key_file(str(exchange.logins[me].key)))
        # -L and -D both open direct-tcpip channels.
        with pytest.raises(paramiko.ChannelException):
            sock.open_channel("direct-tcpip", ("127.0.0.1", exchange.host.port), ("127.0.0.1", 40000), timeout=10)
        # -R asks for a listening port on the server.
        with pytest.raises(paramiko.SSHException):
            sock.request_port_forward("127.0.0.1", 0)
    finally:
        sock.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", 40000), timeout=1).close()
    remote = openssh(
        exchange.host, me, exchange.logins[me].key, "-N", "-o", "ExitOnForwardFailure=yes", "-R", "0:127.0.0.1:9", ""
    )
    assert remote.returncode != 0 and "remote port forwarding failed" in remote.stderr
    unix = openssh(
        exchange.host,
        me,
        exchange.logins[me].key,
        "-N",
        "-o",
        "ExitOnForwardFailure=yes",
        "-R",
        "/tmp/partner.sock:127.0.0.1:9",
        "",
    )
    assert unix.returncode != 0 and "forwarding failed" in unix.stderr


def test_sftp_sessions_and_file_operations_are_logged_with_the_account(exchange, tmp_path):
    me = PARTNERS[0]
    login = exchange.logins[me]
    local = tmp_path / "audit-probe.dcm"
    local.write_bytes(b"DICM probe")
    result = openssh_sftp(
        exchange.host,
        me,
        login.key,
        f"put {local} /upload/audit-probe.dcm\nget /upload/audit-probe.dcm {tmp_path}/back.dcm\nrename /upload/audit-probe.dcm /upload/renamed.dcm\nrm /upload/renamed.dcm\n",
    )
    assert result.returncode == 0, result.stderr
    log = exchange.host.ssh(f"cat {paths.SFTP_LOG}").stdout
    mine = [line for line in log.splitlines() if f"account={me} " in line]
    joined = "\n".join(mine)
    assert "session opened for local user" in joined and "session closed for local user" in joined
    assert 'open "/upload/audit-probe.dcm" flags WRITE,CREATE,TRUNCATE' in joined
    assert 'open "/upload/audit-probe.dcm" flags READ' in joined
    assert 'rename old "/upload/audit-probe.dcm" new "/upload/renamed.dcm"' in joined
    assert 'remove name "/upload/renamed.dcm"' in joined
    assert not [line for line in log.splitlines() if "audit-probe" in line and f"account={me} " not in line]
