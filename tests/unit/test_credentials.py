"""Generated passwords: within the PAM policy, typeable from an SMS."""

import re

import pytest

from exchange.credentials import DIGITS, LOWER, UPPER, _runs_ok, generate_password
from exchange.policy import load_policy
from roles import REPO

POLICY = load_policy(REPO / "policies.yaml").policy
LOOK_ALIKES = set("0Oo1lIi")


def test_many_passwords_meet_length_classes_runs_and_have_no_look_alikes():
    seen = set()
    for _ in range(2000):
        password = generate_password(POLICY)
        seen.add(password)
        assert len(password) >= POLICY.passwords.quality.minlen
        assert re.fullmatch(r"[A-Za-z2-9]{4}(-[A-Za-z2-9]{4})+", password)
        assert set(password) & set(UPPER) and set(password) & set(LOWER) and set(password) & set(DIGITS)
        assert not set(password) & LOOK_ALIKES
        assert _runs_ok(password, POLICY)
    assert len(seen) == 2000


def test_runs_that_pwquality_refuses_are_recognised():
    assert not _runs_ok("Abcd-2345-xyzw", POLICY)  # a sequence of four
    assert not _runs_ok("Aaaa-2345-xyzw", POLICY)  # a repeat of four
    assert _runs_ok("Abc2-Kp7x-Wm3q", POLICY)


def test_length_follows_the_policy():
    longer = POLICY.model_copy(
        update={
            "passwords": POLICY.passwords.model_copy(
                update={"quality": POLICY.passwords.quality.model_copy(update={"minlen": 22})}
            )
        }
    )
    assert len(generate_password(longer).replace("-", "")) >= 22


def test_a_password_libpwquality_refuses_is_never_handed_out(tmp_path, monkeypatch):
    # The real call, against a stand-in `pwscore` on PATH that refuses the first two.
    pwscore = tmp_path / "pwscore"
    pwscore.write_text(
        f"#!/bin/sh\ncat >> {tmp_path}/judged\nn=$(wc -l < {tmp_path}/judged)\n"
        '[ "$n" -gt 2 ] && exit 0\necho "Password quality check failed: too simplistic/systematic" >&2\nexit 1\n'
    )
    pwscore.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    password = generate_password(POLICY)
    judged = (tmp_path / "judged").read_text().splitlines()
    assert len(judged) == 3 and judged[-1] == password  # two refused, the third handed out


def test_a_broken_libpwquality_is_a_clear_error_not_a_hang(tmp_path, monkeypatch):
    from exchange.credentials import CredentialError

    pwscore = tmp_path / "pwscore"
    pwscore.write_text('#!/bin/sh\necho "Error: Cannot parse the configuration file" >&2\nexit 3\n')
    pwscore.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    with pytest.raises(CredentialError, match="refused 100 in a row .Error: Cannot parse the configuration file"):
        generate_password(POLICY)
