"""Test harnesses for filter authors: drive a filter like smtpd does, get its
decisions back, and fail on anything smtpd would die or stall on.

In-process, on a ``Filter`` object (fast, synchronous, any dialect)::

    from smtpd_filter_sdk.testing.harness import Harness

    h = Harness(f, dialect="0.6")
    s = h.session(src="192.0.2.1", rdns="mx.example.org")
    assert s.ehlo("localhost").decision == "reject"
    msg = s.send_message(from_="a@example.org", to=["b@example.net"], body=b"Hi\\n")
    assert msg.accepted and msg.headers["X-Checked"] == "yes"
    s.quit()

As a child process, exactly as smtpd runs it (``/bin/sh -c "exec CMD"``,
stdin and stdout on one AF_UNIX socketpair, stderr on another, a new session,
smtpd's near-empty environment)::

    with SubprocessHarness("python3 examples/add_header.py", env_extra={"PYTHONPATH": "."}) as h:
        s = h.session()
        ...
    print(h.stderr)        # what smtpd would log as "<name>: <line>"

Both check every line the filter writes the way smtpd would (see
``simulator.Lka``).  A FATAL or HANG finding raises ``FilterCheckFailed``
(an ``AssertionError``) at the step that caused it, unless ``fail_on`` says
otherwise; WARN findings are collected in ``h.findings``.
"""

from __future__ import annotations

import asyncio
import os
import selectors
import shlex
import signal
import socket
import subprocess
import time
from typing import Any, Callable, Iterable, Sequence

from ..filter import Filter
from ..log import Logger
from ..runtime import Engine
from ..session import Session
from .simulator import (
    FATAL,
    HANG,
    WARN,
    Action,
    Auth,
    Command,
    Connect,
    Data,
    Drop,
    Ehlo,
    FilterDecision,
    FilterGone,
    Finding,
    Helo,
    Idle,
    Mail,
    Message,
    MessageResult,
    Noop,
    Quit,
    Rcpt,
    Rset,
    SimSession,
    Simulator,
    SmtpdGone,
    StartTLS,
    Step,
    message_lines,
    parse_result_line,
    split_lines,
)

__all__ = [
    "FATAL",
    "HANG",
    "WARN",
    "EngineTransport",
    "FilterCheckFailed",
    "Harness",
    "HarnessSession",
    "ProcessTransport",
    "SMTPD_ENV",
    "SubprocessHarness",
    "decisions_in",
]

#: The environment smtpd gives a filter when started by an init system
#: (filter-environment.meta.txt): PATH and LANG, nothing else.  An inherited
#: PYTHONUNBUFFERED would hide a missing flush.
SMTPD_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


class FilterCheckFailed(AssertionError):
    """smtpd would exit or stall because of the filter."""

    def __init__(self, findings: Sequence[Finding], transcript: Sequence[str] = ()) -> None:
        self.findings = list(findings)
        text = "\n".join(f.format() for f in findings)
        if transcript:
            text += "\n--- transcript (last lines) ---\n" + "\n".join(transcript[-25:])
        super().__init__(text)


def decisions_in(lines: Iterable[bytes], dialect: str = "0.6") -> list[FilterDecision]:
    """The decisions in a list of raw filter output lines."""
    token_first = dialect == "0.4"
    out = []
    for line in lines:
        parsed = parse_result_line(line, token_first)
        if parsed is not None:
            out.append(parsed[2])
    return out


# --------------------------------------------------------------------------
# Transports


class EngineTransport:
    """The filter in-process: the SDK's ``Engine`` on a private event loop."""

    def __init__(self, filt: Filter, on_stderr: Callable[[str], None] | None = None) -> None:
        self.filter = filt
        self.stderr: list[str] = []
        self._on_stderr = on_stderr
        self._saved_log = filt.log
        filt.log = Logger(filt.name, write=self._write_log)
        self.loop = asyncio.new_event_loop()
        self.engine = Engine(filt, loop=self.loop)
        self.after_eof: list[bytes] = []  # lines written after close() (EOF)
        self._partial = b""

    def _write_log(self, data: bytes) -> None:
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", "backslashreplace")
            self.stderr.append(line)
            if self._on_stderr:
                self._on_stderr(line)

    def send(self, data: bytes) -> None:
        self.engine.feed(data)

    def _take(self) -> list[bytes]:
        return self.engine.take_lines()

    def _pending(self) -> list[asyncio.Task[Any]]:
        return [t for t in asyncio.all_tasks(self.loop) if not t.done()]

    def recv(self, timeout: float) -> list[bytes]:
        if not self.engine.out and self._pending():
            self.loop.run_until_complete(self._wait(timeout))
        return self._take()

    async def _wait(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        me = asyncio.current_task()
        while not self.engine.out:
            tasks = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
            remaining = deadline - loop.time()
            if not tasks or remaining <= 0:
                return
            await asyncio.wait(tasks, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)

    @property
    def idle(self) -> bool:
        return not self.engine.out and not self._pending()

    def __del__(self) -> None:  # a harness the test did not close
        try:
            if not self.loop.is_closed() and not self.loop.is_running():
                self.close()
        except Exception:  # noqa: BLE001 - never raise from a finalizer
            pass

    def close(self) -> None:
        """EOF, as the runtime sees it: every handler still running finishes
        (under its deadline) and what it writes lands in ``after_eof``."""
        if self.loop.is_closed():
            return
        self.engine.end_of_input()
        self.loop.run_until_complete(self.engine.drain())
        self.after_eof = self.engine.take_lines()
        self.engine.eof()
        pending = self._pending()
        for task in pending:
            task.cancel()
        if pending:
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.run_until_complete(self.engine.shutdown())
        self.loop.close()
        self.filter.log = self._saved_log


class ProcessTransport:
    """The filter as a child process, started the way smtpd starts it:
    ``/bin/sh -c "exec CMD"``, stdin and stdout on one AF_UNIX socketpair,
    stderr on a second one, a new session, and (by default) only PATH and
    LANG in the environment."""

    def __init__(
        self,
        command: str | Sequence[str],
        *,
        env: dict[str, str] | None = None,
        env_extra: dict[str, str] | None = None,
        cwd: str | None = None,
        on_stderr: Callable[[str], None] | None = None,
        exit_timeout: float = 3.0,
    ) -> None:
        self.command = command if isinstance(command, str) else shlex.join(command)
        environment = dict(SMTPD_ENV if env is None else env)
        environment.update(env_extra or {})
        self.exit_timeout = exit_timeout
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        err_ours, err_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.proc = subprocess.Popen(
                ["/bin/sh", "-c", "exec " + self.command],
                stdin=theirs.fileno(),
                stdout=theirs.fileno(),
                stderr=err_theirs.fileno(),
                env=environment,
                cwd=cwd,
                start_new_session=True,  # smtpd calls setsid() for its filters
                close_fds=True,
            )
        finally:
            theirs.close()
            err_theirs.close()
        ours.setblocking(False)
        err_ours.setblocking(False)
        self.sock = ours
        self.err = err_ours
        self.stderr: list[str] = []
        self.after_eof: list[bytes] = []  # lines written after we closed its stdin
        self.exit_status: int | None = None
        self.exited_on_eof: bool | None = None
        self._on_stderr = on_stderr
        self._wbuf = bytearray()
        self._rbuf = b""
        self._ebuf = b""
        self._lines: list[bytes] = []
        self._eof = False
        self._err_eof = False
        self._shut = False
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.sock, selectors.EVENT_READ, "out")
        self._sel.register(self.err, selectors.EVENT_READ, "err")

    # -- I/O ---------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        if self._eof or self._shut:
            return
        self._wbuf += data
        self._write_some()

    def _write_some(self) -> None:
        while self._wbuf:
            try:
                n = self.sock.send(self._wbuf)
            except BlockingIOError:
                break
            except (BrokenPipeError, ConnectionResetError):
                self._wbuf.clear()
                self._eof = True
                break
            del self._wbuf[:n]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self._wbuf else 0)
        try:
            self._sel.modify(self.sock, events, "out")
        except (KeyError, ValueError):
            pass

    def _read_out(self) -> None:
        try:
            data = self.sock.recv(1 << 20)
        except BlockingIOError:
            return
        except (ConnectionResetError, OSError):
            data = b""
        if not data:
            self._eof = True
            try:
                self._sel.unregister(self.sock)
            except (KeyError, ValueError):
                pass
            return
        data = self._rbuf + data
        *lines, self._rbuf = data.split(b"\n")
        if self._shut:
            self.after_eof.extend(lines)
        else:
            self._lines.extend(lines)

    def _read_err(self) -> None:
        try:
            data = self.err.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._err_eof = True
            try:
                self._sel.unregister(self.err)
            except (KeyError, ValueError):
                pass
            if self._ebuf:
                self._stderr_line(self._ebuf)
                self._ebuf = b""
            return
        data = self._ebuf + data
        *lines, self._ebuf = data.split(b"\n")
        for raw in lines:
            self._stderr_line(raw)

    def _stderr_line(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "backslashreplace")
        self.stderr.append(line)
        if self._on_stderr:
            self._on_stderr(line)

    def _poll(self, timeout: float) -> None:
        if not self._sel.get_map():
            time.sleep(max(0.0, min(timeout, 0.05)))
            return
        for key, events in self._sel.select(max(0.0, timeout)):
            if key.data == "out":
                if events & selectors.EVENT_WRITE:
                    self._write_some()
                if events & selectors.EVENT_READ:
                    self._read_out()
            else:
                self._read_err()

    def recv(self, timeout: float) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while True:
            if self._lines:
                lines, self._lines = self._lines, []
                return lines
            if self._eof:
                self._gone()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            self._poll(min(remaining, 0.25))
            if not self._lines and not self._eof and self.proc.poll() is not None:
                # Exited; drain what is left on the sockets, then report.
                self._poll(0.05)
                if not self._lines:
                    self._eof = True

    def _gone(self) -> None:
        status = self.proc.poll()
        if status is None:
            try:
                status = self.proc.wait(0.5)
            except subprocess.TimeoutExpired:
                status = None
        # Its last words on stderr (a traceback, a usage error) come with the news.
        deadline = time.monotonic() + 0.3
        while not self._err_eof and status is not None and time.monotonic() < deadline:
            self._poll(0.05)
        self.exit_status = status
        raise FilterGone(status is not None, status)

    @property
    def idle(self) -> bool:
        return False

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def __del__(self) -> None:  # never leave a filter process behind
        try:
            if not self._shut:
                self.exit_timeout = min(self.exit_timeout, 1.0)
                self.close()
        except Exception:  # noqa: BLE001 - never raise from a finalizer
            pass

    def close(self) -> None:
        """EOF on the filter's stdin (smtpd going away); the filter should
        exit.  If it does not within ``exit_timeout``, it is killed (its
        process group: it runs in its own session)."""
        if self._shut:
            return
        self._shut = True
        self._lines.clear()
        deadline = time.monotonic() + self.exit_timeout
        while self._wbuf and not self._eof and time.monotonic() < deadline:
            self._poll(0.05)  # what was sent goes first, then EOF
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        deadline = time.monotonic() + self.exit_timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            self._poll(0.05)
        while self._sel.get_map() and time.monotonic() < deadline + 0.2:
            self._poll(0.02)
            if self.proc.poll() is not None and not self._sel.select(0):
                break
        status = self.proc.poll()
        self.exited_on_eof = status is not None
        if status is None:
            self._kill()
            status = self.proc.poll()
        self.exit_status = status
        self._sel.close()
        self.sock.close()
        self.err.close()

    def _kill(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                return
            try:
                self.proc.wait(1.0)
                return
            except subprocess.TimeoutExpired:
                continue


# --------------------------------------------------------------------------
# The author-facing API


class HarnessSession:
    """One simulated client session.  Each method sends one client command
    through smtpd's simulated engine and returns a ``Step`` (``send_message``
    and ``data`` return a ``MessageResult``)."""

    def __init__(self, harness: "_HarnessBase", session: SimSession) -> None:
        self.harness = harness
        self.sim_session = session
        self.connect: Step | None = None

    @property
    def id(self) -> str:
        return self.sim_session.sid

    @property
    def closed(self) -> bool:
        return self.sim_session.closed

    @property
    def steps(self) -> list[Step]:
        return self.sim_session.steps

    @property
    def messages(self) -> list[MessageResult]:
        return self.sim_session.messages

    @property
    def state(self) -> Session | None:
        """The SDK's own Session object for this session (in-process only)."""
        engine = getattr(self.harness.transport, "engine", None)
        return engine.sessions.peek(self.id) if engine is not None else None

    def do(self, action: Action) -> Any:
        """Perform any simulator action (``simulator.Ehlo(...)`` etc.)."""
        return self.harness._perform(self.sim_session, action)

    def helo(self, name: str = "client.example.org") -> Step:
        return self.do(Helo(name))

    def ehlo(self, name: str = "client.example.org") -> Step:
        return self.do(Ehlo(name))

    def starttls(self, tls: str = "TLSv1.3:TLS_AES_256_GCM_SHA384:256") -> Step:
        return self.do(StartTLS(tls))

    def auth(self, username: str, password: str = "secret", *, mechanism: str = "PLAIN", result: str = "pass") -> Step:
        """AUTH; ``result`` is what smtpd's backend says (pass/fail/error)."""
        return self.do(Auth(username, password, mechanism, result))

    def mail_from(self, address: str, params: str = "") -> Step:
        return self.do(Mail(address, params))

    def rcpt_to(self, address: str, params: str = "") -> Step:
        return self.do(Rcpt(address, params))

    def data(
        self,
        body: bytes | str | Sequence[bytes] = b"Hello.\n",
        *,
        headers: dict[str, str] | Sequence[tuple[str, str]] | None = None,
        lines: Sequence[bytes] | None = None,
        stuffed: bool = False,
        abort_after: int | None = None,
    ) -> MessageResult:
        """DATA for the open transaction.  ``lines``: the exact content lines
        (headers, empty line, body); otherwise built from ``headers`` and
        ``body``.  ``stuffed``: the lines are already dot-stuffed.
        ``abort_after``: the client disconnects after that many lines."""
        tx = self.sim_session.tx or {}
        content = tuple(lines) if lines is not None else message_lines(tx.get("mail_from", ""), tx.get("rcpts", []), body, headers)
        return self.do(Data(content, stuffed, abort_after))

    def send_message(
        self,
        from_: str = "sender@example.org",
        to: str | Sequence[str] = ("rcpt@example.net",),
        body: bytes | str | Sequence[bytes] = b"Hello.\n",
        *,
        headers: dict[str, str] | Sequence[tuple[str, str]] | None = None,
        lines: Sequence[bytes] | None = None,
        mail_params: str = "",
        stuffed: bool = False,
        abort_after: int | None = None,
    ) -> MessageResult:
        """MAIL FROM, RCPT TO for each of ``to``, DATA (EHLO first if the
        client has not tried HELO/EHLO yet).  Stops where smtpd would: a refused
        MAIL, no accepted recipient, a refused DATA, a disconnect."""
        rcpts = (to,) if isinstance(to, str) else tuple(to)
        content = tuple(lines) if lines is not None else message_lines(from_, rcpts, body, headers)
        return self.do(Message(from_, rcpts, content, mail_params, stuffed, abort_after))

    def rset(self) -> Step:
        return self.do(Rset())

    def noop(self) -> Step:
        return self.do(Noop())

    def quit(self) -> Step:
        return self.do(Quit())

    def command(self, text: str) -> Step:
        """A command smtpd answers without asking filters (HELP, VRFY, ...)."""
        return self.do(Command(text))

    def disconnect(self) -> Step:
        """The client drops the connection."""
        return self.do(Drop())

    def timeout(self) -> Step:
        """The client idles until smtpd's session timeout."""
        return self.do(Idle())


class _HarnessBase:
    transport: Any

    def __init__(
        self,
        transport: Any,
        dialect: str = "0.6",
        *,
        name: str = "filter",
        hang_timeout: float = 10.0,
        quiet_time: float = 0.03,
        seed: int = 0,
        smtp_out: bool = False,
        hostname: str = "mx.test",
        fail_on: Sequence[str] = (FATAL, HANG),
        handshake: Sequence[bytes] | None = None,
        on_note: Callable[[str], None] | None = None,
        on_finding: Callable[[Finding], None] | None = None,
        record: bool = False,
        start: bool = True,
    ) -> None:
        self.transport = transport
        self.dialect = dialect
        self.fail_on = tuple(fail_on)
        self.sim = Simulator(
            transport,
            dialect,
            name=name,
            hang_timeout=hang_timeout,
            quiet_time=quiet_time,
            seed=seed,
            smtp_out=smtp_out,
            hostname=hostname,
            handshake=handshake,
            on_note=on_note,
            on_finding=on_finding,
            record=record,
        )
        self._checked = 0
        self._closed = False
        if start:
            self.start()

    # -- state ---------------------------------------------------------------------

    @property
    def findings(self) -> list[Finding]:
        return self.sim.findings

    @property
    def transcript(self) -> list[str]:
        return self.sim.transcript

    @property
    def registration(self) -> list[bytes]:
        return self.sim.registration

    @property
    def phases(self) -> set[str]:
        return self.sim.phases

    @property
    def reports(self) -> set[str]:
        return {event for (sub, event) in self.sim.reports if sub == "smtp-in"}

    @property
    def dead(self) -> Finding | None:
        """The finding smtpd would have exited (or jammed) on, if any."""
        return self.sim.dead

    @property
    def sent(self) -> list[bytes]:
        """Every line sent to the filter (needs ``record=True``)."""
        return [line for d, line in self.sim.wire_log or () if d == ">"]

    @property
    def received(self) -> list[bytes]:
        """Every line the filter wrote (needs ``record=True``)."""
        return [line for d, line in self.sim.wire_log or () if d == "<"]

    def findings_of(self, *severities: str) -> list[Finding]:
        return [f for f in self.findings if f.severity in severities]

    # -- driving ---------------------------------------------------------------------

    def start(self) -> list[bytes]:
        """Handshake and registration (done by the constructor unless start=False)."""
        try:
            self.sim.start()
        except SmtpdGone:
            pass
        self._raise_new()
        return self.registration

    def _raise_new(self) -> None:
        new = self.findings[self._checked :]
        self._checked = len(self.findings)
        bad = [f for f in new if f.severity in self.fail_on]
        if bad:
            raise FilterCheckFailed(bad, self.transcript)

    def _guard(self, fn: Callable[[], Any]) -> Any:
        if self.sim.dead is not None:
            raise RuntimeError(f"smtpd would have exited already: {self.sim.dead.format()}")
        try:
            result = fn()
        except SmtpdGone:
            result = None
        self._raise_new()
        return result

    def _perform(self, session: SimSession, action: Action) -> Any:
        return self._guard(lambda: self.sim.drive(session.perform(action), session))

    def session(
        self,
        src: str = "192.0.2.10",
        rdns: str = "mail.example.org",
        *,
        fcrdns: str = "pass",
        port: int | None = None,
        dest: str | None = None,
    ) -> HarnessSession:
        """A client connects (link-connect, the connect request, the banner).
        ``src="local"`` makes a unix-socket session; ``rdns="<unknown>"`` one
        without reverse DNS.  ``session.connect`` is the connect Step."""
        connect = Connect(src, rdns, fcrdns, port, dest)
        s = HarnessSession(self, self.sim.new_session(connect))
        s.connect = self._perform(s.sim_session, connect)
        return s

    def run(self, *scripts: Sequence[Action]) -> list[SimSession]:
        """Whole sessions (lists of simulator actions), interleaved like a
        busy smtpd interleaves them."""
        return self._guard(lambda: self.sim.run([list(s) for s in scripts])) or []

    def replay(self, lines: Sequence[bytes]) -> list[SimSession]:
        """Recorded smtpd->filter lines (config lines are skipped)."""
        return self._guard(lambda: self.sim.replay(lines)) or []

    def check(self, fail_on: Sequence[str] | None = None) -> None:
        """Raise FilterCheckFailed if any finding (of ``fail_on`` severities,
        default the harness's) was recorded so far."""
        severities = tuple(fail_on) if fail_on is not None else self.fail_on
        bad = [f for f in self.findings if f.severity in severities]
        if bad:
            raise FilterCheckFailed(bad, self.transcript)

    def eof_in_flight(self, *scripts: Sequence[Action]) -> list[SimSession]:
        """Send these sessions up to their first wait for the filter (a
        message whole, final ``.`` included), then EOF at once, and close:
        what the filter read must be answered before it exits (HANG
        ``dropped-at-eof`` for each answer it dropped)."""
        if self._closed:
            raise RuntimeError("the harness is closed")
        if self.sim.dead is not None:
            self.close()
            raise RuntimeError(f"smtpd would have exited already: {self.sim.dead.format()}")
        self._closed = True
        sessions = self.sim.eof_in_flight([list(s) for s in scripts])
        self._after_close()
        self._raise_new()
        return sessions

    def _after_close(self) -> None:
        pass

    def format_transcript(self) -> str:
        return "\n".join(self.transcript)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.transport.close()

    def __enter__(self) -> "_HarnessBase":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Harness(_HarnessBase):
    """In-process harness around a ``Filter`` object.

    ``dialect``: ``0.4``, ``0.5``, ``0.6``, ``0.7`` or ``0.7/7.6`` (see
    ``wire.DIALECTS``).  The filter's log lines (what smtpd would put in the
    mail log) are in ``h.stderr``.  ``feed()`` gives raw access to the engine.
    """

    transport: EngineTransport

    def __init__(self, filt: Filter, dialect: str = "0.6", **kwargs: Any) -> None:
        transport = EngineTransport(filt)
        kwargs.setdefault("name", filt.name)
        super().__init__(transport, dialect, **kwargs)

    @property
    def engine(self) -> Engine:
        return self.transport.engine

    @property
    def stderr(self) -> list[str]:
        return self.transport.stderr

    def feed(self, *lines: bytes) -> list[bytes]:
        """Raw lines into the engine (newlines added), its output lines back,
        after every async handler finished.  No simulation, no checks."""
        for line in lines:
            self.transport.send(line if line.endswith(b"\n") else line + b"\n")
        self.transport.loop.run_until_complete(self.engine.settle())
        return self.transport._take()


class SubprocessHarness(_HarnessBase):
    """The filter as smtpd runs it, given as a shell command line.

    ``env`` replaces smtpd's default environment (PATH and LANG only);
    ``env_extra`` adds to it (e.g. ``{"PYTHONPATH": repo}``).  ``h.stderr``
    holds the filter's stderr lines.  ``close()`` sends EOF and waits for the
    filter to exit (a WARN finding if it does not).
    """

    transport: ProcessTransport

    def __init__(
        self,
        command: str | Sequence[str],
        dialect: str = "0.6",
        *,
        env: dict[str, str] | None = None,
        env_extra: dict[str, str] | None = None,
        cwd: str | None = None,
        exit_timeout: float = 3.0,
        on_stderr: Callable[[str], None] | None = None,
        **kwargs: Any,
    ) -> None:
        transport = ProcessTransport(command, env=env, env_extra=env_extra, cwd=cwd, on_stderr=on_stderr, exit_timeout=exit_timeout)
        if "name" not in kwargs:
            kwargs["name"] = default_name(transport.command)
        try:
            super().__init__(transport, dialect, **kwargs)
        except BaseException:
            transport.close()
            raise

    @property
    def stderr(self) -> list[str]:
        return self.transport.stderr

    @property
    def command(self) -> str:
        return self.transport.command

    def close(self) -> None:
        if self._closed:
            return
        if self.sim.dead is None and not self.transport.running and not self.transport._shut:
            # The filter went away between steps: smtpd would have noticed.
            try:
                self.sim._gone(FilterGone(True, self.transport.proc.poll()))
            except SmtpdGone:
                pass
        super().close()
        self._after_close()

    def _after_close(self) -> None:
        if self.transport.exited_on_eof is False:
            self.sim.finding(
                WARN,
                "no-exit-on-eof",
                f"the filter did not exit within {self.transport.exit_timeout:g}s of EOF on stdin: smtpd does not "
                "kill its filters, so it keeps running after smtpd stopped (killed here)",
            )


def default_name(command: str) -> str:
    """A filter name for log lines: the script's base name."""
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    interpreters = ("python", "env", "exec", "sh", "bash", "dash", "perl", "ruby", "node", "nice", "setsid")
    it = iter(words)
    for word in it:
        base = os.path.basename(word)
        if "=" in word and not word.startswith("/"):
            continue  # VAR=value
        if word == "-c":
            return "filter"
        if word == "-m":
            module = next(it, "filter")
            return module.rsplit(".", 1)[-1]
        if base.startswith(interpreters) or base.startswith("-"):
            continue
        return base.rsplit(".", 1)[0] if base.endswith(".py") else base
    return "filter"


def script(*actions: Action) -> list[Action]:
    """A session script for ``Harness.run``: ``script(Connect(...), Ehlo("x"), Quit())``."""
    return list(actions)


# Re-exported for scripts: the actions and helpers
__all__ += [
    "Auth",
    "Command",
    "Connect",
    "Data",
    "Drop",
    "Ehlo",
    "Helo",
    "Idle",
    "Mail",
    "Message",
    "MessageResult",
    "Noop",
    "Quit",
    "Rcpt",
    "Rset",
    "StartTLS",
    "Step",
    "message_lines",
    "script",
    "split_lines",
]
