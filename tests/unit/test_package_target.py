"""`exchange package` only into an account that can still log in: a locked or removed partner,
or an ended link, is refused with the reason and nothing is written."""

import datetime
import time
from pathlib import Path

import pytest

from exchange import observe
from exchange.dicom import package as package_module
from exchange.dicom.package import PackageError, download_folder
from exchange.layout import Layout
from exchange.policy import load_policy
from roles import REPO

POLICY = load_policy(REPO / "policies.yaml").policy
TODAY = int(time.time() // 86400)  # shadow's days


@pytest.fixture
def accounts(tmp_path, monkeypatch):
    """A shadow file and group membership as the deploy and the link tool leave them."""
    shadow = tmp_path / "shadow"
    shadow.write_text(
        "root:*:19000:0:99999:7:::\n"
        f"partner-open:$y$j9T$x:19990:1:90:14:30::\n"
        f"partner-locked:$y$j9T$x:19990:1:90:14:30:{TODAY}:\n"  # locked today by the deploy
        f"partner-dropped:$y$j9T$x:19990:1:90:14:30:{TODAY - 3}:\n"
        f"partner-later:$y$j9T$x:19990:1:90:14:30:{TODAY + 1}:\n"
        f"link-k7m2p9qa:$y$j9T$x:19995:0:99999:7::{TODAY + 5}:\n"
        f"link-ended22:$y$j9T$x:19990:0:99999:7::{TODAY}:\n"
    )
    read = observe.shadow
    monkeypatch.setattr(package_module.observe, "shadow", lambda: read(shadow))
    monkeypatch.setattr(Layout, "kind_of", lambda self, name: name.split("-", 1)[0] if "-" in name else None)
    ends = {"link-k7m2p9qa": datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=4)}
    monkeypatch.setattr(package_module, "link_end", lambda account: ends.get(account))
    return ends


def test_an_open_account_gets_its_download_folder(accounts):
    assert download_folder(POLICY, "partner-open") == Path(f"{POLICY.accounts.root}/partners/partner-open/download")
    assert download_folder(POLICY, "partner-later").name == "download"
    assert download_folder(POLICY, "link-k7m2p9qa").name == "download"


@pytest.mark.parametrize("name", ["partner-locked", "partner-dropped"])
def test_a_locked_or_removed_partner_is_refused(accounts, name):
    with pytest.raises(PackageError, match=rf"partner {name} is locked .*cannot log in; nothing was written"):
        download_folder(POLICY, name)


def test_an_ended_link_is_refused(accounts):
    with pytest.raises(PackageError, match=r"link link-ended22 has ended .*nothing was written"):
        download_folder(POLICY, "link-ended22")
    # Ended by its record's time, before its account's expiry day comes (and the purge).
    accounts["link-k7m2p9qa"] = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=1)
    with pytest.raises(PackageError, match=r"link link-k7m2p9qa has ended .*nothing was written"):
        download_folder(POLICY, "link-k7m2p9qa")
