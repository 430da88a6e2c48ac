"""The shipped inventories hold only host data keys the deploy knows."""

import runpy

from roles import REPO
from roles.settings import host_settings


def test_example_inventory_is_valid_host_data():
    groups = runpy.run_path(str(REPO / "inventory/example.py"))
    hosts, group_data = groups["exchange_servers"]
    for name, data in hosts:
        settings = host_settings(name, {**group_data, **data})
        assert settings.partners_file and settings.auditors and settings.staff
