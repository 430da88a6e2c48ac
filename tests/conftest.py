import os

import pytest

from tests import testhost


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
