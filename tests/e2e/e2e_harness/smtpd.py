"""A private OpenSMTPD (Debian 6.8.0p2, filter protocol 0.6) for one test module.

    server = SmtpdServer(runtime, filters=[runtime.example("add_header.py")])
    server.start()          # namespace + DNS server + smtpd, banner checked
    with server.smtp() as c: ...
    server.maildir.wait_for(tok)
    server.stop()           # smtpd, DNS server, leftovers, namespace: all by PID

Everything runs in its own namespace (see netns.py): smtpd listens on
127.0.0.1:25 (and :587 for submission with STARTTLS + AUTH if asked), the DNS
server on 127.0.0.1:53, the maildir and logs are under the session dir.  The
generated smtpd.conf follows shared/rig/start-smtpd.sh:

    pki e2e cert "…/tls/cert.pem"          (only with tls/submission)
    pki e2e key "…/tls/key.pem"
    table creds file:…/creds                (user e2euser / e2epass)
    table vusers { "@" = "nobody" }
    filter "f1" proc-exec "CMD1"
    filter "f2" proc-exec "CMD2"
    filter "e2echain" chain { "f1", "f2" }
    listen on 127.0.0.1 port 25 hostname mx.e2e.test [tls pki e2e] filter "e2echain"
    listen on 127.0.0.1 port 587 hostname mx.e2e.test tls-require pki e2e auth <creds> filter "e2echain"
    action "deliver" maildir "…/mail" virtual <vusers>
    match from any for domain "e2e.test" action "deliver"

Only ``e2e.test`` is accepted (anything else: ``550 Invalid recipient``);
there is no relay action, so smtpd never tries to deliver elsewhere.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from smtpd_filter_sdk.testing.dnsserver import DNSServerProcess, Zone

from .mail import Maildir, NsSMTP
from .netns import Namespace, stop_pid
from .prereq import SMTPD, PrerequisiteError
from .runtime import Runtime
from .services import Service

DOMAIN = "e2e.test"
HOSTNAME = "mx.e2e.test"
AUTH_USER, AUTH_PASSWORD = "e2euser", "e2epass"
CLEAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"

#: every SmtpdServer currently started (for failure reports)
ACTIVE: list["SmtpdServer"] = []


def default_zone() -> Zone:
    """What the namespace's DNS answers unless a test says otherwise."""
    return (
        Zone(ttl=60)
        .add_ptr("127.0.0.1", "localhost")
        .add_ptr("::1", "localhost")
        .add("localhost", "A", "127.0.0.1")
        .add("localhost", "AAAA", "::1")
        .add(HOSTNAME, "A", "127.0.0.1")
        .add(DOMAIN, "MX", f"10 {HOSTNAME}")
    )


@dataclass(frozen=True)
class ProcExec:
    """A filter declaration with options: ``proc-exec "CMD" [user U] [group G] [chroot D]``."""

    command: str
    user: str | None = None
    group: str | None = None
    chroot: str | None = None

    def spec(self) -> str:
        if '"' in self.command or "\n" in self.command:
            raise ValueError(f"proc-exec command cannot contain a double quote or newline: {self.command!r}")
        s = f'proc-exec "{self.command}"'
        if self.user:
            s += f" user {self.user}"
        if self.group:
            s += f" group {self.group}"
        if self.chroot:
            s += f' chroot "{self.chroot}"'
        return s


class SmtpdServer:
    def __init__(
        self,
        runtime: Runtime,
        filters: Sequence[str | ProcExec] = (),
        *,
        tls: bool = False,
        submission: bool = False,
        zone: Zone | None = None,
        extra_conf: str = "",
        ipv6: bool = False,
        verbose: bool = False,
        trace: str | None = None,
        port: int = 25,
        submission_port: int = 587,
        start_timeout: float = 20.0,
        services: Sequence[Service] = (),
        share_net_with: "SmtpdServer | None" = None,
    ) -> None:
        self.runtime = runtime
        self.filters = [f if isinstance(f, ProcExec) else ProcExec(f) for f in filters]
        self.tls, self.submission = tls, submission
        self.zone = zone if zone is not None else default_zone()
        self.extra_conf, self.ipv6, self.verbose, self.trace = extra_conf, ipv6, verbose, trace
        self.port, self.submission_port = port, submission_port
        self.start_timeout = start_timeout
        self.dir = runtime.new_dir("smtpd")
        self.conf_path = self.dir / "smtpd.conf"
        self.log_path = self.dir / "smtpd.log"
        self.maildir = Maildir(self.dir / "mail")
        #: world-writable directory a filter may write files to (it runs as opensmtpd)
        self.scratch = self.dir / "scratch"
        #: daemons (redis, rspamd: services.py) started in the namespace after
        #: the DNS server and before smtpd, stopped after smtpd
        self.services = list(services)
        #: a second smtpd on the same loopback as ``share_net_with`` (its own
        #: mount namespace, queue and control socket; its port must differ):
        #: it uses the other's DNS server and services
        self.share_net_with = share_net_with
        if share_net_with is not None and port == share_net_with.port:
            raise ValueError(f"port {port} is taken by the smtpd whose network this one shares")
        self.ns = Namespace(self.dir / "ns", share_net_with=share_net_with.ns if share_net_with else None)
        self.dns = (
            share_net_with.dns
            if share_net_with is not None
            else DNSServerProcess(self.zone, self.dir / "dns", python=runtime.python, port=53, argv_prefix=[])
        )
        self.proc: subprocess.Popen | None = None
        #: (pid, cmdline) of processes still running in the namespace 3 s after
        #: smtpd stopped (filters that did not exit on EOF), filled by stop()
        self.leftovers: list[tuple[int, str]] = []
        #: a test that makes smtpd exit on purpose sets this, so that the
        #: smtpd_factory teardown does not report the death as a failure
        self.expect_exit = False
        #: set by stop(): was smtpd still running when we came to stop it?
        self.alive_at_stop: bool | None = None

    # ------------------------------------------------------------------ config
    def _tls_assets(self) -> None:
        tls = self.dir / "tls"
        tls.mkdir(mode=0o700)
        # An ECDSA key: Debian's 6.8.0p2 + OpenSSL 3 cannot use RSA keys even
        # with the shim (rig/start-smtpd.sh).
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-nodes", "-days", "30", "-subj", f"/CN={HOSTNAME}",
                "-addext", f"subjectAltName=DNS:{HOSTNAME},IP:127.0.0.1",
                "-keyout", str(tls / "key.pem"), "-out", str(tls / "cert.pem"),
            ],
            check=True, capture_output=True,
        )
        (tls / "key.pem").chmod(0o600)
        encrypt = "/usr/libexec/opensmtpd/encrypt"
        hashed = subprocess.run([encrypt, AUTH_PASSWORD], check=True, capture_output=True, text=True).stdout.strip()
        creds = self.dir / "creds"
        creds.write_text(f"{AUTH_USER} {hashed}\n")
        creds.chmod(0o640)
        shutil.chown(creds, "root", "opensmtpd")

    @property
    def cert_path(self) -> Path:
        return self.dir / "tls" / "cert.pem"

    def render_conf(self) -> str:
        lines = [f"# generated by tests/e2e for {self.dir.name}"]
        need_pki = self.tls or self.submission
        if need_pki:
            lines += [
                f'pki e2e cert "{self.dir}/tls/cert.pem"',
                f'pki e2e key "{self.dir}/tls/key.pem"',
                f"table creds file:{self.dir}/creds",
            ]
        lines.append('table vusers { "@" = "nobody" }')
        names = []
        for i, f in enumerate(self.filters, 1):
            lines.append(f'filter "f{i}" {f.spec()}')
            names.append(f'"f{i}"')
        attach = ""
        if names:
            lines.append(f'filter "e2echain" chain {{ {", ".join(names)} }}')
            attach = 'filter "e2echain"'
        tls = "tls pki e2e" if self.tls else ""
        addrs = ["127.0.0.1"] + (["::1"] if self.ipv6 else [])
        for a in addrs:
            lines.append(f"listen on {a} port {self.port} hostname {HOSTNAME} {tls} {attach}".rstrip())
        if self.submission:
            lines.append(
                f"listen on 127.0.0.1 port {self.submission_port} hostname {HOSTNAME} "
                f"tls-require pki e2e auth <creds> {attach}".rstrip()
            )
        lines.append(f'action "deliver" maildir "{self.maildir.path}" virtual <vusers>')
        lines.append(f'match from any for domain "{DOMAIN}" action "deliver"')
        if self.extra_conf:
            lines.append(self.extra_conf)
        return "\n".join(lines) + "\n"

    # --------------------------------------------------------------- lifecycle
    def start(self) -> "SmtpdServer":
        ACTIVE.append(self)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        mail = self.maildir.path
        mail.mkdir(mode=0o755)
        shutil.chown(mail, "nobody", "nogroup")  # delivery runs as the virtual user
        self.scratch.mkdir()
        self.scratch.chmod(0o1777)
        if self.tls or self.submission:
            self._tls_assets()
        self.conf_path.write_text(self.render_conf())
        self.conf_path.chmod(0o644)

        self.ns.start()
        if self.share_net_with is None:
            self.dns.argv_prefix = self.ns.nsenter_argv()
            self.dns.start()
        for svc in self.services:
            svc.start(self.ns, self.dir)

        check = self.ns.run([SMTPD, "-n", "-f", str(self.conf_path)], env=self._env(preload=False))
        if check.returncode != 0:
            raise RuntimeError(f"smtpd -n rejects the generated config:\n{self.render_conf()}\n{check.stdout}{check.stderr}")

        argv = [SMTPD, "-d", "-f", str(self.conf_path)]
        if self.verbose:
            argv.insert(2, "-v")
        if self.trace:
            argv[2:2] = ["-T", self.trace]
        with open(self.log_path, "ab") as log:
            # env -i equivalent: filters inherit smtpd's environment verbatim
            self.proc = self.ns.popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=self._env(preload=self.tls or self.submission), cwd="/"
            )
        deadline = time.monotonic() + self.start_timeout
        ports = [self.port] + ([self.submission_port] if self.submission else [])
        while not all(self.ns.listening(p) for p in ports):
            if self.proc.poll() is not None:
                raise RuntimeError(f"smtpd exited with {self.proc.returncode} at start-up:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"smtpd does not listen on {ports} after {self.start_timeout}s:\n{self.log_tail()}")
            time.sleep(0.02)
        # The port opens before the filters are ready; the banner comes after.
        remaining = max(1.0, deadline - time.monotonic())
        try:
            banner = self.banner(timeout=remaining)
        except OSError as e:
            raise RuntimeError(f"no banner from smtpd within {remaining:.0f}s ({e!r}):\n{self.log_tail()}") from e
        if not banner.startswith("220 "):
            raise RuntimeError(f"unexpected banner {banner!r}:\n{self.log_tail()}")

    def _env(self, preload: bool) -> dict[str, str]:
        env = {"PATH": CLEAN_PATH, "LANG": "C.UTF-8"}
        if preload:
            # Debian 6.8.0p2 + OpenSSL 3: no TLS handshake works without it;
            # the shim removes itself from the env before filters are spawned.
            env["LD_PRELOAD"] = str(self.runtime.tlsfix())
        return env

    def stop(self) -> list[tuple[int, str]]:
        """Stop smtpd, then the DNS server, then whatever is left, then the namespace."""
        if self.proc is not None:
            self.alive_at_stop = self.proc.poll() is None
            if self.alive_at_stop:
                stop_pid(self.proc.pid, popen=self.proc)
        for svc in reversed(self.services):
            svc.stop()
        own_dns = self.share_net_with is None
        if self.ns.alive():
            dns_pid = self.dns.pid if own_dns and self.dns.alive() else None
            # filters get EOF when smtpd goes; give them a moment to exit on their own
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and [p for p in self.ns.pids() if p != dns_pid]:
                time.sleep(0.05)
            self.leftovers = self.ns.kill_leftovers(keep=[dns_pid] if dns_pid else [])
        if own_dns:
            self.dns.stop()
        self.ns.stop()
        if self in ACTIVE:
            ACTIVE.remove(self)
        return self.leftovers

    def __enter__(self) -> "SmtpdServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- clients
    def smtp(
        self,
        port: int | None = None,
        timeout: float = 30.0,
        local_hostname: str = "client.e2e.test",
        host: str = "127.0.0.1",
    ) -> NsSMTP:
        """A connected smtplib client (banner read) inside the namespace."""
        return NsSMTP(self.ns, host, port or self.port, timeout=timeout, local_hostname=local_hostname)

    def submission_client(self, timeout: float = 30.0) -> NsSMTP:
        return self.smtp(self.submission_port, timeout=timeout)

    def connect(self, port: int | None = None, timeout: float = 30.0):
        """A raw connected TCP socket inside the namespace."""
        return self.ns.create_connection(("127.0.0.1", port or self.port), timeout)

    def banner(self, port: int | None = None, timeout: float = 10.0) -> str:
        """Open a new session, return its greeting line, QUIT."""
        with self.connect(port, timeout) as s:
            f = s.makefile("rb")
            line = f.readline(4096).decode(errors="replace").rstrip("\r\n")
            try:
                s.sendall(b"QUIT\r\n")
                f.readline(4096)
            except OSError:
                pass
            return line

    # ------------------------------------------------------------- inspection
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def assert_alive(self) -> None:
        """smtpd still runs and a new session gets a 220 banner."""
        assert self.alive(), f"smtpd is gone (exit {self.proc and self.proc.returncode}):\n{self.log_tail()}"
        try:
            b = self.banner(timeout=10)
        except OSError as e:
            raise AssertionError(f"smtpd runs but a new session gets no banner ({e!r}):\n{self.log_tail()}") from e
        assert b.startswith("220 "), f"new session got {b!r} instead of a 220 banner:\n{self.log_tail()}"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n: int = 40) -> str:
        lines = self.log().splitlines()[-n:]
        return f"--- last {len(lines)} lines of {self.log_path} ---\n" + "\n".join(lines)

    def log_lines(self, pattern: str) -> list[str]:
        rx = re.compile(pattern)
        return [ln for ln in self.log().splitlines() if rx.search(ln)]

    def wait_log(self, pattern: str, timeout: float = 10.0) -> str:
        """Wait until a smtpd log line matches ``pattern``; return it."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.log_lines(pattern)
            if found:
                return found[-1]
            if time.monotonic() > deadline:
                raise AssertionError(f"no smtpd log line matching {pattern!r} in {timeout}s:\n{self.log_tail()}")
            time.sleep(0.05)


def prerequisites_for(server_kind: str) -> None:
    """Raise PrerequisiteError if a server with TLS cannot be built here."""
    if server_kind == "tls":
        if shutil.which("gcc") is None:
            raise PrerequisiteError("gcc not found: the TLS shim cannot be built (apt-get install gcc libc6-dev)")
        if not os.access("/usr/libexec/opensmtpd/encrypt", os.X_OK):
            raise PrerequisiteError("/usr/libexec/opensmtpd/encrypt not found (opensmtpd package)")


def server_pool(runtime: Runtime, server_class: type[SmtpdServer] = SmtpdServer):
    """The body of a module-scoped smtpd factory fixture: ``yield from
    server_pool(...)`` yields ``make(filters, **kw)``; at teardown every server
    is stopped by PID and the module fails if smtpd died under it or a filter
    outlived smtpd (filters must exit on EOF)."""
    import pytest

    from .prereq import PrerequisiteError, skip_or_fail

    servers: list[SmtpdServer] = []

    def make(filters=(), **kw) -> SmtpdServer:
        if kw.get("tls") or kw.get("submission"):
            try:
                prerequisites_for("tls")
            except PrerequisiteError as e:
                skip_or_fail(str(e))
        missing = [p for svc in kw.get("services", ()) for p in svc.missing()]
        if missing:
            skip_or_fail("; ".join(missing))
        server = server_class(runtime, filters, **kw)
        servers.append(server)
        try:
            return server.start()
        except BaseException:
            server.expect_exit = True  # the caller gets the error; no second report
            raise

    yield make

    problems = []
    for s in reversed(servers):
        was_started = s.proc is not None
        leftovers = s.stop() if s.alive_at_stop is None else s.leftovers
        if not was_started:
            continue
        if s.alive_at_stop is False and not s.expect_exit:
            problems.append(f"smtpd {s.dir.name} died during the module:\n{s.log_tail()}")
        if leftovers:
            listing = "\n".join(f"  {pid}: {cmd}" for pid, cmd in leftovers)
            problems.append(
                f"processes still running 3 s after smtpd {s.dir.name} stopped "
                f"(filters must exit on EOF; they were killed):\n{listing}"
            )
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)
