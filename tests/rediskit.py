"""A private redis-server on a free loopback port for unit tests, stopped by PID.

    with RedisProcess() as r:       # 127.0.0.1:<free port>, no persistence
        r.url                       # redis://127.0.0.1:PORT/0
        r.stop(); r.start()         # kill it mid-test and bring it back (same port)

``redis_or_skip()`` skips when redis-server is not installed (fails under
``SMTPD_FILTERS_REQUIRE_E2E=1``, as the e2e tests do).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

import pytest

REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"


def redis_or_skip() -> None:
    if not os.access(REDIS, os.X_OK):
        msg = "redis-server not found (apt-get install redis-server)"
        if os.environ.get("SMTPD_FILTERS_REQUIRE_E2E") == "1":
            pytest.fail(msg)
        pytest.skip(msg)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisProcess:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> "RedisProcess":
        self.proc = subprocess.Popen(
            [REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--daemonize", "no", "--logfile", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/tmp",
        )
        end = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > end:
                self.stop()
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # SIGKILL: as abrupt as a crash
            self.proc.wait(5)
        self.proc = None

    def __enter__(self) -> "RedisProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
