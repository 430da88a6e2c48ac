"""A test host's own network: a network namespace joined to this machine by a veth pair.

A container that shares this machine's network loses CAP_NET_ADMIN, so nothing in it can
set firewall rules (fail2ban cannot ban). In a namespace of its own it keeps them, and they
apply to that namespace only: never to this machine's firewall.

Each host gets a /29 of 198.18.0.0/15 (RFC 2544, for network tests, never routed), picked by
its sshd port, which tests/testhost.py keeps unique across sessions:

    .1  this machine's end of the veth: the admin (pyinfra, `host.ssh`), and the apt relay
    .2  the host
    .3 to .6  more addresses on this machine's end, for tests that connect from other sources

The namespace has no route out. apt on the host reaches the Debian mirror through a relay on
.1 (`Acquire::http::Proxy`): a plain TCP pipe to the mirror, run as its own process so it lives
as long as the host does, including hosts of `python -m tests.testhost up`.

    python -m tests.hostnet relay ADDRESS PORT     the relay (tests/testhost.py starts it)
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SUBNET = ipaddress.ip_network("198.18.0.0/15")
NETNS_PREFIX = "exchange-"
RELAY_PORT = 3142  # apt-cacher-ng's: where apt proxies usually are
MIRROR = ("deb.debian.org", 80)  # every apt source of the test hosts (tests/testhost.py APT_SOURCES)
SOURCES = 4


class HostNetError(RuntimeError):
    pass


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", *args], text=True, capture_output=True)
    if check and result.returncode != 0:
        raise HostNetError(f"ip {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


@dataclass(frozen=True)
class OwnNetwork:
    """The network of the host whose sshd listens on `port` (index = port - first port)."""

    port: int
    index: int

    @property
    def netns(self) -> str:
        return f"{NETNS_PREFIX}{self.port}"

    @property
    def netns_path(self) -> str:
        return f"/run/netns/{self.netns}"

    @property
    def outer(self) -> str:
        return f"exo{self.port}"  # interface names have at most 15 characters

    @property
    def inner(self) -> str:
        return f"exi{self.port}"

    def _address(self, offset: int) -> str:
        base = SUBNET.network_address + 8 * self.index
        if base not in SUBNET:
            raise HostNetError(f"no /29 left in {SUBNET} for index {self.index}")
        return str(base + offset)

    @property
    def admin(self) -> str:
        return self._address(1)

    @property
    def host(self) -> str:
        return self._address(2)

    @property
    def sources(self) -> list[str]:
        return [self._address(3 + n) for n in range(SOURCES)]

    @property
    def apt_proxy(self) -> str:
        return f"http://{self.admin}:{RELAY_PORT}/"

    def create(self) -> None:
        self.remove()  # a killed run's leftovers: no live host has this port
        _ip("netns", "add", self.netns)
        _ip("link", "add", self.outer, "type", "veth", "peer", "name", self.inner)
        _ip("link", "set", self.inner, "netns", self.netns)
        # The admin's address first: it is the primary one, the source of every plain connection.
        for address in (self.admin, *self.sources):
            _ip("addr", "add", f"{address}/29", "dev", self.outer)
        _ip("link", "set", self.outer, "up")
        _ip("-n", self.netns, "addr", "add", f"{self.host}/29", "dev", self.inner)
        _ip("-n", self.netns, "link", "set", self.inner, "up")
        _ip("-n", self.netns, "link", "set", "lo", "up")

    def remove(self) -> None:
        """Delete the namespace (which takes the veth pair with it) and any veth end left here."""
        _ip("netns", "delete", self.netns, check=False)
        # The kernel tears a namespace's devices down after `netns delete` returns: the veth end
        # may vanish between a look and a delete, or linger a moment after.
        deadline = time.monotonic() + 30
        while _ip("link", "show", self.outer, check=False).returncode == 0:
            deleted = _ip("link", "delete", self.outer, check=False)
            if deleted.returncode != 0 and "Cannot find device" not in deleted.stderr:
                raise HostNetError(
                    f"ip link delete {self.outer} failed ({deleted.returncode}): {deleted.stderr.strip()}"
                )
            if time.monotonic() > deadline:
                raise HostNetError(f"{self.outer} is still there 30 s after it was deleted")
            time.sleep(0.1)

    def exists(self) -> bool:
        return Path(self.netns_path).exists() or _ip("link", "show", self.outer, check=False).returncode == 0


# -- the apt relay -----------------------------------------------------------------------


def start_relay(network: OwnNetwork) -> int:
    """Start the relay on the admin's address; its pid once it listens."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.hostnet", "relay", network.admin, str(RELAY_PORT)],
        cwd=Path(__file__).resolve().parent.parent,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise HostNetError(f"the apt relay on {network.admin} exited {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((network.admin, RELAY_PORT), timeout=1):
            return process.pid
        time.sleep(0.1)
    stop_relay(process.pid)
    raise HostNetError(f"the apt relay on {network.admin} did not listen within 15 s")


def _is_relay(pid: int) -> bool:
    try:
        return b"tests.hostnet\0relay\0" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def stop_relay(pid: int) -> None:
    if pid and _is_relay(pid):  # never a reused pid of someone else's
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(1 << 16):
            writer.write(chunk)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def _relay(address: str, port: int) -> None:
    async def serve(client_reader, client_writer):
        try:
            mirror_reader, mirror_writer = await asyncio.open_connection(*MIRROR)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(_pipe(client_reader, mirror_writer), _pipe(mirror_reader, client_writer))

    server = await asyncio.start_server(serve, address, port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "relay":
        sys.exit(__doc__.rsplit("\n\n", 1)[-1])
    asyncio.run(_relay(sys.argv[2], int(sys.argv[3])))
