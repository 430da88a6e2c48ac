"""Passwords the staff tools hand out: random, within the PAM policy, easy to type from an SMS.

The password is set through PAM (`chpasswd` reads it on stdin, never from argv), so
pam_pwquality and pam_pwhistory judge it exactly as they judge a partner's own choice.
It is never written anywhere but the SMS.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from dataclasses import dataclass

from exchange import aging, observe, paths
from exchange.errors import ExchangeError
from exchange.policy import Policy

# No look-alikes: 0/O/o, 1/l/I/i, and nothing a phone keyboard hides behind a long press.
UPPER = "ABCDEFGHJKMNPQRSTUVWXYZ"
LOWER = "abcdefghjkmnpqrstuvwxyz"
DIGITS = "23456789"
GROUP = 4  # typed as blocks: Hq7t-Mw3k-Pz9x-Ne4r
SEPARATOR = "-"  # a fourth character class, on every phone's first keyboard page


class CredentialError(ExchangeError):
    pass


def _runs_ok(text: str, policy: Policy) -> bool:
    """pam_pwquality's maxrepeat and maxsequence, so PAM never refuses what we generate."""
    quality = policy.passwords.quality
    repeat = sequence = 1
    for previous, current in zip(text, text[1:], strict=False):
        repeat = repeat + 1 if current == previous else 1
        step = ord(current) - ord(previous)
        sequence = sequence + 1 if step in (1, -1) and current.isalnum() else 1
        if (quality.maxrepeat and repeat > quality.maxrepeat) or (
            quality.maxsequence and sequence > quality.maxsequence
        ):
            return False
    return True


def generate_password(policy: Policy) -> str:
    """Blocks of four from upper, lower and digits, joined by '-'; at least policy minlen long."""
    letters = max(12, policy.passwords.quality.minlen)
    letters += -letters % GROUP
    alphabet = UPPER + LOWER + DIGITS
    refusal = ""
    for _ in range(MAX_CANDIDATES):
        chars = [secrets.choice(alphabet) for _ in range(letters)]
        if not (set(chars) & set(UPPER) and set(chars) & set(LOWER) and set(chars) & set(DIGITS)):
            continue
        password = SEPARATOR.join("".join(chars[i : i + GROUP]) for i in range(0, letters, GROUP))
        if not _runs_ok(password, policy):
            continue
        refusal = pwquality_refusal(password)
        if not refusal:
            return password
    # Random passwords refused this often: libpwquality itself is broken (its settings, its dictionary).
    raise CredentialError(f"no password could be made: libpwquality refused {MAX_CANDIDATES} in a row ({refusal})")


MAX_CANDIDATES = 100


def pwquality_refusal(password: str) -> str:
    """libpwquality's reason to refuse `password`, "" if it accepts it, where its tool is installed
    (the servers: the passwords role installs it). cracklib refuses the odd random string too
    (about one in thousands: "too simplistic/systematic"), and PAM would refuse the hand-out."""
    if shutil.which("pwscore") is None:
        return ""  # PAM's check when the password is set stays the judge
    result = subprocess.run(["pwscore"], input=f"{password}\n", text=True, capture_output=True)
    return "" if result.returncode == 0 else " ".join(result.stderr.split()) or f"pwscore exited {result.returncode}"


@dataclass(frozen=True)
class ShadowEntry:
    """What a password change replaces, kept in memory to put back if the message fails."""

    hash: str
    lastchg: int | None
    aging: tuple[int | None, int | None, int | None, int | None] = (None, None, None, None)  # min, max, warn, inactive


def shadow_entry(account: str) -> ShadowEntry:
    entry = observe.shadow(with_hash=True).get(account)
    if entry is None:
        raise CredentialError(f"{account}: no such account")
    return ShadowEntry(
        hash=entry["hash"], lastchg=entry["lastchg"], aging=tuple(entry[field] for field in aging.CHAGE_OPTIONS)
    )


def set_password(account: str, password: str) -> None:
    """Set through PAM; a failure is reported with its cause (never the password)."""
    try:
        result = subprocess.run(
            ["chpasswd"], input=f"{account}:{password}\n", text=True, capture_output=True, check=False
        )
    except OSError as error:
        raise CredentialError(f"{account}: the password was not set: cannot run chpasswd: {error}") from None
    if result.returncode != 0:
        raise CredentialError(_chpasswd_failure(account, result.returncode, result.stderr))


def _chpasswd_failure(account: str, status: int, stderr: str) -> str:
    """What chpasswd's failure means, in words that match its cause: pam_pwquality's or
    pam_pwhistory's refusal, a password file held by another change, or anything else."""
    detail = " ".join(stderr.split()) or f"chpasswd exited with status {status}"
    if "BAD PASSWORD" in stderr or "password has been already used" in stderr.lower():
        return f"{account}: the password policy (PAM) refused the new password: {detail}"
    if "lock" in stderr.lower():
        return f"{account}: the password was not set: the password file is locked (another account change?): {detail}"
    return f"{account}: the password was not set: chpasswd failed: {detail}"


def restore(account: str, entry: ShadowEntry) -> None:
    # The old hash goes in on stdin too: argv is visible to every local process.
    subprocess.run(["chpasswd", "--encrypted"], input=f"{account}:{entry.hash}\n", text=True, check=True)
    # The hand-out may have changed the aging too.
    options = aging.chage(dict(zip(aging.CHAGE_OPTIONS, entry.aging, strict=True)))
    if entry.lastchg is not None:
        options += ["--lastday", str(entry.lastchg)]
    subprocess.run([*options, account], check=True, capture_output=True)


def reset_failures(account: str) -> None:
    """Clear pam_faillock's tally, so a recipient locked out by typos can use the new password.
    A failure is a CredentialError saying how to clear it by hand."""
    try:
        subprocess.run(
            ["faillock", "--dir", paths.FAILLOCK_DIR, "--user", account, "--reset"], check=True, capture_output=True
        )
    except (subprocess.CalledProcessError, OSError) as error:
        raise CredentialError(
            f"lockout not cleared: {command_failure(error)}\n"
            f"clear it by hand: faillock --dir {paths.FAILLOCK_DIR} --user {account} --reset"
        ) from None


def command_failure(error: BaseException) -> str:
    """A failed command's own words (its stderr), else the error."""
    if isinstance(error, subprocess.CalledProcessError):
        said = error.stderr.decode(errors="replace") if isinstance(error.stderr, bytes) else error.stderr or ""
        return " ".join(said.split()) or f"{error.cmd[0]} exited with status {error.returncode}"
    return str(error)
