"""Read the exchange's account state on a host in one pass, as JSON.

Standard library only: the deploy sends this file to `python3` on a host that may not
have the exchange tools yet (one bulk fact for every account), and the tools import it.
Input (argv[1], JSON): root, groups, folder names, names to look up, config dirs.
"""

import datetime
import grp
import json
import os
import pwd
import stat
import sys
import time


def _node(path):
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    kind = "dir" if stat.S_ISDIR(st.st_mode) else "link" if stat.S_ISLNK(st.st_mode) else "other"
    return {
        "kind": kind,
        "owner": _user_name(st.st_uid),
        "group": _group_name(st.st_gid),
        "mode": format(stat.S_IMODE(st.st_mode), "04o"),
    }


def _user_name(uid):
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid):
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def shadow_today():
    """Today as /etc/shadow counts days: since 1970-01-01, UTC."""
    return int(time.time() // 86400)


def shadow_day(day):
    """The start (00:00 UTC) of a day as /etc/shadow counts them."""
    return datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC) + datetime.timedelta(days=day)


def shadow_entries(lines, with_hash=False):
    """Lines of /etc/shadow (or `getent shadow`'s): account -> whether a usable password is set,
    whether the password is locked ("!" or "*": no password matches; an empty one asks for none),
    and the days (None: unset). The hash itself only `with_hash` (to put a password back)."""

    def number(value):
        return int(value) if value.strip() else None

    entries = {}
    for line in lines:
        fields = line.rstrip("\n").split(":")
        if len(fields) < 9:
            continue
        locked = fields[1].startswith(("!", "*"))
        entries[fields[0]] = {
            "password_set": not locked and fields[1] != "",
            "password_locked": locked,
            "lastchg": number(fields[2]),
            "min_days": number(fields[3]),
            "max_days": number(fields[4]),
            "warn_days": number(fields[5]),
            "inactive_days": number(fields[6]),
            "expire": number(fields[7]),
        } | ({"hash": fields[1]} if with_hash else {})
    return entries


def shadow(path="/etc/shadow", with_hash=False):
    """/etc/shadow, read by shadow_entries."""
    with open(path, encoding="utf-8") as handle:
        return shadow_entries(handle, with_hash)


def _read(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def observe(params):
    groups = {}
    for name in params["groups"]:
        try:
            entry = grp.getgrnam(name)
            groups[name] = {"gid": entry.gr_gid, "members": sorted(entry.gr_mem)}
        except KeyError:
            groups[name] = None
    exchange_groups = {params["partner_group"], params["link_group"]}
    members = set(params["names"])
    for name in exchange_groups:
        if groups.get(name):
            members.update(groups[name]["members"])
    shadow_entries = shadow()
    accounts = {}
    # A wanted name that is a group but no user: useradd --user-group would fail on it.
    groups_without_user = []
    for name in params["names"]:
        try:
            pwd.getpwnam(name)
        except KeyError:
            try:
                grp.getgrnam(name)
                groups_without_user.append(name)
            except KeyError:
                pass
    for name in sorted(members):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        kinds = [g for g in sorted(exchange_groups) if groups.get(g) and name in groups[g]["members"]]
        home = entry.pw_dir
        accounts[name] = {
            "uid": entry.pw_uid,
            "primary_group": _group_name(entry.pw_gid),
            "exchange_groups": kinds,
            "home": home,
            "shell": entry.pw_shell,
            "shadow": shadow_entries.get(name),
            "paths": {
                part: _node(os.path.join(home, part) if part else home)
                for part in ("", params["download_folder"], params["upload_folder"], "dev")
            },
            "authorized_keys": _read(os.path.join(params["keys_dir"], name)),
            "log_socket": _read(os.path.join(params["log_socket_dir"], name + ".conf")),
        }
    return {
        "today": shadow_today(),
        "now": time.time(),
        "groups": groups,
        "dirs": {path: _node(path) for path in params["dirs"]},
        "accounts": accounts,
        "groups_without_user": sorted(groups_without_user),
        "stray_log_sockets": sorted(
            entry[:-5]
            for entry in (os.listdir(params["log_socket_dir"]) if os.path.isdir(params["log_socket_dir"]) else [])
            if entry.endswith(".conf") and entry[:-5] not in accounts
        ),
    }


if __name__ == "__main__":
    json.dump(observe(json.loads(sys.argv[1])), sys.stdout, sort_keys=True)
