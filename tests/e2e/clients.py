"""Real SFTP clients against a test host: OpenSSH's sftp/ssh/scp and paramiko."""

from __future__ import annotations

import re
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import paramiko

from exchange import paths
from tests.testhost import TestHost

# What `exchange link issue` prints: "issued <account> ...".
ISSUED = re.compile(rf"issued ({paths.LINK_ACCOUNT_NAME.strip('^$')})")


def issued_account(out: str) -> str:
    """The link account `exchange link issue` says it issued."""
    found = ISSUED.search(out)
    assert found, f"no issued link account in: {out!r}"
    return found[1]


def ssh_options(host: TestHost, key: Path | None) -> list[str]:
    options = [
        "-o",
        f"UserKnownHostsFile={host.known_hosts}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "HostKeyAlgorithms=ssh-ed25519",
        "-o",
        "ConnectTimeout=10",
    ]
    if key:
        options += [
            "-i",
            str(key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "PreferredAuthentications=publickey",
        ]
    return options


def openssh_sftp(host: TestHost, user: str, key: Path, batch: str) -> subprocess.CompletedProcess:
    """`sftp -b -`: stops at the first failing command, exit status 1."""
    return subprocess.run(
        ["sftp", *ssh_options(host, key), "-P", str(host.port), "-b", "-", f"{user}@{host.hostname}"],
        input=batch,
        text=True,
        capture_output=True,
        timeout=60,
    )


def openssh(host: TestHost, user: str, key: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ssh", *ssh_options(host, key), "-p", str(host.port), *args[:-1], f"{user}@{host.hostname}", args[-1]],
        text=True,
        capture_output=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def answer(password: str, new_password: str | None = None, messages: list[str] | None = None) -> Callable:
    """A keyboard-interactive handler for PAM's prompts (an expired password asks four).
    PAM's messages to the user (why a new password was refused) go to `messages`."""

    def handler(title, instructions, prompts):
        if messages is not None:
            messages.extend(text for text in (title, instructions, *(prompt for prompt, _ in prompts)) if text)
        replies = []
        for prompt, _echo in prompts:
            text = prompt.lower()
            if "new" in text:
                replies.append(new_password or "")
            else:
                replies.append(password)
        return replies

    return handler


def transport(host: TestHost, source: str | None = None) -> paramiko.Transport:
    """An SSH transport with the host key checked; from the address `source` if given."""
    address = (host.hostname, host.port)
    sock = paramiko.Transport(socket.create_connection(address, 15, (source, 0)) if source else address)
    sock.start_client(timeout=15)
    offered = sock.get_remote_server_key()
    known = {
        line.split()[2] for line in host.known_hosts.read_text().splitlines() if line.split()[1] == offered.get_name()
    }
    if offered.get_base64() not in known:
        sock.close()
        raise AssertionError(f"host key {offered.get_name()} does not match known_hosts")
    return sock


def paramiko_sftp(
    host: TestHost,
    user: str,
    password: str | None = None,
    key: Path | None = None,
    new_password: str | None = None,
    messages: list[str] | None = None,
    source: str | None = None,
) -> paramiko.SFTPClient:
    sock = transport(host, source)
    try:
        if key:
            sock.auth_publickey(user, paramiko.Ed25519Key.from_private_key_file(str(key)))
        else:
            sock.auth_interactive(user, answer(password, new_password, messages))
        return paramiko.SFTPClient.from_transport(sock)
    except BaseException:
        sock.close()
        raise


def portal_form(client: httpx.Client, path: str, **fields) -> httpx.Response:
    """Post a form of the web page as a browser does: the page first (it sets the CSRF cookie),
    then the form with that token."""
    client.get(path)
    return client.post(path, data={"csrf": client.cookies["exchange_csrf"], **fields})
