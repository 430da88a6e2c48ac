"""`exchange audit-read` refuses every argument it does not know to be a read-only one."""

import pytest

from exchange.auditread import AuditReadError, command
from exchange.policy import load_policy
from roles import REPO

POLICY = load_policy(REPO / "policies.yaml").policy


def test_the_reads_are_the_systems_own_tools():
    assert command(POLICY, "sshd", None) == ["/usr/sbin/sshd", "-T"]
    assert command(POLICY, "old-files", "30") == [
        "/usr/bin/find",
        "/srv/exchange",
        "-xdev",
        "!",
        "-type",
        "d",
        "-mmin",
        f"+{30 * 24 * 60}",  # the audited policy's days, whatever the installed one says
    ]
    assert command(POLICY, "stat", "/srv/exchange/partners/alice/upload")[-1] == "/srv/exchange/partners/alice/upload"
    assert command(POLICY, "stat", "/")[-1] == "/"


@pytest.mark.parametrize(
    "what, argument, words",
    [
        ("sshd", "root", "'root' is not an exchange account"),
        ("sshd", "x,host=evil -f /etc/shadow", "is not an account name"),
        ("chage", "", "is not an account name"),
        ("stat", "/etc/shadow", "is outside /srv/exchange"),
        ("stat", "/srv/exchange/../../etc/shadow", "not a normalised absolute path"),
        ("stat", "srv/exchange", "not a normalised absolute path"),
        ("shell", None, "unknown read 'shell'"),
        ("old-files", None, "not a number of days"),
        ("old-files", "-1 -delete", "not a number of days"),
    ],
)
def test_anything_else_is_refused(what, argument, words):
    with pytest.raises(AuditReadError, match=words):
        command(POLICY, what, argument)
