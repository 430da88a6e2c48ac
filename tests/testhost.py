"""Disposable Debian 12 test hosts: systemd as PID 1 and the stock OpenSSH server.

A pristine rootfs is debootstrapped once and cached under /var/cache/imaging-exchange,
keyed on its package list. Every host boots from a fresh overlayfs copy of it with
systemd-nspawn, so no host ever sees another run's state. By default hosts share this
machine's network namespace; each gets its own sshd port on 127.0.0.1. Such a host has no
CAP_NET_ADMIN and can set no firewall rules (its host data says `source_bans: False`).

`boot(name, own_network=True)` (or `up --own-network`) boots a host in a network namespace of
its own instead (tests/hostnet.py): it keeps CAP_NET_ADMIN for its own namespace, listens on
its address there (`host.hostname`, 198.18.x.2; sshd also on its loopback, for the web page),
and tests may connect to it from more addresses of this machine (`host.sources`: bind the
client, `ssh -b`, `curl --interface`). Its apt goes through a relay to the Debian mirror.

    python -m tests.testhost up [--reuse] [--own-network] [NAME]   boot a host, print how to reach it
    python -m tests.testhost show [NAME]           how to reach a running host
    python -m tests.testhost down [NAME]           stop one host, or all (and reap killed runs)
    python -m tests.testhost list                  the running hosts

Everything a host owns lives in one run directory: its state.json, overlay layers,
admin key, known_hosts and console log. Teardown stops the container, kills whatever
still runs inside its root, unmounts the overlay, removes an own network (namespace, veth,
relay) and deletes the directory; it runs on failure and Ctrl-C too, and `down` reaps hosts
left behind by a killed run.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tests import hostnet

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# A plain Debian 12 server as a site would install it; the deploy adds the rest.
PACKAGES = (
    "dbus",
    "iproute2",
    "openssh-server",
    "procps",
    "python3",
    "sudo",
    "systemd",
    "systemd-sysv",
)
# Bump when the preparation below changes, so cached rootfs trees are rebuilt.
PREPARE_VERSION = 1
APT_SOURCES = f"""\
deb {MIRROR} {SUITE} main
deb {MIRROR} {SUITE}-updates main
deb http://deb.debian.org/debian-security {SUITE}-security main
"""

CACHE_DIR = Path(os.environ.get("EXCHANGE_TESTHOST_CACHE", "/var/cache/imaging-exchange"))
# The inventory (inventory/testhost.py) lists every host in this directory.
RUN_DIR_ENV = "EXCHANGE_TESTHOST_DIR"
STATE_ROOT = Path("/var/tmp/imaging-exchange")
DEFAULT_RUN_DIR = STATE_ROOT / "testhosts"
# Each test session keeps its hosts in STATE_ROOT/session-<pid>, apart from `make testhost`.
SESSION_PREFIX = "session-"
FIRST_PORT = 2201
PORTAL_PORT_OFFSET = 1000  # a host's web page listens here above its sshd port
STAFF_USER = "staff-demo"  # the staff account the deploy makes on every test host (host_data)
BOOT_TIMEOUT = 120
STOP_TIMEOUT = 30


class TestHostError(RuntimeError):
    pass


def run_dir() -> Path:
    return Path(os.environ.get(RUN_DIR_ENV) or DEFAULT_RUN_DIR)


def rootfs_key() -> str:
    spec = json.dumps([SUITE, MIRROR, "minbase", sorted(PACKAGES), PREPARE_VERSION])
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


def _run(*cmd: str | os.PathLike, **kwargs) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([str(c) for c in cmd], check=True, text=True, capture_output=True, **kwargs)
    except subprocess.CalledProcessError as exc:
        raise TestHostError(
            f"{' '.join(map(str, cmd))} failed ({exc.returncode}):\n{exc.stderr or exc.stdout}"
        ) from None
    except FileNotFoundError as exc:
        raise TestHostError(
            f"{exc.filename} is not installed; run `make deps` (apt-get install debootstrap systemd-container)"
        ) from None


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def pristine_rootfs(log=print) -> Path:
    """The cached pristine rootfs, built on first use (about a minute)."""
    target = CACHE_DIR / f"rootfs-{SUITE}-{rootfs_key()}"
    with _locked(CACHE_DIR / "rootfs.lock"):
        if (target / ".complete").exists():
            return target
        building = target.with_name(target.name + ".building")
        shutil.rmtree(building, ignore_errors=True)
        log(f"building the pristine {SUITE} rootfs in {target} (once, about a minute) ...")
        _run(
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(PACKAGES)}",
            SUITE,
            building,
            MIRROR,
        )
        _prepare_pristine(building)
        building.rename(target)
        (target / ".complete").touch()
        return target


def _prepare_pristine(root: Path) -> None:
    # A 0700 root makes dbus and logind time out for minutes.
    root.chmod(0o755)
    (root / "etc/apt/sources.list").write_text(APT_SOURCES)
    # Host keys and machine id belong to each booted copy, not to the shared image.
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/machine-id").write_text("")
    # A container has no consoles to serve.
    for unit in ("getty.target", "console-getty.service"):
        (root / "etc/systemd/system" / unit).unlink(missing_ok=True)
        (root / "etc/systemd/system" / unit).symlink_to("/dev/null")


@dataclass
class TestHost:
    name: str
    port: int
    pid: int
    directory: str

    hostname: str = "127.0.0.1"
    user: str = "root"
    own_network: bool = False  # in a network namespace of its own (tests/hostnet.py)
    relay_pid: int = 0  # its apt relay

    @property
    def network(self) -> hostnet.OwnNetwork | None:
        return hostnet.OwnNetwork(self.port, self.port - FIRST_PORT) if self.own_network else None

    @property
    def sources(self) -> list[str]:
        """Addresses of this machine a test may connect from, apart from the admin's (own network only)."""
        return self.network.sources if self.network else []

    @property
    def path(self) -> Path:
        return Path(self.directory)

    @property
    def merged(self) -> Path:
        return self.path / "root"

    @property
    def key(self) -> Path:
        return self.path / "admin_ed25519"

    @property
    def auditor_key(self) -> Path:
        """A key for the auditor account the deploy creates (inventory/testhost.py)."""
        return self.path / "auditor_ed25519"

    @property
    def staff_key(self) -> Path:
        """The key of the staff account `staff_user` the deploy creates (host_data)."""
        return self.path / "staff_ed25519"

    @property
    def staff_user(self) -> str:
        return STAFF_USER

    @property
    def known_hosts(self) -> Path:
        return self.path / "known_hosts"

    def ssh_args(self, user: str | None = None, key: Path | None = None) -> list[str]:
        return [
            "ssh",
            "-p",
            str(self.port),
            "-i",
            str(key or self.key),
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            f"{user or self.user}@{self.hostname}",
        ]

    @property
    def root_mux(self) -> Path:
        return self.path / "root.mux"

    def multiplexed(self) -> list[str]:
        """ssh options that let root's commands share one connection (OpenSSH ControlMaster): a
        login costs about 0.25 s, a session on an open connection 0.02 s. Only `ssh` uses them;
        a login that is what a test checks goes through `ssh_args` and logs in afresh."""
        return ["-o", "ControlMaster=auto", "-o", f"ControlPath={self.root_mux}", "-o", "ControlPersist=30"]

    def ssh(self, command: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run a shell command on the host as root (over real ssh, on root's shared connection)."""
        ssh, *rest = self.ssh_args()
        result = subprocess.run(
            [ssh, *self.multiplexed(), *rest, command],
            text=True,
            capture_output=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            raise TestHostError(f"{self.name}: `{command}` exited {result.returncode}:\n{result.stderr}{result.stdout}")
        return result

    def host_data(self) -> dict:
        """pyinfra host data that reaches this host as root and keeps its sshd port; the
        deploy also creates an `auditor` account with this host's auditor key, and the staff
        account `staff_user` with its staff key. Only a host with its own network can ban
        sources (CAP_NET_ADMIN)."""
        return {
            "ssh_hostname": self.hostname,
            "ssh_port": self.port,
            "ssh_user": "root",
            "ssh_key": str(self.key),
            "ssh_known_hosts_file": str(self.known_hosts),
            "ssh_strict_host_key_checking": "yes",
            "admin_connects_as_root": True,
            "source_bans": self.own_network,
            "sshd_port": self.port,
            # The web page logs users in through sshd on loopback.
            "sshd_listen_addresses": [self.hostname, "127.0.0.1"] if self.own_network else [self.hostname],
            "auditors": [
                {"name": "auditor", "public_keys": [self.auditor_key.with_suffix(".pub").read_text().strip()]}
            ],
            "staff": [
                {"name": self.staff_user, "public_keys": [self.staff_key.with_suffix(".pub").read_text().strip()]}
            ],
        }

    @property
    def portal_port(self) -> int:
        return self.port + PORTAL_PORT_OFFSET

    @property
    def portal_url(self) -> str:
        return f"https://{self.hostname}:{self.portal_port}"

    def portal_data(self) -> dict:
        """Host data for the web page on this host: on its address only, a self-signed certificate."""
        return {
            "server_name": self.hostname,
            "listen_port": self.portal_port,
            "listen_addresses": [self.hostname],
            "http_redirect_port": None,
            "self_signed": True,
        }

    def how_to_connect(self) -> str:
        return " ".join(self.ssh_args())


def _state_file(directory: Path) -> Path:
    return directory / "state.json"


def _pid_alive(pid: int) -> bool:
    """Whether `pid` is still our systemd-nspawn (not a zombie, not a reused pid)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"systemd-nspawn")
    except OSError:
        return False


def _ports_in_use() -> set[int]:
    """Ports of every host this machine runs, whichever session booted it."""
    ports = set()
    for state in STATE_ROOT.glob("*/*/state.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            ports.add(json.loads(state.read_text())["port"])
    return ports


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _free_port(taken: set[int]) -> int:
    """A port for sshd whose web page port (PORTAL_PORT_OFFSET above it) is free too."""
    port = FIRST_PORT
    while port in taken or not (_bindable(port) and _bindable(port + PORTAL_PORT_OFFSET)):
        port += 1
    return port


def running_hosts(directory: Path | None = None) -> list[TestHost]:
    directory = directory or run_dir()
    hosts = []
    for state in sorted(directory.glob("*/state.json")):
        try:
            hosts.append(TestHost(**json.loads(state.read_text())))
        except (ValueError, TypeError):
            continue
    return hosts


def boot(name: str, log=print, directory: Path | None = None, own_network: bool = False) -> TestHost:
    """Boot a fresh host named `name` (in `directory`, default: the run directory) and wait
    until sshd answers and systemd is up; with `own_network`, in a network namespace of its own."""
    lower = pristine_rootfs(log)
    base = directory or run_dir()
    directory = base / name
    # One lock for all sessions: two boots must not pick the same port.
    with _locked(STATE_ROOT / "boot.lock"):
        if directory.exists():
            stale = _state_file(directory)
            if stale.exists() and _pid_alive(json.loads(stale.read_text())["pid"]):
                raise TestHostError(f"test host {name!r} is already running; `make testhost-down` stops it")
            _teardown_directory(directory)
        port = _free_port(_ports_in_use())
        directory.mkdir(parents=True)
        directory.chmod(0o755)
        host = TestHost(name=name, port=port, pid=0, directory=str(directory), own_network=own_network)
        if host.network:
            host.hostname = host.network.host
        # Written before anything is mounted or created, so `down` can always find what to clean.
        _state_file(directory).write_text(json.dumps(asdict(host)))
    try:
        if host.network:
            host.network.create()
            host.relay_pid = hostnet.start_relay(host.network)
            _state_file(directory).write_text(json.dumps(asdict(host)))
        for sub in ("upper", "work", "root"):
            (directory / sub).mkdir()
        _run(
            "mount",
            "-t",
            "overlay",
            "overlay",
            "-o",
            f"lowerdir={lower},upperdir={directory / 'upper'},workdir={directory / 'work'}",
            host.merged,
        )
        _personalise(host)
        # In its own namespace the host may set firewall rules there (nspawn drops CAP_NET_ADMIN
        # unless told), and no name server is reachable: no resolv.conf, so a lookup fails at
        # once instead of timing out.
        network = (
            [
                f"--network-namespace-path={host.network.netns_path}",
                "--capability=CAP_NET_ADMIN",
                "--resolv-conf=delete",
            ]
            if host.network
            else ["--resolv-conf=copy-host"]
        )
        console = open(directory / "console.log", "w")
        process = subprocess.Popen(
            [
                "systemd-nspawn",
                "--quiet",
                "--boot",
                "--register=no",
                "--keep-unit",
                "--console=passive",
                "--link-journal=no",
                *network,
                f"--machine={name}",
                f"--directory={host.merged}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        host.pid = process.pid
        _state_file(directory).write_text(json.dumps(asdict(host)))
        _wait_until_up(host, process)
        return host
    except BaseException:
        shutdown(host)
        raise


def _personalise(host: TestHost) -> None:
    root = host.merged
    (root / "etc/hostname").write_text(host.name + "\n")
    (root / "etc/hosts").write_text(
        f"127.0.0.1\tlocalhost\n127.0.1.1\t{host.name}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    )
    _run("ssh-keygen", "-q", "-A", "-f", root)
    _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"admin@{host.name}", "-f", host.key)
    for key, user in ((host.auditor_key, "auditor"), (host.staff_key, host.staff_user)):
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{user}@{host.name}", "-f", key)
    ssh_dir = root / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    (ssh_dir / "authorized_keys").write_text(host.key.with_suffix(".pub").read_text())
    (ssh_dir / "authorized_keys").chmod(0o600)
    # The port is host data too (inventory/testhost.py), so the deploy keeps it.
    (root / "etc/ssh/sshd_config.d/10-testhost.conf").write_text(f"Port {host.port}\nListenAddress {host.hostname}\n")
    if host.network:
        (root / "etc/apt/apt.conf.d/00testhost-proxy").write_text(f'Acquire::http::Proxy "{host.network.apt_proxy}";\n')
    # How an auditor reaches this host (`make audit`).
    (host.path / "auditor_ssh_config").write_text(
        f"Host {host.hostname}\n  Port {host.port}\n  User auditor\n  IdentityFile {host.auditor_key}\n"
        f"  IdentitiesOnly yes\n  UserKnownHostsFile {host.known_hosts}\n  StrictHostKeyChecking yes\n"
        "  HostKeyAlgorithms ssh-ed25519\n  BatchMode yes\n"
    )
    known = []
    for pub in sorted((root / "etc/ssh").glob("ssh_host_*_key.pub")):
        keytype, blob = pub.read_text().split()[:2]
        known.append(f"[{host.hostname}]:{host.port} {keytype} {blob}\n")
    host.known_hosts.write_text("".join(known))


def _wait_until_up(host: TestHost, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + BOOT_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise TestHostError(
                f"{host.name}: systemd-nspawn exited {process.returncode}; console:\n"
                + (host.path / "console.log").read_text()[-3000:]
            )
        try:
            result = host.ssh("systemctl is-system-running --wait", check=False, timeout=BOOT_TIMEOUT)
        except subprocess.TimeoutExpired:
            break
        state = result.stdout.strip()
        if state in ("running", "degraded"):
            if state == "degraded":
                failed = host.ssh("systemctl --failed --no-legend", check=False).stdout
                print(f"{host.name}: booted degraded:\n{failed}", file=sys.stderr)
            return
        time.sleep(0.5)
    raise TestHostError(f"{host.name}: not reachable over ssh within {BOOT_TIMEOUT} s")


def _processes_inside(root: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(entry / "root") == str(root):
                    pids.append(int(entry.name))
    return pids


def shutdown(host: TestHost) -> None:
    """Stop the container cleanly if it runs, then remove every trace of it."""
    if host.root_mux.exists():  # root's shared connection goes first, so nothing waits on it
        ssh, *rest = host.ssh_args()
        subprocess.run([ssh, *host.multiplexed(), "-O", "exit", *rest], capture_output=True, timeout=10)
    if host.pid and _pid_alive(host.pid):
        # nspawn turns SIGTERM into an orderly poweroff of the container.
        os.kill(host.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while _pid_alive(host.pid) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(host.pid, os.WNOHANG)
            time.sleep(0.2)
    _teardown_directory(host.path)


def _teardown_directory(directory: Path) -> None:
    merged = directory / "root"
    host = None
    with contextlib.suppress(OSError, ValueError, TypeError):
        host = TestHost(**json.loads(_state_file(directory).read_text()))
    if host and host.pid and _pid_alive(host.pid):
        os.killpg(host.pid, signal.SIGKILL)
    # Whatever still runs inside (after a SIGKILLed nspawn) is found by its root.
    for _ in range(50):
        pids = _processes_inside(merged)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    if os.path.ismount(merged):
        for _attempt in range(20):
            if subprocess.run(["umount", str(merged)], capture_output=True).returncode == 0:
                break
            if not os.path.ismount(merged):  # unmounted meanwhile by whoever else tore it down
                break
            time.sleep(0.25)
        else:
            _run("umount", "--lazy", merged)
    if host and host.network:
        hostnet.stop_relay(host.relay_pid)
        host.network.remove()
    shutil.rmtree(directory, ignore_errors=True)
    if directory.exists():
        raise TestHostError(f"could not remove {directory}")


def clear(directory: Path, name: str | None = None) -> list[str]:
    """Stop the hosts in `directory` (all, or the one named), then remove what is left of
    any host there whose state could not be read (a crash mid-boot)."""
    stopped = []
    for host in running_hosts(directory):
        if name in (None, host.name):
            shutdown(host)
            stopped.append(host.name)
    if directory.exists():
        for leftover in directory.iterdir():
            if leftover.is_dir() and name in (None, leftover.name):
                _teardown_directory(leftover)
                stopped.append(leftover.name)
    return stopped


def down(name: str | None = None) -> list[str]:
    stopped = clear(run_dir(), name)
    if name is None:
        stopped += reap_stale_sessions()
    return stopped


def reap_stale_sessions() -> list[str]:
    """Remove the hosts of test sessions whose process is gone (killed, or the machine lost power)."""
    reaped = []
    # Sessions start together (one per xdist worker): one reaper at a time, or two tear down
    # the same stale host and the second trips over the first's unmount.
    with _locked(STATE_ROOT / "reap.lock"):
        for session in sorted(STATE_ROOT.glob(SESSION_PREFIX + "*")):
            owner = session.name.removeprefix(SESSION_PREFIX).split("-", 1)[0]
            if owner.isdigit() and Path(f"/proc/{owner}").exists():
                continue
            reaped += [f"{session.name}/{name}" for name in clear(session)]
            shutil.rmtree(session, ignore_errors=True)
    return reaped


@contextlib.contextmanager
def session_directory(label: str = "hosts", export: bool = True):
    """A run directory for this process's hosts, removed (hosts and all) on exit.

    With `export`, it becomes the run directory that inventory/testhost.py lists; without,
    its hosts stay out of that inventory (hosts a test session shares between tests).
    """
    reap_stale_sessions()
    directory = STATE_ROOT / f"{SESSION_PREFIX}{os.getpid()}-{label}"
    directory.mkdir(parents=True, exist_ok=True)
    previous = os.environ.get(RUN_DIR_ENV)
    if export:
        os.environ[RUN_DIR_ENV] = str(directory)
    try:
        yield directory
    finally:
        try:
            clear(directory)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
            if export:
                if previous is None:
                    os.environ.pop(RUN_DIR_ENV, None)
                else:
                    os.environ[RUN_DIR_ENV] = previous


def _terminate_as_interrupt(signum, frame):
    # SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so teardown still runs.
    raise KeyboardInterrupt(f"signal {signum}")


def interrupt_on_sigterm() -> None:
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)


def find(name: str) -> TestHost | None:
    return next((host for host in running_hosts() if host.name == name and _pid_alive(host.pid)), None)


def _print_connect(host: TestHost) -> None:
    print(f"test host {host.name!r} is up (Debian 12, systemd, OpenSSH on {host.hostname} port {host.port}).")
    print(f"  ssh in:     {host.how_to_connect()}")
    print(f"  as staff:   {' '.join(host.ssh_args(host.staff_user, host.staff_key))} sudo exchange link list")
    print("  deploy:     .venv/bin/pyinfra inventory/testhost.py deploy.py")
    print("  stop it:    make testhost-down")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.testhost", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up_cmd = sub.add_parser("up", help="boot a fresh test host")
    up_cmd.add_argument("--reuse", action="store_true", help="keep a host of that name if it already runs")
    up_cmd.add_argument("--own-network", action="store_true", help="in a network namespace of its own")
    up_cmd.add_argument("name", nargs="?", default="testhost")
    show_cmd = sub.add_parser("show", help="how to reach a running test host")
    show_cmd.add_argument("name", nargs="?", default="testhost")
    down_cmd = sub.add_parser("down", help="stop test hosts and remove every trace")
    down_cmd.add_argument("name", nargs="?")
    sub.add_parser("list", help="list running test hosts")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("test hosts need root (debootstrap, mount, systemd-nspawn)")
    try:
        if args.command == "up":
            host = find(args.name) if args.reuse else None
            if host is None:
                host = boot(args.name, own_network=args.own_network)
            _print_connect(host)
        elif args.command == "show":
            host = find(args.name)
            if host is None:
                raise TestHostError(f"no test host {args.name!r} is running; `make testhost` boots one")
            _print_connect(host)
        elif args.command == "down":
            for name in down(args.name):
                print(f"stopped {name}")
        else:
            for host in running_hosts():
                print(f"{host.name}\tport {host.port}\tpid {host.pid}\t{host.how_to_connect()}")
    except TestHostError as exc:
        print(f"testhost: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
