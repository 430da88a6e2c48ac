"""The audit's own baseline (tests/audit/baseline.yaml) and the deploy's code say the same. The
audit does not read its expectations from the deploy, so that a deploy bug fails the audit; a
drift between the two fails here instead. Fix whichever of the two is wrong."""

import pytest
import yaml

from exchange import bans, paths
from exchange.layout import Layout
from exchange.policy import load_policy, parse_policy
from roles import REPO
from tests.audit.baseline import ACCOUNT, Expected, baseline, placeholders
from tests.unit.test_audit_coverage import policy_key_exists

POLICY_FILE = REPO / "policies.yaml"
KINDS = ("partner", "link")


def site_policy():
    """The repository's policy with every name ACC-03..06 depends on changed."""
    data = yaml.safe_load(POLICY_FILE.read_text(encoding="utf-8"))
    data["accounts"] = {
        "root": "/data/imaging",
        "partner_group": "imaging-partners",
        "link_group": "imaging-links",
        "staff_group": "radiology",
        "auditor_group": "inspectors",
        "download_folder": "outgoing",
        "upload_folder": "incoming",
    }
    return parse_policy(yaml.safe_dump(data), "site-policy.yaml")


@pytest.fixture(params=["repository", "site"])
def policy(request):
    return load_policy(POLICY_FILE).policy if request.param == "repository" else site_policy()


def test_every_placeholder_is_a_policy_key_or_the_account():
    unknown = {
        template: names
        for template in baseline().templates()
        if (names := [n for n in placeholders(template) if n != ACCOUNT and not policy_key_exists(n)])
    }
    assert unknown == {}


def test_chroots_and_homes_are_where_the_deploy_makes_them(policy):
    audit, deploy = Expected(policy), Layout(policy)
    assert {kind: audit.chroot(kind, "alice") for kind in KINDS} == {
        kind: deploy.chroot(kind, "alice") for kind in KINDS
    }
    assert audit.shell == paths.NOLOGIN


def test_chroot_folders_are_the_deploys(policy):
    """ACC-04; the chroot itself (the skeleton's "") is ACC-03's: root's, not group or other writable."""
    deploy = Layout(policy).skeleton("alice")
    chroot_owner, _, chroot_mode = deploy.pop("")
    assert Expected(policy).chroot_folders("alice") == deploy
    assert chroot_owner == "root" and not int(chroot_mode, 8) & 0o022


def test_the_tree_is_the_deploys(policy):
    """ACC-05."""
    assert Expected(policy).tree() == Layout(policy).tree_dirs()


def test_source_bans_are_the_deploys():
    """BAN-01: the jails the deploy configures, what they never ban, the off marker's text."""
    ours = baseline()
    assert ours.jails == {"sshd": bans.SSHD_JAIL, "portal": bans.PORTAL_JAIL}
    assert tuple(ours.jails.values()) == bans.JAILS
    assert ours.never_banned == bans.NEVER_BANNED
    assert ours.bans_off_text == bans.OFF_TEXT


def test_sudo_rights_are_the_deploys():
    """SUDO-01, SUDO-02: the commands the audit expects are the ones the deploy's sudo rules grant,
    as `sudo -l` lists one rule: its commands on one line, comma-separated."""
    from roles.auditor import AUDITOR_COMMANDS

    ours = baseline().sudo
    assert ours["auditor"] == AUDITOR_COMMANDS
    assert ours["staff"] == (paths.EXCHANGE,)
    assert Expected(load_policy(POLICY_FILE).policy).sudo_rights("auditor") == [
        "(root) NOPASSWD: " + ", ".join(AUDITOR_COMMANDS)
    ]
