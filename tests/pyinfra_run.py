"""Run the real pyinfra CLI against an inventory, from the repository root."""

import json
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYINFRA = REPO / ".venv/bin/pyinfra"


def pyinfra(*args: str, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(PYINFRA), *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        text=True,
        capture_output=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def changed_operations(inventory: str, deploy: str = "deploy.py", env: dict | None = None) -> dict[str, list[str]]:
    """Operation name -> hosts it would change, from a `--dry --json` run."""
    result = pyinfra("--dry", "--json", inventory, deploy, env=env)
    assert result.returncode == 0, result.stderr + result.stdout
    plan = json.loads(result.stdout)["plan"]
    assert plan, "the dry run planned no operation at all"
    return {op["name"]: op["hosts_with_change"] for op in plan}
