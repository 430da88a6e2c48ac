"""Passwords the staff tools hand out: random, within the PAM policy, easy to type from an SMS.

The password is set through PAM (`chpasswd` reads it on stdin, never from argv), so
pam_pwquality and pam_pwhistory judge it exactly as they judge a partner's own choice.
It is never written anywhere but the SMS.
"""

from __future__ import annotations

import secrets
import subprocess
from dataclasses import dataclass

from exchange.policy import Policy

# No look-alikes: 0/O/o, 1/l/I/i, and nothing a phone keyboard hides behind a long press.
UPPER = "ABCDEFGHJKMNPQRSTUVWXYZ"
LOWER = "abcdefghjkmnpqrstuvwxyz"
DIGITS = "23456789"
GROUP = 4  # typed as blocks: Hq7t-Mw3k-Pz9x-Ne4r
# On disk, not under /run, so the tally survives a reboot. The faillock command does not
# read faillock.conf (Debian 12): it is always called with `--dir FAILLOCK_DIR`.
FAILLOCK_DIR = "/var/lib/faillock"
SEPARATOR = "-"  # a fourth character class, on every phone's first keyboard page


class CredentialError(Exception):
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
    while True:
        chars = [secrets.choice(alphabet) for _ in range(letters)]
        if not (set(chars) & set(UPPER) and set(chars) & set(LOWER) and set(chars) & set(DIGITS)):
            continue
        password = SEPARATOR.join("".join(chars[i : i + GROUP]) for i in range(0, letters, GROUP))
        if _runs_ok(password, policy):
            return password


@dataclass(frozen=True)
class ShadowEntry:
    """What a password change replaces, kept in memory to put back if the message fails."""

    hash: str
    lastchg: str


def shadow_entry(account: str) -> ShadowEntry:
    with open("/etc/shadow", encoding="utf-8") as handle:
        for line in handle:
            fields = line.rstrip("\n").split(":")
            if fields[0] == account:
                return ShadowEntry(hash=fields[1], lastchg=fields[2])
    raise CredentialError(f"{account}: no such account")


def set_password(account: str, password: str) -> None:
    """Set through PAM; PAM's refusal is reported (without the password)."""
    result = subprocess.run(["chpasswd"], input=f"{account}:{password}\n", text=True, capture_output=True, check=False)
    if result.returncode != 0:
        raise CredentialError(f"{account}: PAM refused the new password: {result.stderr.strip()}")


def restore(account: str, entry: ShadowEntry) -> None:
    # The old hash goes in on stdin too: argv is visible to every local process.
    subprocess.run(["chpasswd", "--encrypted"], input=f"{account}:{entry.hash}\n", text=True, check=True)
    if entry.lastchg:
        subprocess.run(["chage", "--lastday", entry.lastchg, account], check=True, capture_output=True)


def reset_failures(account: str) -> None:
    """Clear pam_faillock's tally, so a recipient locked out by typos can use the new password."""
    subprocess.run(["faillock", "--dir", FAILLOCK_DIR, "--user", account, "--reset"], check=True, capture_output=True)
