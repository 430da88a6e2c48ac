"""The disposable test host itself: fresh copies, several at once, and teardown that always happens."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests import testhost
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
        host = testhost.boot("victim", log=lambda message: None)
        print(directory, host.merged, host.pid, flush=True)
        time.sleep(600)
    """
)


def start_holder() -> tuple[subprocess.Popen, Path, Path, int]:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER],
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


def test_a_killed_run_is_reaped_by_the_next(testhost_session):
    holder, directory, merged, nspawn_pid = start_holder()
    holder.kill()
    holder.wait(timeout=10)
    # The container outlives a SIGKILLed holder; the next session start reaps it.
    assert testhost._pid_alive(nspawn_pid)
    assert f"{directory.name}/victim" in testhost.reap_stale_sessions()
    assert_no_trace(directory, merged, nspawn_pid)


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
