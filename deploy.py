"""Converge exchange servers to policies.yaml: `pyinfra inventory/<site>.py deploy.py`.

The roles run in this order on every host; each is one concern.
"""

import sys

from pyinfra import host

from roles.base import base
from roles.settings import HostSettingsError, host_settings

try:
    settings = host_settings(host.name, host.data.dict())
except HostSettingsError as error:
    sys.exit(f"inventory error, nothing was deployed:\n{error}")

base(settings)
