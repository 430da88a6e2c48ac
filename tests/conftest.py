import os

import pytest

from tests import testhost

# `make test` runs the modules side by side, a whole module to a worker, in collection order
# (pytest-xdist --dist loadfile --no-loadscope-reorder). The longest go first, so that none of
# them starts last and runs on alone while the other worker idles. Seconds of each module's own
# tests (setup, call, teardown; pytest --durations=0, summed per module, two workers, 2026-12-03);
# modules not listed follow in their own order. A module that grows only runs a little late.
MODULE_SECONDS = {
    "tests/e2e/test_portal.py": 380,
    "tests/e2e/test_partner_lifecycle.py": 250,
    "tests/e2e/test_audit.py": 210,
    "tests/e2e/test_source_bans.py": 180,
    "tests/e2e/test_links.py": 170,
    "tests/e2e/test_passwords.py": 165,
    "tests/e2e/test_deploy.py": 150,
    "tests/e2e/test_boundaries.py": 140,
    "tests/e2e/test_pacs.py": 110,
    "tests/e2e/test_trail_ingest.py": 100,
    "tests/e2e/test_trail_reports.py": 100,
    "tests/e2e/test_isolation.py": 95,
    "tests/e2e/test_staff_accounts.py": 95,
    "tests/e2e/test_trail_store.py": 90,
    "tests/e2e/test_retention.py": 85,
    "tests/e2e/test_trail_delivery.py": 80,
}


def pytest_collection_modifyitems(config, items):
    root = config.rootpath
    items.sort(key=lambda item: -MODULE_SECONDS.get(item.path.relative_to(root).as_posix(), 0))


@pytest.fixture(scope="session")
def testhost_session():
    """A run directory for the hosts of single tests (inventory/testhost.py lists exactly
    these); every host in it is gone afterwards."""
    if os.geteuid() != 0:
        pytest.fail("end-to-end tests boot systemd-nspawn containers and need root")
    testhost.interrupt_on_sigterm()
    with testhost.session_directory() as directory:
        yield directory


@pytest.fixture(scope="session")
def shared_hosts(testhost_session):
    """A run directory for hosts that several tests share; inventory/testhost.py does not
    list them, so a test's deploy never touches them."""
    with testhost.session_directory("shared", export=False) as directory:
        yield directory


@pytest.fixture
def boot_host(testhost_session):
    """Boot a fresh Debian 12 host by name; the test's hosts are shut down when it ends,
    so inventory/testhost.py lists exactly the hosts of the running test."""
    booted: list[testhost.TestHost] = []

    def boot(name: str, own_network: bool = False) -> testhost.TestHost:
        host = testhost.boot(name, log=lambda message: print(message, flush=True), own_network=own_network)
        booted.append(host)
        return host

    yield boot
    for host in booted:
        testhost.shutdown(host)
