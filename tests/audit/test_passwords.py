"""Password rules in the files PAM reads, login.defs, and every partner's shadow aging."""

import re

from tests.audit.catalogue import control


def conf_values(text: str) -> dict[str, str]:
    """`key = value`, `key value` or a bare `key` per line, as libpwquality and pam_faillock read them."""
    values = {}
    for line in (text or "").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        key, _, value = line.partition("=") if "=" in line else line.partition(" ")
        values[key.strip()] = value.strip() or "yes"
    return values


def module_arguments(line: str | None) -> dict[str, str]:
    """A PAM line's `key=value` and bare arguments: they override the module's config files."""
    arguments = {}
    words = (line or "").split()
    after_module = next((i + 1 for i, word in enumerate(words) if word.endswith(".so")), len(words))
    for word in words[after_module:]:
        key, _, value = word.partition("=")
        arguments[key] = value or "yes"
    return arguments


def module_line(read, stack: str, module: str, when: str | None = None) -> str | None:
    for line in (read.text(f"/etc/pam.d/{stack}") or "").splitlines():
        if line.strip().startswith("#"):
            continue
        if module in line and (when is None or when in line):
            return " ".join(line.split())
    return None


@control("PW-01")
def test_pwquality_settings(host, read, policy, control):
    q = policy.passwords.quality
    # libpwquality's order: pwquality.conf.d/*.conf (sorted), then pwquality.conf, then the
    # module's arguments in the PAM stack; each later one wins.
    merged = {}
    folder = host.file("/etc/security/pwquality.conf.d")
    for name in sorted(n for n in (folder.listdir() if folder.exists else []) if n.endswith(".conf")):
        merged.update(conf_values(read.text(f"{folder.path}/{name}")))
    merged.update(conf_values(read.text("/etc/security/pwquality.conf")))
    merged.update(module_arguments(module_line(read, "common-password", "pam_pwquality.so")))
    expected = {
        "minlen": str(q.minlen),
        "minclass": str(q.minclass),
        "dictcheck": "1" if q.dictcheck else "0",
        "maxrepeat": str(q.maxrepeat),
        "maxsequence": str(q.maxsequence),
        "difok": str(q.difok),
        "enforce_for_root": "yes" if q.enforce_for_root else None,
    }
    control.verify(expected, {key: merged.get(key) for key in expected})


@control("PW-02")
def test_password_stack(read, policy, control):
    remember = policy.passwords.history.remember
    pwquality = module_line(read, "common-password", "pam_pwquality.so")
    pwhistory = module_line(read, "common-password", "pam_pwhistory.so") or ""
    found = {
        "pam_pwquality": pwquality is not None,
        "pam_pwhistory remember": (re.search(r"remember=(\d+)", pwhistory) or [None, None])[1],
        "pam_pwhistory enforce_for_root": "enforce_for_root" in pwhistory,
    }
    control.verify(
        {
            "pam_pwquality": True,
            "pam_pwhistory remember": str(remember),
            "pam_pwhistory enforce_for_root": policy.passwords.quality.enforce_for_root,
        },
        found,
    )


@control("PW-03")
def test_lockout(read, policy, control):
    lockout = policy.passwords.lockout
    conf = conf_values(read.text("/etc/security/faillock.conf"))
    for when in ("preauth", "authfail"):  # a module argument overrides faillock.conf
        conf.update(module_arguments(module_line(read, "common-auth", "pam_faillock.so", when)))
    conf.update(module_arguments(module_line(read, "common-account", "pam_faillock.so")))
    found = {
        "deny": conf.get("deny"),
        "unlock_time": conf.get("unlock_time"),
        "fail_interval": conf.get("fail_interval"),
        "tally survives reboot": not (conf.get("dir") or "/var/run/faillock").startswith(("/run", "/var/run")),
        "auth preauth": module_line(read, "common-auth", "pam_faillock.so", "preauth") is not None,
        "auth authfail": module_line(read, "common-auth", "pam_faillock.so", "authfail") is not None,
        "account": module_line(read, "common-account", "pam_faillock.so") is not None,
    }
    expected = {
        "deny": str(lockout.deny),
        "unlock_time": str(lockout.unlock_time),
        "fail_interval": str(lockout.fail_interval),
        "tally survives reboot": True,
        "auth preauth": True,
        "auth authfail": True,
        "account": True,
    }
    control.verify(expected, found)


@control("PW-04")
def test_login_defs(read, policy, control):
    aging = policy.passwords.aging
    defs = dict(
        line.split(None, 1)
        for line in (read.text("/etc/login.defs") or "").splitlines()
        if line.strip() and not line.startswith("#") and len(line.split(None, 1)) == 2
    )
    useradd = conf_values(read.text("/etc/default/useradd"))
    found = {
        "PASS_MAX_DAYS": defs.get("PASS_MAX_DAYS", "").strip(),
        "PASS_MIN_DAYS": defs.get("PASS_MIN_DAYS", "").strip(),
        "PASS_WARN_AGE": defs.get("PASS_WARN_AGE", "").strip(),
        "INACTIVE": useradd.get("INACTIVE"),
    }
    control.verify(
        {
            "PASS_MAX_DAYS": str(aging.max_days),
            "PASS_MIN_DAYS": str(aging.min_days),
            "PASS_WARN_AGE": str(aging.warn_days),
            "INACTIVE": str(aging.inactive_days),
        },
        found,
    )


def chage(read, name: str) -> dict[str, str]:
    return {
        key.strip(): value.strip()
        for key, _, value in (line.partition(":") for line in read.privileged("chage", name).splitlines())
    }


def password_status(read, name: str) -> tuple[str, dict[str, int | None]]:
    """`passwd -S`: P (usable password), L (locked: none usable) or NP (empty), and the aging
    numbers from shadow itself, also while a change is forced (chage -l then shows "password
    must be changed" instead of dates)."""
    fields = read.privileged("password-status", name).split()
    numbers = (int(f) if f.lstrip("-").isdigit() else None for f in fields[3:7])
    return fields[1], dict(zip(["min", "max", "warn", "inactive"], numbers, strict=True))


# Without a usable password nothing may age: a key login cannot renew a password, and PAM
# would lock the account out after max days.
NO_AGING = {"min": 0, "max": -1, "inactive": -1}


@control("PW-05")
def test_every_partner_ages(read, policy, control):
    aging = policy.passwords.aging
    ages = {"min": aging.min_days, "max": aging.max_days, "warn": aging.warn_days, "inactive": aging.inactive_days}
    deviations = {}
    partners = read.group_members(policy.accounts.partner_group)
    read.prefetch("password-status", partners)
    for name in partners:
        # None handed out yet, or key login only: no aging.
        status, got = password_status(read, name)
        want = ages if status == "P" else NO_AGING
        if {key: got[key] for key in want} != want:
            deviations[name] = {"password": status, **got}
    control.verify({}, deviations)


@control("PW-06")
def test_staff_and_auditors_have_no_password(read, policy, control):
    """sshd takes only keys from them; a password would still open su and the console."""
    deviations = {}
    members = {
        group: read.group_accounts(group) for group in (policy.accounts.staff_group, policy.accounts.auditor_group)
    }
    read.prefetch("password-status", [name for names in members.values() for name in names])
    for names in members.values():
        for name in names:
            status, got = password_status(read, name)
            if status != "L" or {key: got[key] for key in NO_AGING} != NO_AGING:
                deviations[name] = {"password": status, **got}
    control.verify({}, deviations)
