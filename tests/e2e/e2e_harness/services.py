"""Redis and rspamd inside a test's namespace, loopback only (shared/rig/start-rspamd.sh).

A service is started in a started :class:`~e2e_harness.netns.Namespace` and
stopped by PID.  Usually it is handed to the smtpd factory, which starts it
after the DNS server and before smtpd and stops it after smtpd::

    redis = RedisServer()                                   # 127.0.0.1:6379
    rspamd = RspamdServer(local_d={"dkim.conf": "..."})     # 11333/11334/11332
    server = smtpd_factory([cmd], services=[redis, rspamd])
    rspamd.check(message)                                   # POST /checkv2 -> dict
    redis.cli("KEYS", "*")

rspamd uses the stock ``/etc/rspamd/rspamd.conf`` with a private
``LOCAL_CONFDIR`` (nothing under /etc is touched): ``override.d`` binds the
normal worker to 127.0.0.1:11333, the controller to :11334 and the proxy to
:11332; ``local.d`` points redis at the module's redis, DNS at the
namespace's DNS server (127.0.0.1:53), turns fuzzy_check off (its servers are
remote), enables the GTUBE test patterns and milter_headers with
``skip_local = false`` (the clients are on 127.0.0.1).  ``local_d`` /
``override_d`` snippets are added to those; a snippet with the name of a
default one replaces it.  rspamd needs ~12 s to start on this machine.
"""

from __future__ import annotations

import http.client
import json
import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Mapping

from .netns import Namespace, stop_pid

RSPAMD = "/usr/bin/rspamd"
RSPAMD_CONF = "/etc/rspamd/rspamd.conf"
RSPAMD_USER = "_rspamd"
REDIS_USER = "redis"


def _missing(binary: str, user: str, package: str) -> list[str]:
    problems = []
    if shutil.which(binary) is None and not os.access(binary, os.X_OK):
        problems.append(f"{binary} not found (apt-get install {package})")
    try:
        pwd.getpwnam(user)
    except KeyError:
        problems.append(f"user {user!r} missing (created by the {package} package)")
    return problems


def _tail(path: Path, n: int) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return f"(no {path})"
    return f"--- last {len(lines)} lines of {path} ---\n" + "\n".join(lines)


class Service:
    """One daemon in a namespace: ``start(ns, workdir)``, ``stop()`` by PID."""

    name = "service"
    ns: Namespace | None = None
    proc: subprocess.Popen | None = None
    log_path: Path

    @staticmethod
    def missing() -> list[str]:
        """What this machine lacks to run the service (empty: nothing)."""
        return []

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, ns: Namespace, workdir: Path) -> "Service":
        raise NotImplementedError

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc.pid, timeout=10, popen=self.proc)

    def log_tail(self, n: int = 40) -> str:
        return _tail(self.log_path, n)

    def _launch(self, argv: list[str], workdir: Path, ready, what: str, timeout: float) -> None:
        """Start ``argv`` in the namespace (same PID: setpriv/nsenter exec in
        place), wait until ``ready()`` is true; stop it and raise if it dies or
        times out."""
        assert self.ns is not None
        with open(self.log_path, "ab") as log:
            self.proc = self.ns.popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=str(workdir),
                                      env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"})
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{what} exited with {self.proc.returncode} at start-up:\n{self.log_tail()}")
            try:
                if ready():
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{what} not ready after {timeout:.0f}s:\n{self.log_tail()}")
            time.sleep(0.1)


class RedisServer(Service):
    """``redis-server`` as user redis on ``127.0.0.1:port``, no persistence."""

    name = "redis"

    def __init__(self, port: int = 6379, start_timeout: float = 20.0) -> None:
        self.port = port
        self.start_timeout = start_timeout
        self.dir: Path | None = None

    @staticmethod
    def missing() -> list[str]:
        return _missing("redis-server", REDIS_USER, "redis-server") + _missing("redis-cli", REDIS_USER, "redis-tools")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, ns: Namespace, workdir: Path) -> "RedisServer":
        self.ns = ns
        self.dir = workdir / f"redis-{self.port}"
        self.dir.mkdir(mode=0o755)
        shutil.chown(self.dir, REDIS_USER, REDIS_USER)
        self.log_path = self.dir / "redis.log"
        argv = [
            "setpriv", "--reuid", REDIS_USER, "--regid", REDIS_USER, "--init-groups", "--",
            "redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
            "--appendonly", "no", "--dir", str(self.dir), "--daemonize", "no", "--logfile", "",
        ]
        self._launch(argv, self.dir, lambda: self.cli("PING") == "PONG", f"redis-server on {self.address}",
                     self.start_timeout)
        return self

    def cli(self, *args: str) -> str:
        """``redis-cli ARGS`` against this server, inside the namespace; its stdout, stripped."""
        assert self.ns is not None
        r = self.ns.run(["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), *args], timeout=10)
        if r.returncode != 0:
            raise OSError(f"redis-cli {args} failed: {r.stderr.strip()}")
        return r.stdout.strip()


class RspamdServer(Service):
    """rspamd (stock config + private LOCAL_CONFDIR) in the namespace."""

    name = "rspamd"

    def __init__(
        self,
        local_d: Mapping[str, str] | None = None,
        override_d: Mapping[str, str] | None = None,
        *,
        redis: str = "127.0.0.1:6379",
        normal_port: int = 11333,
        controller_port: int = 11334,
        proxy_port: int = 11332,
        start_timeout: float = 90.0,
    ) -> None:
        self.extra_local_d = dict(local_d or {})
        self.extra_override_d = dict(override_d or {})
        self.redis = redis
        self.normal_port, self.controller_port, self.proxy_port = normal_port, controller_port, proxy_port
        self.start_timeout = start_timeout
        self.dir: Path | None = None

    @staticmethod
    def missing() -> list[str]:
        problems = _missing(RSPAMD, RSPAMD_USER, "rspamd")
        if not os.path.exists(RSPAMD_CONF):
            problems.append(f"{RSPAMD_CONF} not found (apt-get install rspamd)")
        return problems

    @property
    def url(self) -> str:
        """The normal worker (what filter-rspamd's ``-url`` points at)."""
        return f"http://127.0.0.1:{self.normal_port}"

    def local_d(self) -> dict[str, str]:
        d = {
            "options.inc": (
                'dns {\n  nameserver = ["127.0.0.1:53"];\n  timeout = 1s;\n  retransmits = 1;\n}\n'
                "# GTUBE test strings: reject / add header / rewrite subject / no action\n"
                "enable_test_patterns = true;\n"
            ),
            # milter_headers makes rspamd return milter.add_headers; the clients are local
            "milter_headers.conf": (
                "skip_local = false;\nskip_authenticated = false;\n"
                'use = ["x-spamd-result", "x-rspamd-server", "x-rspamd-queue-id", '
                '"authentication-results", "x-spam-level", "x-spam-status"];\n'
            ),
            "redis.conf": f'servers = "{self.redis}";\n',
            "fuzzy_check.conf": "enabled = false;\n",
            "logging.inc": 'type = "file";\nfilename = "$LOGDIR/rspamd.log";\nlevel = "info";\n',
        }
        d.update(self.extra_local_d)
        return d

    def override_d(self) -> dict[str, str]:
        d = {
            "worker-normal.inc": f'bind_socket = "127.0.0.1:{self.normal_port}";\ncount = 1;\n',
            "worker-controller.inc": f'bind_socket = "127.0.0.1:{self.controller_port}";\ncount = 1;\n',
            "worker-proxy.inc": f'bind_socket = "127.0.0.1:{self.proxy_port}";\ncount = 1;\n',
        }
        d.update(self.extra_override_d)
        return d

    def start(self, ns: Namespace, workdir: Path) -> "RspamdServer":
        self.ns = ns
        r = self.dir = workdir / f"rspamd-{self.normal_port}"
        conf = r / "local"
        for sub, files in (("local.d", self.local_d()), ("override.d", self.override_d())):
            (conf / sub).mkdir(parents=True, mode=0o755)
            for name, text in files.items():
                (conf / sub / name).write_text(text)
        for sub in ("db", "run", "log"):
            (r / sub).mkdir(mode=0o755)
            shutil.chown(r / sub, RSPAMD_USER, RSPAMD_USER)
        for p in (r, conf, conf / "local.d", conf / "override.d"):
            p.chmod(0o755)
        self.log_path = r / "log" / "rspamd.log"
        self.stdout_path = r / "rspamd.stdout"
        argv = [
            RSPAMD, "-f", "-u", RSPAMD_USER, "-g", RSPAMD_USER, "-c", RSPAMD_CONF,
            f"--var=LOCAL_CONFDIR={conf}", f"--var=DBDIR={r / 'db'}",
            f"--var=RUNDIR={r / 'run'}", f"--var=LOGDIR={r / 'log'}",
        ]
        saved_log, self.log_path = self.log_path, self.stdout_path  # start-up errors go to stdout
        try:
            self._launch(argv, r, self._pong, "rspamd", self.start_timeout)
        finally:
            self.log_path = saved_log
        return self

    def log_tail(self, n: int = 40) -> str:
        return _tail(self.stdout_path, 10) + "\n" + _tail(self.log_path, n)

    def _pong(self) -> bool:
        # the controller answers once the workers are up; the normal worker must listen too
        assert self.ns is not None
        return self.request("GET", "/ping", port=self.controller_port)[1].strip() == b"pong" and self.ns.listening(
            self.normal_port
        )

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: Mapping[str, str] | None = None,
        *, port: int | None = None, timeout: float = 30.0,
    ) -> tuple[int, bytes]:
        """One HTTP request to rspamd from inside the namespace: (status, body)."""
        assert self.ns is not None
        ns = self.ns
        port = port or self.normal_port

        class _Conn(http.client.HTTPConnection):
            def connect(self) -> None:
                self.sock = ns.create_connection((self.host, self.port), self.timeout)

        c = _Conn("127.0.0.1", port, timeout=timeout)
        try:
            c.request(method, path, body=body, headers=dict(headers or {}))
            resp = c.getresponse()
            return resp.status, resp.read()
        finally:
            c.close()

    def check(self, message: bytes, headers: Mapping[str, str] | None = None) -> dict[str, Any]:
        """POST /checkv2 (what the filters send); rspamd's JSON answer."""
        status, body = self.request("POST", "/checkv2", message, headers)
        if status != 200:
            raise AssertionError(f"rspamd /checkv2 answered {status}: {body[:500]!r}")
        return json.loads(body)

    def stop(self) -> None:
        super().stop()
        # the main process stops its workers; wait until they are gone too
        if self.ns is not None and self.ns.alive():
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self._workers():
                time.sleep(0.05)

    def _workers(self) -> list[int]:
        assert self.ns is not None
        out = []
        for p in self.ns.pids():
            try:
                if Path(f"/proc/{p}/comm").read_text().startswith("rspamd"):
                    out.append(p)
            except OSError:
                pass
        return out
