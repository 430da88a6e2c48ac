"""The web page's service user: made before anything grants its group a right (the audit
socket, the link token index), so those rights are given to a group that exists."""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import operation

from roles.sshd import UserGroups


@operation()
def service_account(user: str):
    """A system user with its own group, no home, no shell, in no other group."""
    groups = host.get_fact(UserGroups, user=user)
    if groups == [user]:
        host.noop(f"service user {user} exists")
        return
    q = shlex.quote(user)
    if not groups:
        yield f"useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin {q}"
    else:
        yield f"usermod --groups '' {q}"
