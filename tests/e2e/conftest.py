"""A deployed exchange server shared by the end-to-end tests of one session, with two
partners whose keys and passwords the tests hold."""

from __future__ import annotations

import contextlib
import json
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from passlib.hash import sha512_crypt

from exchange import aging, paths
from exchange.policy import load_policy
from roles import REPO
from tests import testhost
from tests.messaging import SmsGateway, SmtpServer, make_ca
from tests.pyinfra_run import pyinfra

PARTNERS = ("alice-clinic", "bob-hospital")


@dataclass
class PartnerLogin:
    name: str
    password: str
    key: Path


@dataclass
class Exchange:
    host: testhost.TestHost
    inventory: Path
    partners_file: Path
    logins: dict[str, PartnerLogin]
    initial_password_fields: dict[str, str] | None = None
    initial_aging: dict[str, str] | None = None  # min:max:inactive as the deploy left them

    def deploy(self, *extra: str) -> subprocess.CompletedProcess:
        return pyinfra("-y", *extra, str(self.inventory), "deploy.py")

    def write_partners(self, partners: list[dict]) -> None:
        self.partners_file.write_text(yaml.safe_dump({"partners": partners}))

    def set_password(self, name: str, password: str) -> None:
        # Set as root with a ready hash, as the staff tool does (with the policy's aging), but
        # not expired; PAM rules apply to changes.
        chage = aging.chage(
            aging.wanted("partner", password_set=True, policy=load_policy(REPO / "policies.yaml").policy)
        )
        self.host.ssh(
            f"usermod -p '{sha512_crypt.hash(password)}' {name} && {shlex.join(chage)} --lastday $(( $(date +%s) / 86400 )) {name} "
            f"&& faillock --dir {paths.FAILLOCK_DIR} --user {name} --reset"
        )


def ssh_key(directory: Path, name: str) -> Path:
    """A fresh Ed25519 key pair for `name` in `directory`; the private key's path."""
    key = directory / f"{name}_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)], check=True)
    return key


def public_key(key: Path) -> str:
    return key.with_suffix(".pub").read_text().strip()


def audit_events(host: testhost.TestHost, event: str) -> list[dict]:
    text = host.ssh(f'grep -h \'"event": "{event}"\' {paths.AUDIT_LOG} || true').stdout
    return [json.loads(line) for line in text.splitlines()]


def write_inventory(directory: Path, hosts: list[testhost.TestHost], **data) -> Path:
    """An inventory for test hosts, with host data of the test's choosing."""
    entries = [(host.name, {**host.host_data(), **data}) for host in hosts]
    path = directory / f"inventory_{'_'.join(h.name for h in hosts)}.py".replace("-", "_")
    path.write_text(f"hosts = {entries!r}\n")
    return path


def partner_entry(name: str, key: Path | None = None, present: bool = True) -> dict:
    entry = {
        "name": name,
        "organisation": f"{name} radiology",
        "email": f"{name}@partner.example",
        "phone": "+31612345678",
        "present": present,
    }
    if key:
        entry["public_keys"] = [public_key(key)]
    return entry


def make_exchange(host: testhost.TestHost, directory: Path, **host_data) -> Exchange:
    logins = {}
    for name in PARTNERS:
        logins[name] = PartnerLogin(name=name, password=f"Tulip-{name}-Harbour-42!", key=ssh_key(directory, name))
    partners_file = directory / "partners.yaml"
    exchange = Exchange(
        host, write_inventory(directory, [host], partners_file=str(partners_file), **host_data), partners_file, logins
    )
    exchange.write_partners([partner_entry(name, logins[name].key) for name in PARTNERS])
    result = exchange.deploy()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    exchange.initial_password_fields = {
        name: host.ssh(f"getent shadow {name} | cut -d: -f2").stdout.strip() for name in PARTNERS
    }
    exchange.initial_aging = {
        name: host.ssh(f"getent shadow {name} | cut -d: -f4,5,7").stdout.strip() for name in PARTNERS
    }
    for login in logins.values():
        exchange.set_password(login.name, login.password)
    return exchange


@contextlib.contextmanager
def deployed_host(name: str, hosts: Path, directory: Path, **host_data):
    """A fresh host in `hosts`, deployed by make_exchange; shut down afterwards."""
    host = testhost.boot(name, log=lambda message: print(message, flush=True), directory=hosts)
    try:
        yield make_exchange(host, directory, **host_data)
    finally:
        testhost.shutdown(host)


def module_host_name(request) -> str:
    """A host name after the test module: test_partner_lifecycle -> partner-lifecycle."""
    return request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_").replace("_", "-")[:40]


@pytest.fixture(scope="session")
def exchange(shared_hosts, tmp_path_factory) -> Exchange:
    """One deployed server for the tests that do not change its accounts."""
    with deployed_host("exchange", shared_hosts, tmp_path_factory.mktemp("exchange")) as deployed:
        yield deployed


@pytest.fixture(scope="module")
def own_exchange(shared_hosts, tmp_path_factory, request) -> Exchange:
    """A deployed server of the test module's own, for tests that lock or remove accounts."""
    name = module_host_name(request)
    with deployed_host(name, shared_hosts, tmp_path_factory.mktemp(name)) as deployed:
        yield deployed


# Where a test host keeps the CA of the test's own mail relay (it verifies the relay's certificate).
CA_ON_HOST = f"{paths.CONFIG_DIR}/test-relay-ca.pem"


@dataclass
class Relay:
    smtp: SmtpServer
    sms: SmsGateway
    ca: Path


@pytest.fixture(scope="module")
def relay(tmp_path_factory):
    """A real SMTP server (STARTTLS, AUTH, a certificate of its own test CA) and SMS gateway on loopback."""
    ca, cert, key = make_ca(tmp_path_factory.mktemp("relay"))
    smtp, sms = SmtpServer(cert=cert, key=key).start(), SmsGateway().start()
    yield Relay(smtp, sms, ca)
    smtp.stop()
    sms.stop()
