"""The exchange's audit log: one JSON line per event, and it can only grow."""

import json
import time

import pytest

from exchange import paths

pytestmark = pytest.mark.e2e
# What the tools' shell steps do (exchange.auditlog.audit_command): logger to the audit socket.
TO_AUDIT = f"logger -u {paths.AUDIT_SOCKET} -t imaging-exchange -p authpriv.notice -- "


def test_audit_log_is_append_only_even_for_root(exchange):
    host = exchange.host
    assert "a" in host.ssh(f"lsattr -d {paths.AUDIT_LOG}").stdout.split()[0]
    assert host.ssh(f"stat -c '%U:%G:%a' {paths.AUDIT_LOG}").stdout.strip() == "root:adm:640"
    size = int(host.ssh(f"stat -c %s {paths.AUDIT_LOG}").stdout)
    for attempt in (
        f": > {paths.AUDIT_LOG}",
        f"echo forged > {paths.AUDIT_LOG}",
        f"rm -f {paths.AUDIT_LOG}",
        f"mv {paths.AUDIT_LOG} /tmp/gone",
    ):
        assert host.ssh(attempt, check=False).returncode != 0, f"root could: {attempt}"
    assert int(host.ssh(f"stat -c %s {paths.AUDIT_LOG}").stdout) >= size


def test_events_arrive_as_json_lines(exchange):
    exchange.host.ssh(TO_AUDIT + '\'{"event": "probe", "n": 1}\'')
    time.sleep(1)
    last = exchange.host.ssh(f"tail -n 1 {paths.AUDIT_LOG}").stdout
    assert json.loads(last) == {"event": "probe", "n": 1, "writer_uid": 0}  # the kernel's word for who wrote it
    for line in exchange.host.ssh(f"cat {paths.AUDIT_LOG}").stdout.splitlines():
        json.loads(line)


def test_rotation_keeps_the_new_log_append_only(exchange):
    host = exchange.host
    host.ssh("logrotate --force /etc/logrotate.d/imaging-exchange")
    assert host.ssh(f"test -f {paths.AUDIT_LOG}.1", check=False).returncode == 0
    assert "a" in host.ssh(f"lsattr -d {paths.AUDIT_LOG}").stdout.split()[0]
    host.ssh(TO_AUDIT + '\'{"event": "after-rotation"}\'')
    time.sleep(1)
    assert json.loads(host.ssh(f"tail -n 1 {paths.AUDIT_LOG}").stdout) == {"event": "after-rotation", "writer_uid": 0}
