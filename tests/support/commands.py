"""The `tentman` command run as a user runs it, in a process of its own."""

from __future__ import annotations

import os
import subprocess
import sys


def tentman(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`tentman ARGS`, without this session's AIRFLOW_CONN_TENTMAN_DB unless `env_extra` gives one."""
    env = {k: v for k, v in os.environ.items() if k != "AIRFLOW_CONN_TENTMAN_DB"}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "tentman.cli", *args], capture_output=True, text=True, env=env)
