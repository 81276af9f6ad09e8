"""A real redis-server on a free port, which a test may stop and start again (same port,
empty state) to see the edge fail open and recover. Without redis-server the Redis tests
skip, except in CI (CI=true), where a missing service fails them."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from devstack.processes import free_port, wait_until


class RedisServer:
    def __init__(self, binary: str) -> None:
        self._binary = binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        self._proc = subprocess.Popen(
            [self._binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: self.cli("ping") == "PONG", timeout_s=10, what="redis")
        return self

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(10)
            self._proc = None

    def cli(self, *command: str) -> str:
        result = subprocess.run(
            ["redis-cli", "-p", str(self.port), *command], capture_output=True, text=True
        )
        return result.stdout.strip() if result.returncode == 0 else ""


def redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None or shutil.which("redis-cli") is None:
        why = "redis-server is not installed (scripts/test_services.sh installs it as root)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{why}: in CI a missing service is a failure, not a skip")
        pytest.skip(why)
    return binary


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(redis_binary()).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url
