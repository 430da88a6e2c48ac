"""The auditors' suite (tests/audit) run as auditors run it: against a live host, as the
auditor account, with reports. It passes on a fresh deploy, changes nothing, and catches drift."""

import json
import shlex
import subprocess
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from exchange.policy import load_policy
from tests.pyinfra_run import REPO

pytestmark = pytest.mark.e2e
SNAPSHOT = (
    "find /etc /srv/exchange -xdev -printf '%p %y %m %u %g %s\\n' | sort | sha256sum; "
    "find /etc /srv/exchange -xdev -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum"
)


def run_audit(host, workdir: Path, *modules: str) -> tuple[subprocess.CompletedProcess, dict[str, dict]]:
    """Run the suite (or some of its modules) as the auditor; return the result and, per
    control id, its outcome with the failure message."""
    config = host.path / "auditor_ssh_config"
    junit, report = workdir / "audit.xml", workdir / "audit.html"
    result = subprocess.run(
        [
            str(REPO / ".venv/bin/pytest"),
            *([f"tests/audit/{module}" for module in modules] or ["tests/audit"]),
            "-p",
            "no:cacheprovider",
            f"--hosts=ssh://{host.hostname}",
            f"--ssh-config={config}",
            f"--policy={REPO / 'policies.yaml'}",
            f"--junitxml={junit}",
            f"--html={report}",
            "--self-contained-html",
            "-q",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    controls = {}
    for case in ElementTree.parse(junit).getroot().iter("testcase"):
        properties = {p.get("name"): p.get("value") for p in case.iter("property")}
        problem = case.find("failure") if case.find("failure") is not None else case.find("error")
        if "control" not in properties:
            if case.find("skipped") is not None:
                continue  # not applicable to this host (e.g. no web page): skipped before its control began
            properties["control"] = case.get("name")  # broke before its control began: still a failure
        message = problem.get("message", "") if problem is not None else ""
        controls[properties["control"]] = {"failed": problem is not None, "message": message, **properties}
    return result, controls


def test_the_audit_passes_on_a_fresh_deploy_and_changes_nothing(exchange, tmp_path):
    before = exchange.host.ssh(SNAPSHOT).stdout
    result, controls = run_audit(exchange.host, tmp_path)
    assert result.returncode == 0, result.stdout[-4000:]
    assert exchange.host.ssh(SNAPSHOT).stdout == before, "the audit changed /etc or /srv/exchange"

    assert not [control for control, outcome in controls.items() if outcome["failed"]]
    assert len(controls) >= 20
    for control, outcome in controls.items():
        assert outcome["reference"] and outcome["source"] and "expected" in outcome and "actual" in outcome, control
    suite = ElementTree.parse(tmp_path / "audit.xml").getroot()
    properties = {p.get("name"): p.get("value") for p in suite.iter("property") if p.get("name") == "policy_sha256"}
    assert properties["policy_sha256"] == load_policy(REPO / "policies.yaml").sha256
    report = (tmp_path / "audit.html").read_text()
    for needle in (
        "SSH-01",
        "RET-02",
        load_policy(REPO / "policies.yaml").sha256,
        f"Host: ssh://{exchange.host.hostname}<",
    ):
        assert needle in report
    hosts = {p.get("name"): p.get("value") for p in suite.iter("property") if p.get("name") == "hosts"}
    assert hosts["hosts"] == f"ssh://{exchange.host.hostname}"


def sudoers_granting(partner: str, other: str, partner_gid: str) -> list[str]:
    """A drop-in that grants SFTP accounts commands without naming a %group: a user list, a
    rule continued on the next line, and the partner group by number."""
    return [
        f"root,{partner} ALL=(root) NOPASSWD: /usr/bin/id",
        f"{other} \\",
        "    ALL=(root) NOPASSWD: /usr/bin/true",
        f"%#{partner_gid} ALL=(root) NOPASSWD: /usr/bin/whoami",
    ]


def test_drift_fails_exactly_the_broken_controls(own_exchange, tmp_path):
    host = own_exchange.host
    partner, other = sorted(own_exchange.logins)
    gid = host.ssh("getent group exchange-partners | cut -d: -f3").stdout.strip()
    sudoers = " ".join(shlex.quote(line) for line in sudoers_granting(partner, other, gid))
    host.ssh(
        f"""set -e
        printf '%s\\n' {sudoers} > /tmp/drift-sudoers && visudo -qcf /tmp/drift-sudoers
        install -m 0440 /tmp/drift-sudoers /etc/sudoers.d/zz-drift
        usermod --home /srv/exchange/partners/{other} {partner}
        usermod --shell /bin/sh {other}
        chmod g+w /srv/exchange/partners/{partner}
        chage --maxdays 9999 {partner}
        echo '    AllowTcpForwarding yes' >> /etc/ssh/sshd_config && systemctl reload ssh
        rm /etc/cron.d/imaging-exchange-purge
        chmod 644 /etc/imaging-exchange/partners.yaml
        printf 'forgotten' > /srv/exchange/partners/{partner}/upload/forgotten.dcm
        touch -d '8 days ago' /srv/exchange/partners/{partner}/upload/forgotten.dcm
        """
    )
    time.sleep(2)  # sshd re-executes on reload
    result, controls = run_audit(host, tmp_path)
    assert result.returncode == 1
    failed = {control for control, outcome in controls.items() if outcome["failed"]}
    assert failed == {
        "ACC-02",
        "ACC-03",
        "ACC-06",
        "PW-05",
        "SFTP-01",
        "RET-01",
        "RET-02",
        "LINK-02",  # the hourly job removed runs no delivery follow-ups either
        "SUDO-02",
        "TOOLS-01",
    }, result.stdout[-4000:]
    assert "partners.yaml" in controls["TOOLS-01"]["actual"] and "0644" in controls["TOOLS-01"]["actual"]
    assert partner in controls["PW-05"]["actual"] and "9999" in controls["PW-05"]["actual"]
    assert "forgotten.dcm" in controls["RET-02"]["actual"]
    # sudo's own view of each form: the user list and the %#gid for one, the continued rule
    # and the %#gid for the other.
    assert "SUDO-02: expected" in controls["SUDO-02"]["message"]
    assert json.loads(controls["SUDO-02"]["actual"])[partner] == [
        "(root) NOPASSWD: /usr/bin/id",
        "(root) NOPASSWD: /usr/bin/whoami",
    ]
    assert json.loads(controls["SUDO-02"]["actual"])[other] == [
        "(root) NOPASSWD: /usr/bin/true",
        "(root) NOPASSWD: /usr/bin/whoami",
    ]
    homes = json.loads(controls["ACC-06"]["actual"])
    assert "ACC-06: expected" in controls["ACC-06"]["message"]
    assert homes[partner] == {"home": f"/srv/exchange/partners/{other}", "shell": "/usr/sbin/nologin"}
    assert homes[other] == {"home": f"/srv/exchange/partners/{other}", "shell": "/bin/sh"}
