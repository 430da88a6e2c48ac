"""pyinfra reads this before the inventory: a bad policy stops here, before any host is touched."""

import sys

from exchange.policy import PolicyError
from roles import deploy_policy

REQUIRE_PYINFRA_VERSION = ">=3.2,<4"

try:
    deploy_policy()
except PolicyError as error:
    sys.exit(f"policy error, nothing was deployed:\n{error}")
