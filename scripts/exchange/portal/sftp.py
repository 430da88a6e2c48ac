"""A web login is an SSH login: keyboard-interactive through sshd's PAM, then SFTP.

PAM's conversation as OpenSSH relays it on Debian 12 (measured on the test host), one prompt a
round, messages on the lines before the prompt:
    Password:
    (expired) You are required to change your password ... / Current password:
    New password:  /  Retype new password:
    (refused) BAD PASSWORD: <reason> / New password:
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

from exchange import auditlog

LOGIN_TIMEOUT = 30


class LoginRefused(Exception):
    """Wrong password, unknown or locked account, expired account: one answer for all."""


class PasswordExpired(Exception):
    """The password was right and has expired: PAM asks for a new one."""


class NewPasswordRejected(Exception):
    """PAM refused the new password; the reasons are PAM's own (pwquality, pwhistory)."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = reasons


class ServerUnavailable(Exception):
    """sshd cannot be reached: not the user's fault, and not a failed login."""


@dataclass(frozen=True)
class SshTarget:
    host: str
    port: int
    host_key_files: tuple[Path, ...]
    ciphers: tuple[str, ...]

    def known_hosts(self) -> tuple[list, list, list]:
        return ([asyncssh.read_public_key(path) for path in self.host_key_files], [], [])


@dataclass
class SshLogin:
    """One user's SSH connection and the SFTP session on it."""

    connection: asyncssh.SSHClientConnection
    sftp: asyncssh.SFTPClient
    password_changed: bool = False  # PAM asked for, and took, a new password during this login

    def close(self) -> None:
        self.sftp.exit()
        self.connection.close()


@dataclass
class _PamConversation(asyncssh.SSHClient):
    password: str
    new_password: str | None = None
    expired: bool = False
    attempted: bool = False
    reasons: list[str] = field(default_factory=list)
    _asked: set[str] = field(default_factory=set)

    def kbdint_auth_requested(self) -> str | None:
        # One keyboard-interactive attempt per login: when PAM fails without asking (a locked
        # account), asyncssh would retry until sshd's MaxAuthTries and a disconnect.
        if self.attempted:
            return None
        self.attempted = True
        return ""

    def kbdint_challenge_received(self, name, instructions, lang, prompts):
        self._note(instructions.splitlines())
        answers = []
        for prompt, _echo in prompts:
            *said, asked = prompt.strip().splitlines() or [""]
            asked = asked.strip().lower()
            if asked.startswith("current password"):
                self.expired = True
                answer = self.password if self.new_password is not None else None
            elif asked.startswith("new password"):
                self._note(said)
                answer = self.new_password
            elif asked.startswith("retype new password"):
                answer = self.new_password
            elif asked.startswith("password"):
                answer = self.password
            else:
                answer = None
            if answer is None or asked in self._asked and not asked.startswith("retype"):
                return None  # asked twice: the answer was refused; stop here, one attempt per login
            self._asked.add(asked)
            answers.append(answer)
        return answers

    def _note(self, lines: list[str]) -> None:
        self.reasons += [
            line.strip() for line in lines if line.strip().upper().startswith(("BAD PASSWORD", "PASSWORD HAS BEEN"))
        ]


def loopback_order(ciphers: tuple[str, ...]) -> list[str]:
    """The policy's ciphers, cheapest per byte first (AES-GCM with AES-NI, 128 before 256 bits):
    on loopback the session's secrecy needs no more, and every byte of a download pays it twice
    (sshd encrypts, the portal decrypts)."""
    return sorted(ciphers, key=lambda name: ("gcm" not in name, "128" not in name))


async def announced_socket(target: SshTarget, username: str) -> socket.socket:
    """A connection to sshd from a local port the audit log named first (portal-ssh-connection):
    the access trail tells this login, which sshd logs with that port, from an SFTP client's."""
    family, kind, protocol, _, address = (
        await asyncio.get_running_loop().getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    )[0]
    sock = socket.socket(family, kind, protocol)
    try:
        sock.setblocking(False)
        sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))  # the port is ours from here
        auditlog.record("portal-ssh-connection", account=username, port=sock.getsockname()[1])
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, address), LOGIN_TIMEOUT)
    except BaseException:
        sock.close()
        raise
    return sock


async def open_session(target: SshTarget, username: str, password: str, new_password: str | None = None) -> SshLogin:
    """The user's own SFTP session, or one of the exceptions above."""
    conversation = _PamConversation(password, new_password)
    try:
        sock = await announced_socket(target, username)
    except (TimeoutError, OSError) as exc:
        raise ServerUnavailable(str(exc)) from None
    try:
        connection, _ = await asyncssh.create_connection(
            lambda: conversation,
            target.host,
            target.port,
            sock=sock,
            username=username,
            known_hosts=target.known_hosts(),
            client_keys=None,
            agent_path=None,
            config=None,
            preferred_auth="keyboard-interactive",
            encryption_algs=loopback_order(target.ciphers),
            login_timeout=LOGIN_TIMEOUT,
        )
    except asyncssh.PermissionDenied:
        if conversation.reasons:
            raise NewPasswordRejected(conversation.reasons) from None
        if conversation.expired and new_password is None:
            raise PasswordExpired() from None
        raise LoginRefused() from None
    except (TimeoutError, OSError, asyncssh.Error) as exc:
        raise ServerUnavailable(str(exc)) from None
    try:
        sftp = await connection.start_sftp_client()
    except (OSError, asyncssh.Error) as exc:
        connection.close()
        raise ServerUnavailable(str(exc)) from None
    return SshLogin(connection, sftp, password_changed=conversation.expired and new_password is not None)
