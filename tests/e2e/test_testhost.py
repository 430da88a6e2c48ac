"""The disposable test host itself: fresh copies, several at once, and teardown that always happens."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from tests import hostnet, testhost
from tests.pyinfra_run import REPO

pytestmark = pytest.mark.e2e

# A separate process that boots a host in its own session directory and then waits.
HOLDER = textwrap.dedent(
    """
    import signal, sys, time
    from tests import testhost
    # Ctrl-C as at a terminal, even when the suite itself runs in the background (a shell
    # without job control starts background commands with SIGINT ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    testhost.interrupt_on_sigterm()
    with testhost.session_directory() as directory:
        host = testhost.boot("victim", log=lambda message: None, own_network=sys.argv[1] == "own")
        print(directory, host.merged, host.pid, flush=True)
        time.sleep(600)
    """
)


def start_holder(own_network: bool = False) -> tuple[subprocess.Popen, Path, Path, int]:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, "own" if own_network else "shared"],
        cwd=REPO,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if k != testhost.RUN_DIR_ENV},
    )
    line = holder.stdout.readline()
    assert line, holder.stderr.read()
    directory, merged, pid = line.split()
    assert Path(f"/proc/{pid}").exists()
    return holder, Path(directory), Path(merged), int(pid)


def network_left(network: hostnet.OwnNetwork) -> list[str]:
    """What remains of an own network: its namespace, its veth end here, its relay."""
    relay = subprocess.run(["pgrep", "-f", f"tests.hostnet relay {network.admin} "], capture_output=True).stdout
    return [name for name, left in (("namespace or veth", network.exists()), ("relay", relay)) if left]


def assert_no_trace(directory: Path, merged: Path, nspawn_pid: int) -> None:
    assert not directory.exists(), f"{directory} left behind"
    mounts = Path("/proc/mounts").read_text()
    assert str(directory) not in mounts, "an overlay mount was left behind"
    assert not testhost._processes_inside(merged), "processes still run inside the container root"
    assert not testhost._pid_alive(nspawn_pid), "systemd-nspawn still runs"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_run_leaves_nothing_behind(sig):
    holder, directory, merged, nspawn_pid = start_holder()
    holder.send_signal(sig)
    holder.wait(timeout=60)
    assert_no_trace(directory, merged, nspawn_pid)


@pytest.mark.parametrize("own_network", [False, True], ids=["shared-network", "own-network"])
def test_a_killed_run_is_reaped_by_the_next(testhost_session, own_network):
    holder, directory, merged, nspawn_pid = start_holder(own_network)
    network = testhost.TestHost(**json.loads((directory / "victim/state.json").read_text())).network
    holder.kill()
    holder.wait(timeout=10)
    # The container outlives a SIGKILLed holder; the next session start reaps it.
    assert testhost._pid_alive(nspawn_pid)
    assert f"{directory.name}/victim" in testhost.reap_stale_sessions()
    assert_no_trace(directory, merged, nspawn_pid)
    if network:
        assert network_left(network) == []


def test_every_boot_is_a_fresh_copy_of_the_pristine_rootfs(boot_host):
    first = boot_host("fresh")
    first.ssh("echo leftover > /root/marker && apt-get --version >/dev/null")
    old_keys = first.known_hosts.read_text()
    testhost.shutdown(first)
    second = boot_host("fresh")
    assert second.ssh("test -e /root/marker", check=False).returncode == 1
    assert second.known_hosts.read_text() != old_keys, "host keys must be new for every copy"
    assert not (testhost.pristine_rootfs() / "root/marker").exists()


def test_hosts_run_side_by_side(boot_host):
    one, two = boot_host("left"), boot_host("right")
    assert one.port != two.port
    assert one.ssh("hostname").stdout.strip() == "left"
    assert two.ssh("hostname").stdout.strip() == "right"
    assert one.ssh("cat /etc/debian_version").stdout.startswith("12.")
    assert {h.name for h in testhost.running_hosts()} >= {"left", "right"}


def test_a_host_of_its_own_network(boot_host):
    host = boot_host("own", own_network=True)
    network = host.network
    assert host.hostname == network.host and host.ssh("hostname").stdout.strip() == "own"
    # Reached from a second address of this machine as from the admin's.
    for source, seen in ((None, network.admin), (host.sources[0], host.sources[0])):
        bind = ["-b", source] if source else []
        result = subprocess.run(
            [*host.ssh_args()[:-1], *bind, host.ssh_args()[-1], "echo $SSH_CONNECTION"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert result.stdout.split()[0] == seen, result.stderr
    # It may set firewall rules in its own namespace (fail2ban bans there), and apt works.
    cap_bounding = int(host.ssh("sed -n 's/^CapBnd:\\s*//p' /proc/1/status").stdout, 16)
    assert cap_bounding >> 12 & 1, "no CAP_NET_ADMIN"
    assert host.ssh("ip -o link show | grep -c -v ' lo:'").stdout.strip() == "1"  # its veth end only
    host.ssh("apt-get -q update")
    testhost.shutdown(host)
    assert network_left(network) == []


def _reap_after(barrier: threading.Barrier, errors: list) -> None:
    barrier.wait()
    try:
        testhost.reap_stale_sessions()
    except Exception as exc:  # noqa: BLE001 (reported by the test, with its message)
        errors.append(exc)


def test_two_sessions_starting_together_reap_a_stale_one_once():
    """Two xdist workers start at once and both find the same stale session: its mounted root
    is unmounted by one of them, and neither fails on the other's work (CI once did)."""
    barrier = threading.Barrier(2)
    for _round in range(5):
        stale = testhost.STATE_ROOT / f"{testhost.SESSION_PREFIX}999999999-stale"
        merged = stale / "host" / "root"
        merged.mkdir(parents=True)
        subprocess.run(["mount", "-t", "tmpfs", "stale", str(merged)], check=True)
        errors = []
        reapers = [threading.Thread(target=_reap_after, args=(barrier, errors)) for _ in range(2)]
        for reaper in reapers:
            reaper.start()
        for reaper in reapers:
            reaper.join()
        assert not errors, errors
        assert not stale.exists()
        assert str(merged) not in Path("/proc/mounts").read_text()
