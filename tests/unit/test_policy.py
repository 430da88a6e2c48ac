"""The policy model: the repository's policy is valid, and every bad policy stops with the file and key."""

import copy
from pathlib import Path

import pytest
import yaml

from exchange.policy import PolicyError, load_policy, parse_policy
from roles import REPO

POLICY_FILE = REPO / "policies.yaml"


@pytest.fixture
def policy_data() -> dict:
    return yaml.safe_load(POLICY_FILE.read_text())


def write(tmp_path: Path, data) -> Path:
    path = tmp_path / "site-policy.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_repository_policy_is_valid_and_has_the_source_documents_rules():
    loaded = load_policy(POLICY_FILE)
    policy = loaded.policy
    assert policy.retention.days == 7
    assert policy.links.validity_days == 7
    assert policy.passwords.aging.max_days == 90  # "iedere 3 maanden"
    assert len(loaded.sha256) == 64


def test_defaults_fill_sections_left_out(tmp_path, policy_data):
    minimal = {"sshd": policy_data["sshd"]}
    policy = load_policy(write(tmp_path, minimal)).policy
    assert policy.passwords.quality.minlen == 14
    assert policy.passwords.lockout.deny == 5
    assert policy.accounts.root == "/srv/exchange"
    assert (policy.source_bans.max_failures, policy.source_bans.find_seconds) == (2, 900)


BAD = [
    # (what to change, the key the message must name, words the message must hold)
    (lambda d: d["retention"].update(days=0), "retention.days", "greater than or equal to 1"),
    (lambda d: d["passwords"]["aging"].update(max_days=5, min_days=10), "passwords.aging", "max_days (5) must not"),
    (lambda d: d["passwords"]["aging"].update(warn_days=90), "passwords.aging", "warn_days (90) must be below"),
    (lambda d: d["passwords"]["aging"].update(inactive_days=0), "passwords.aging.inactive_days", "greater than or"),
    # A cross-check holds against a default too (pydantic runs no field validator on one).
    (lambda d: d["passwords"].update(aging={"min_days": 120}), "passwords.aging", "max_days (90) must not"),
    (lambda d: (d.pop("links", None), d["retention"].update(days=3)), "(top level)", "validity_days (7)"),
    (lambda d: d.update(portal_typo={}), "portal_typo", "unknown key"),
    (lambda d: d["passwords"]["quality"].update(min_len=12), "passwords.quality.min_len", "unknown key"),
    (lambda d: d["sshd"].update(max_auth_tries="4"), "sshd.max_auth_tries", "valid integer"),
    (lambda d: d["passwords"]["quality"].update(dictcheck="yes"), "passwords.quality.dictcheck", "valid boolean"),
    (lambda d: d["sshd"].update(ciphers=[]), "sshd.ciphers", "at least 1"),
    (lambda d: d["sshd"].update(macs=["hmac-sha1; rm -rf /"]), "sshd.macs.0", "pattern"),
    (lambda d: d["sshd"].update(rsa_host_key_bits=2048), "sshd.rsa_host_key_bits", "3072"),
    (lambda d: d["sshd"]["sftp"].update(umask="777"), "sshd.sftp.umask", "pattern"),
    (lambda d: d.pop("sshd"), "sshd", "required key is missing"),
    (lambda d: d["accounts"].update(root="srv/exchange"), "accounts.root", "absolute"),
    (lambda d: d["accounts"].update(root="/srv/../etc"), "accounts.root", "absolute"),
    (lambda d: d["accounts"].update(staff_group="Staff Group"), "accounts.staff_group", "pattern"),
    (lambda d: d["accounts"].update(link_group="exchange-partners"), "accounts", "must all differ"),
    (lambda d: d["accounts"].update(upload_folder="../etc"), "accounts.upload_folder", "pattern"),
    (lambda d: d["retention"].update(purge_schedule="hourly"), "retention.purge_schedule", "five cron fields"),
    (lambda d: d["retention"].update(purge_schedule="99 * * * *"), "retention.purge_schedule", "minute 0-59"),
    (lambda d: d["retention"].update(purge_schedule="*/0 * * * *"), "retention.purge_schedule", "five cron fields"),
    (lambda d: d["retention"].update(purge_schedule="5/10 * * * *"), "retention.purge_schedule", "five cron fields"),
    (lambda d: d["accounts"].update(upload_folder="dev"), "accounts", "may not be 'dev'"),
    (lambda d: d["links"].update(validity_days=14), "(top level)", "must not exceed retention.days (7)"),
    (lambda d: d["source_bans"].update(max_failures=0), "source_bans.max_failures", "greater than or equal to 1"),
    (lambda d: d["source_bans"].update(ban_seconds="1h"), "source_bans.ban_seconds", "valid integer"),
    (lambda d: d["source_bans"].update(bantime=600), "source_bans.bantime", "unknown key"),
    # One address must never reach deny: max_failures - 1 on each way in, the failure that bans
    # and the attempt under way stay below it.
    (lambda d: d["source_bans"].update(max_failures=3), "(top level)", "max_failures (3) must be at most 2"),
    (lambda d: d["passwords"]["lockout"].update(deny=4), "(top level)", "at most 1 with passwords.lockout.deny 4"),
    (lambda d: d["source_bans"].update(find_seconds=600), "(top level)", "find_seconds (600) must not be below"),
    (lambda d: d["source_bans"].update(ban_seconds=900), "(top level)", "ban_seconds (900) must be at least"),
    (
        lambda d: (d["sshd"].update(login_grace_time=120), d["source_bans"].update(ban_seconds=1000)),
        "(top level)",
        "fail_interval + sshd.login_grace_time (1020)",
    ),
    # ... against the defaults too, with the section left out.
    (lambda d: (d.pop("source_bans"), d["passwords"]["lockout"].update(deny=4)), "(top level)", "max_failures (2)"),
]


@pytest.mark.parametrize("change, key, words", BAD, ids=[key for _, key, _ in BAD])
def test_bad_policy_names_file_and_key(tmp_path, policy_data, change, key, words):
    data = copy.deepcopy(policy_data)
    change(data)
    path = write(tmp_path, data)
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    message = str(caught.value)
    assert f"{path}: {key}: " in message
    assert words in message


def test_every_problem_is_reported_at_once(tmp_path, policy_data):
    policy_data["retention"]["days"] = 0
    policy_data["bogus"] = 1
    message = str(pytest.raises(PolicyError, load_policy, write(tmp_path, policy_data)).value)
    assert message.count("\n") == 1
    assert "retention.days" in message and "bogus: unknown key" in message


@pytest.mark.parametrize(
    "text, words",
    [
        ("sshd: [\n", "line 2, column 1: not valid YAML"),
        ("- a list\n", "(top level): must be a mapping"),
        ("", "(top level): must be a mapping"),
    ],
)
def test_unparsable_policy(tmp_path, text, words):
    path = write(tmp_path, text)
    message = str(pytest.raises(PolicyError, load_policy, path).value)
    assert message.startswith(str(path)) and words in message


def test_missing_and_binary_files(tmp_path):
    assert "cannot read policy file" in str(pytest.raises(PolicyError, load_policy, tmp_path / "nope.yaml").value)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    assert "not UTF-8" in str(pytest.raises(PolicyError, load_policy, binary).value)


def test_parse_reports_the_given_name():
    with pytest.raises(PolicyError, match=r"^inline\.yaml: sshd: required key is missing"):
        parse_policy("{}", Path("inline.yaml"))
