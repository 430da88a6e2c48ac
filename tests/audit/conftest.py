"""Audit a live exchange server against policies.yaml, control by control (pytest-testinfra).

    pytest tests/audit --hosts=ssh://auditor@HOST[:PORT] [--ssh-config=FILE] --policy policies.yaml \\
        --junitxml=reports/audit.xml --html=reports/audit.html --self-contained-html

The suite changes nothing on the host. It logs in as the auditor (key only) and reads
what needs root through `sudo exchange audit-read`, the only command auditors may sudo,
which prints the raw output of sshd -T, chage -l, passwd -S, stat, find, lsattr, sudo -l -U,
nginx -T and fail2ban-client.
"""

from __future__ import annotations

import datetime
import html
import json
import shlex

import pytest

from exchange import paths
from exchange.policy import PolicyError, load_policy
from roles import REPO
from tests.audit.baseline import Expected
from tests.audit.catalogue import catalogue


def pytest_addoption(parser):
    parser.addoption("--policy", default=str(REPO / "policies.yaml"), help="the policy file to audit against")


def pytest_configure(config):
    config.addinivalue_line("markers", "control(id): an audit control; the rest is in its entry in controls.yaml")
    try:
        config.audit_policy = load_policy(config.getoption("--policy"))
    except PolicyError as error:
        raise pytest.UsageError(f"policy error, nothing was audited:\n{error}") from None
    config.audit_started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def audited_hosts(config) -> str:
    hosts = config.getoption("hosts")  # testinfra: one comma-separated string
    return hosts if isinstance(hosts, str) else ",".join(hosts or [])


@pytest.fixture(scope="session")
def loaded_policy(pytestconfig):
    return pytestconfig.audit_policy


@pytest.fixture(scope="session")
def policy(loaded_policy):
    return loaded_policy.policy


@pytest.fixture(scope="session")
def baseline(policy):
    """The audit's own expectations (baseline.yaml) with this policy's names."""
    return Expected(policy)


@pytest.fixture(scope="session", autouse=True)
def _suite_properties(record_testsuite_property, pytestconfig, loaded_policy):
    record_testsuite_property("hosts", audited_hosts(pytestconfig))
    record_testsuite_property("started", pytestconfig.audit_started)
    record_testsuite_property("policy_file", str(loaded_policy.path))
    record_testsuite_property("policy_sha256", loaded_policy.sha256)


class Reader:
    """Runs the reads; root-only ones through sudo exchange audit-read."""

    def __init__(self, host):
        self.host = host
        self.is_root = host.user().name == "root"
        self._stats: dict[str, tuple[str, str, str, str]] = {}
        self._read: dict[tuple[str, str], str] = {}  # (read, account) -> output, from `prefetch`

    def privileged(self, what: str, *arguments: str | None, check: bool = True) -> str | None:
        """The read's output; if it fails, the control fails (or, without `check`, None: for a
        control that records a failing read as what it found)."""
        if len(arguments) == 1 and (what, arguments[0]) in self._read:
            return self._read[what, arguments[0]]
        command, result = self.run(what, *arguments)
        if result.rc != 0:
            if not check:
                return None
            pytest.fail(f"`{command}` failed ({result.rc}): {result.stderr.strip()}")
        return result.stdout

    def run(self, what: str, *arguments: str | None):
        """(the command line, its result) of one read, whatever its exit status: for a read
        whose failure says what it found (`exchange trail verify` names each break)."""
        parts = [paths.AUDIT_READ, what, *(shlex.quote(a) for a in arguments if a)]
        command = " ".join(parts) if self.is_root else "sudo -n " + " ".join(parts)
        return command, self.host.run(command)

    def prefetch(self, what: str, names) -> None:
        """Read `what` (sshd, chage, password-status, sudo-rights) for many accounts in one
        audit-read; the control's own reads of them then come from here. A read that failed is
        not kept: the control's own read fails with its message."""
        new = [name for name in dict.fromkeys(names) if (what, name) not in self._read]
        for start in range(0, len(new), 100):
            chunk = new[start : start + 100]
            if len(chunk) < 2:
                continue  # one account: the plain read
            for line in self.privileged(what, *chunk).splitlines():
                item = json.loads(line)
                if item["returncode"] == 0:
                    self._read[what, item["argument"]] = item["stdout"]

    def stats(self, *wanted: str) -> dict[str, tuple[str, str, str, str]]:
        """Owner, group, octal mode and kind of each path, as root sees them: the paths not read
        yet in one audit-read (the audit changes nothing, so a path read once stays read)."""
        new = list(dict.fromkeys(path for path in wanted if path not in self._stats))
        for start in range(0, len(new), 200):  # well within one command line
            chunk = new[start : start + 200]
            lines = self.privileged("stat", *chunk).splitlines()
            assert len(lines) == len(chunk), f"audit-read stat: {len(chunk)} paths, {len(lines)} lines"
            for path, line in zip(chunk, lines, strict=True):  # stat answers in order
                _, owner, group, mode, kind = line.rsplit("|", 4)
                self._stats[path] = (owner, group, mode, kind)
        return {path: self._stats[path] for path in wanted}

    def text(self, path: str) -> str | None:
        file = self.host.file(path)
        return file.content_string if file.exists else None

    def sshd(self, user: str | None = None) -> dict[str, str]:
        values: dict[str, str] = {}
        for line in self.privileged("sshd", user).splitlines():
            key, _, value = line.partition(" ")
            values[key] = f"{values[key]} {value}" if key in values else value
        return values

    def group_members(self, group: str) -> list[str]:
        result = self.host.run(f"getent group {group}")
        if result.rc != 0:
            return []
        return sorted(filter(None, result.stdout.strip().split(":")[3].split(",")))

    def group_accounts(self, group: str) -> list[str]:
        """The members, and the accounts whose primary group it is (which getent group omits)."""
        result = self.host.run(f"getent group {group}")
        if result.rc != 0:
            return []
        gid = result.stdout.strip().split(":")[2]
        passwd = [line.split(":") for line in self.host.run("getent passwd").stdout.splitlines()]
        return sorted({*self.group_members(group), *(entry[0] for entry in passwd if entry[3] == gid)})


@pytest.fixture(scope="module")
def read(host):
    return Reader(host)


class Control:
    def __init__(self, request, record_property):
        marker = request.node.get_closest_marker("control")
        if marker is None:
            raise RuntimeError(f"{request.node.nodeid} has no @pytest.mark.control")
        self.id = marker.args[0]
        entry = catalogue()[self.id]
        self.reference = entry.reference
        self.source = entry.source
        self.record = record_property
        record_property("control", self.id)
        record_property("reference", self.reference)
        record_property("source", self.source)

    def verify(self, expected, actual) -> None:
        """Record what was expected and found, then compare."""
        self.record("expected", json.dumps(expected, sort_keys=True, default=str))
        self.record("actual", json.dumps(actual, sort_keys=True, default=str))
        assert actual == expected, f"{self.id}: expected {expected!r}, found {actual!r}"

    def not_applicable(self, conditions, found, reason: str) -> None:
        """Skip with `reason` if what was found is exactly what makes the control not apply;
        the report shows both, as for a verified control."""
        if found == conditions:
            self.record("expected", json.dumps(conditions, sort_keys=True, default=str))
            self.record("actual", json.dumps(found, sort_keys=True, default=str))
            pytest.skip(f"not applicable: {reason}")


@pytest.fixture
def control(request, record_property):
    return Control(request, record_property)


# pytest-html: the control columns and the report's header.
def pytest_html_report_title(report):
    report.title = "imaging-exchange audit"


def pytest_html_results_summary(prefix, summary, postfix, session):
    config = session.config
    lines = [
        f"Host: {audited_hosts(config) or '(none)'}",
        f"Started: {config.audit_started}",
        f"Policy: {config.audit_policy.path} (SHA-256 {config.audit_policy.sha256})",
    ]
    prefix.extend(f"<p>{html.escape(line)}</p>" for line in lines)


COLUMNS = ("control", "reference", "source", "expected", "actual")


def pytest_html_results_table_header(cells):
    for offset, column in enumerate(COLUMNS, start=1):
        cells.insert(offset, f"<th>{column.capitalize()}</th>")


def pytest_html_results_table_row(report, cells):
    properties = dict(report.user_properties)
    for offset, column in enumerate(COLUMNS, start=1):
        cells.insert(offset, f"<td>{html.escape(str(properties.get(column, '')))}</td>")
