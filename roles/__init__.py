"""pyinfra roles: one @deploy() per concern, applied in order by deploy.py."""

import os
from pathlib import Path

from exchange.policy import POLICY_ENV, LoadedPolicy, load_policy

REPO = Path(__file__).resolve().parent.parent


def deploy_policy() -> LoadedPolicy:
    """The policy this deploy enforces: $EXCHANGE_POLICY, else the repository's policies.yaml."""
    return load_policy(os.environ.get(POLICY_ENV) or REPO / "policies.yaml")
