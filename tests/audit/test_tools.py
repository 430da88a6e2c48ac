"""The staff tools' data: transport credentials, recipients' addresses and token hashes."""

import pytest

from exchange.policy import HOST_POLICY_PATH, parse_policy

control = pytest.mark.control

# Root only: the site file holds the SMTP and SMS credentials, the state the recipients'
# addresses and numbers and the link token hashes, the partner file the partners' contacts.
ROOT_ONLY = {
    "/etc/imaging-exchange/site.yaml": ("root", "root", 0o600),
    "/etc/imaging-exchange/partners.yaml": ("root", "root", 0o600),
    "/var/lib/imaging-exchange": ("root", "root", 0o700),
    "/var/spool/imaging-exchange/outbox": ("root", "root", 0o700),
}


@control(
    "TOOLS-01", reference="CIS Debian 12 7.1.x (file permissions); this project: secrets root only", source="(baseline)"
)
def test_credentials_and_recipient_data_are_root_only(host, policy, control):
    wanted = dict(ROOT_ONLY)
    if host.file("/etc/imaging-exchange/portal.yaml").exists:
        # With the web page its group may pass to the link token index and read a token by
        # name; it can list neither directory.
        portal = policy.portal.service_user
        wanted["/var/lib/imaging-exchange"] = ("root", portal, 0o710)
        wanted["/var/lib/imaging-exchange/link-tokens"] = ("root", portal, 0o2710)
        wanted["/etc/imaging-exchange/portal.yaml"] = ("root", portal, 0o640)
    expected, found = {}, {}
    for path, (owner, group, mode) in wanted.items():
        item = host.file(path)
        if not item.exists:
            continue  # e.g. no outbox on a site that sends through SMTP and an SMS gateway
        expected[path] = f"{owner}:{group} {mode:04o}"
        found[path] = f"{item.user}:{item.group} {item.mode:04o}"
    control.verify(expected, found)


@control("TOOLS-02", reference="this project: one policy, enforced as audited", source="(baseline)")
def test_the_installed_policy_is_the_audited_one(host, policy, control):
    """The tools, the purge and the web page obey the policy installed on the server; the other
    controls compare the server with the audited policy. So the two must say the same (a
    retention of 30 days in the installed copy would otherwise keep files unnoticed)."""
    installed = host.file(str(HOST_POLICY_PATH))
    found = parse_policy(installed.content_string, installed.path).model_dump() if installed.exists else None
    control.verify(policy.model_dump(), found)
