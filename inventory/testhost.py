"""The local disposable test hosts (`make testhost`, or the test suite's own).

Lists every host running under $EXCHANGE_TESTHOST_DIR (default
/var/tmp/imaging-exchange/testhosts), with the admin key and pinned host keys that
tests/testhost.py made for it. A host sharing this machine's network cannot ban sources
(`source_bans: False`); one with its own network can (`up --own-network`).
"""

from tests.sites import outbox_site
from tests.testhost import running_hosts

testhosts = [
    (
        host.name,
        {
            **host.host_data(),
            "partners_file": "inventory/partners.yaml",
            "site": outbox_site() | {"portal_url": host.portal_url},
            "portal": host.portal_data(),
        },
    )
    for host in running_hosts()
]
