"""Stateful test: a model of smtpd driving interleaved SMTP sessions into an
Engine, one SMTP step at a time, with the smtpd oracle's invariants checked
after every step.

Rules open sessions and move any open session through HELO/EHLO, MAIL,
RCPT, DATA (header lines from smtpd, client lines, the final ``.``,
commit), RSET and NOOP; sessions end with QUIT, a disconnect (also in the
middle of DATA), a timeout, or a client that leaves while its request is
still pending.  The event loop runs only when smtpd would wait for the
filter, or when a rule says so (``tick``/``settle``), so async handlers of
several sessions overlap.  The filter is drawn like in the property tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, initialize, invariant, rule

from smtpd_filter_sdk.testing import strategies as sst
from smtpd_filter_sdk.testing.strategies import Line, Stream
from smtpd_filter_sdk.testing.wire import DIALECTS, Wire

from smtpd_oracle import Driver
from filter_specs import Spec, build, specs


@dataclass
class SessionModel:
    sid: str
    tx: str | None = None
    rcpts: int = 0
    in_data: bool = False
    payloads: list[bytes] = field(default_factory=list)


class SmtpdMachine(RuleBasedStateMachine):
    sessions = Bundle("sessions")

    def __init__(self) -> None:
        super().__init__()
        self.driver: Driver | None = None
        self.model: dict[str, SessionModel] = {}
        self.used: set[str] = set()
        # sessions the engine has seen a line of: it creates them lazily (a
        # filter that reads no field of link-connect does not register it)
        self.named: set[str] = set()
        self.counter = 0

    # -- set-up --------------------------------------------------------------

    @initialize(target=sessions, spec=specs(), dialect=sst.dialects(), smtp_out=st.booleans(),
                chunks=st.sampled_from([[1 << 20], [1, 65536], [50, 7, 65536], [4096]]),
                n=st.integers(1, 2**64 - 1), rdns=sst.rdns_names(), ends=sst.client_endpoints())
    def start(self, spec: Spec, dialect: str, smtp_out: bool, chunks: list[int], n: int, rdns: bytes,
              ends: tuple[str, str, str]) -> str:
        """The handshake, then a first session (so rules always have one)."""
        self.spec = spec
        filt = build(spec)
        self.phases, self.events = sst.registration_of(filt)
        self.wire = Wire(dialect, smtp_out=smtp_out)
        self.version = self.wire.version.decode()
        self.chunks = chunks
        # a template Stream: dialect and registration for the oracle
        self.stream = Stream(dialect, (), self.phases, self.events, smtp_out and bool(DIALECTS[dialect]["subsystems"]))
        self.driver = Driver(filt, self.stream)
        self.tokens = {phase: f"{0xf7e89af9b7f40000 + i:016x}" for i, phase in enumerate(sst.ALL_PHASES)}
        self.driver.push([Line(raw, "config", name=raw.split(b"|")[1].decode(), waits=False)
                          for raw in self.wire.handshake()])
        return self.open_session(n, rdns, ends)

    # -- line builders -----------------------------------------------------------

    def ts(self) -> str:
        self.counter += 1
        return f"{1795218690 + self.counter // 1000}.{self.counter % 1000:06d}"

    def rep(self, sid: str, event: str, *fields: str | bytes, closes: bool = False, waits: bool = True) -> list[Line]:
        if ("smtp-in", event) not in self.events:
            return []
        if event in ("tx-mail", "tx-rcpt"):
            raw = self.wire.tx_address(self.ts(), event, sid, *fields)  # type: ignore[arg-type]
        else:
            raw = self.wire.report(self.ts(), event, sid, *fields)
        return [Line(raw, "report", sid, event, None, self.version, waits=waits, closes=closes)]

    def req(self, sid: str, phase: str, param: bytes = b"") -> list[Line]:
        if phase not in self.phases:
            return []
        token = self.tokens[phase]
        raw = self.wire.request(self.ts(), phase, sid, token, param)
        return [Line(raw, "request", sid, phase, token, self.version)]

    def dl(self, sid: str, payload: bytes) -> list[Line]:
        if "data-line" not in self.phases:
            return []
        token = self.tokens["data-line"]
        raw = self.wire.request(self.ts(), "data-line", sid, token, payload)
        return [Line(raw, "data-line", sid, "data-line", token, self.version)]

    def push(self, lines: list[Line]) -> None:
        assert self.driver is not None
        self.named.update(line.sid for line in lines if line.sid in self.model)
        self.driver.push(lines, self.chunks)

    def teardown_lines(self, m: SessionModel, first: str | None, waits: bool) -> list[Line]:
        lines: list[Line] = []
        if first == "timeout":
            lines += self.rep(m.sid, "timeout", waits=waits)
        if m.tx is not None:
            lines += self.rep(m.sid, "tx-rollback", m.tx, waits=waits)
            lines += self.rep(m.sid, "tx-reset", m.tx, waits=waits)
        lines += self.rep(m.sid, "link-disconnect", waits=waits)
        if lines:
            lines[0] = replace(lines[0], closes=True)  # smtpd lets go of the session here
        del self.model[m.sid]
        return lines

    # -- rules ---------------------------------------------------------------

    @rule(target=sessions, n=st.integers(1, 2**64 - 1), rdns=sst.rdns_names(), ends=sst.client_endpoints())
    def open_session(self, n: int, rdns: bytes, ends: tuple[str, str, str]) -> str:
        sid = f"{n:016x}"
        # smtpd never reuses a session id, and a random 64-bit id is never one
        # of the tokens (hypothesis draws such constants: the 0.4 answers,
        # TOKEN|SESSION, would then be ambiguous to the oracle)
        while sid in self.used or sid in self.tokens.values():
            n = (n * 6364136223846793005 + 1442695040888963407) % 2**64 or 1
            sid = f"{n:016x}"
        self.used.add(sid)
        self.model[sid] = SessionModel(sid)
        src, dest, csrc = ends
        self.push(self.rep(sid, "link-connect", rdns, "pass", src, dest)
                  + self.req(sid, "connect", rdns + b"|" + csrc.encode())
                  + self.rep(sid, "filter-response", "connected", "proceed")
                  + self.rep(sid, "link-greeting", "mx.test"))
        return sid

    def live(self, sid: str) -> SessionModel | None:
        return self.model.get(sid)

    @rule(sid=sessions, method=st.sampled_from(["HELO", "EHLO"]), name=sst.helo_names())
    def helo(self, sid: str, method: str, name: bytes) -> None:
        m = self.live(sid)
        if m is None or m.in_data:
            return
        self.push(self.rep(sid, "protocol-client", method.encode() + b" " + name)
                  + self.req(sid, method.lower(), name)
                  + self.rep(sid, "filter-response", method.lower(), "proceed")
                  + self.rep(sid, "link-identify", method, name))

    def _mail(self, m: SessionModel, address: bytes) -> list[Line]:
        msgid = f"{abs(hash((m.sid, self.counter))) % (1 << 32) | 1:08x}"
        lines = (self.req(m.sid, "mail-from", address) + self.rep(m.sid, "filter-response", "mail-from", "proceed")
                 + self.rep(m.sid, "tx-begin", msgid) + self.rep(m.sid, "tx-mail", msgid, "ok", address))
        m.tx, m.rcpts = msgid, 0
        return lines

    @rule(sid=sessions, address=sst.mail_addresses())
    def mail(self, sid: str, address: bytes) -> None:
        m = self.live(sid)
        if m is None or m.tx is not None:
            return
        self.push(self._mail(m, address))

    def _rcpt(self, m: SessionModel, address: bytes) -> list[Line]:
        assert m.tx is not None
        m.rcpts += 1
        return (self.req(m.sid, "rcpt-to", address) + self.rep(m.sid, "filter-response", "rcpt-to", "proceed")
                + self.rep(m.sid, "tx-envelope", m.tx, f"{m.tx}0000abcd") + self.rep(m.sid, "tx-rcpt", m.tx, "ok", address))

    @rule(sid=sessions, address=sst.mail_addresses())
    def rcpt(self, sid: str, address: bytes) -> None:
        m = self.live(sid)
        if m is None or m.in_data:
            return
        lines = self._mail(m, b"bob@example.org") if m.tx is None else []
        self.push(lines + self._rcpt(m, address))

    def _data(self, m: SessionModel) -> list[Line]:
        lines = self._mail(m, b"bob@example.org") if m.tx is None else []
        if m.rcpts == 0:
            lines += self._rcpt(m, b"alice@rig.test")
        lines += self.req(m.sid, "data") + self.rep(m.sid, "filter-response", "data", "proceed")
        lines += self.dl(m.sid, b"Received: from x (<unknown> [1.2.3.4])")
        lines += self.dl(m.sid, b"\tby mx.test (OpenSMTPD) with ESMTP id " + (m.tx or "").encode())
        lines += self.rep(m.sid, "tx-data", m.tx or "", "ok")
        m.in_data = True
        return lines

    @rule(sid=sessions)
    def data(self, sid: str) -> None:
        m = self.live(sid)
        if m is None or m.in_data:
            return
        self.push(self._data(m))

    @rule(sid=sessions, lines=st.lists(sst.data_lines(), min_size=1, max_size=5))
    def data_lines(self, sid: str, lines: list[bytes]) -> None:
        m = self.live(sid)
        if m is None:
            return
        out = [] if m.in_data else self._data(m)
        for payload in lines:
            out += self.dl(sid, payload)
        self.push(out)

    @rule(sid=sessions)
    def end_data(self, sid: str) -> None:
        m = self.live(sid)
        if m is None or not m.in_data:
            return
        assert m.tx is not None
        lines = self.dl(sid, b".") + self.rep(sid, "protocol-client", ".", waits=False)
        lines += self.req(sid, "commit") + self.rep(sid, "filter-response", "commit", "proceed")
        lines += self.rep(sid, "tx-commit", m.tx, "123") + self.rep(sid, "tx-reset", m.tx)
        m.tx, m.in_data, m.rcpts = None, False, 0
        self.push(lines)

    @rule(sid=sessions)
    def rset(self, sid: str) -> None:
        m = self.live(sid)
        if m is None or m.in_data:
            return
        lines = self.req(sid, "rset") + self.rep(sid, "filter-response", "rset", "proceed")
        if m.tx is not None:
            lines += self.rep(sid, "tx-rollback", m.tx) + self.rep(sid, "tx-reset", m.tx)
        m.tx, m.rcpts = None, 0
        self.push(lines)

    @rule(sid=sessions)
    def noop(self, sid: str) -> None:
        m = self.live(sid)
        if m is None or m.in_data:
            return
        self.push(self.req(sid, "noop") + self.rep(sid, "filter-response", "noop", "proceed"))

    @rule(sid=consumes(sessions), how=st.sampled_from(["quit", "disconnect", "timeout"]))
    def end_session(self, sid: str, how: str) -> None:
        m = self.live(sid)
        if m is None:
            return
        lines: list[Line] = []
        if how == "quit" and not m.in_data:
            lines += self.req(sid, "quit") + self.rep(sid, "filter-response", "quit", "proceed")
        # mid-DATA the client just goes: no final ".", smtpd does not wait
        waits = not m.in_data
        lines += self.teardown_lines(m, "timeout" if how == "timeout" else None, waits)
        self.push(lines)

    @rule(sid=consumes(sessions), phase=st.sampled_from(["noop", "helo", "mail-from", "rset"]))
    def leave_while_pending(self, sid: str, phase: str) -> None:
        """The client leaves (or times out) while smtpd waits for the filter."""
        m = self.live(sid)
        if m is None or m.in_data:
            return
        lines = self.req(sid, phase, b"x@y" if phase == "mail-from" else b"")
        self.push(lines + self.teardown_lines(m, None, waits=False))

    @rule()
    def tick(self) -> None:
        assert self.driver is not None
        self.driver.tick()

    @rule()
    def settle(self) -> None:
        assert self.driver is not None
        self.driver.settle()

    # -- invariants ----------------------------------------------------------

    @invariant()
    def smtpd_is_happy(self) -> None:
        if self.driver is None:
            return
        self.driver.check_log()
        self.driver.oracle.check()

    @invariant()
    def session_table_matches(self) -> None:
        if self.driver is None:
            return
        self.named &= set(self.model)
        assert set(self.driver.engine.sessions.ids()) == self.named, "session state leaked or lost"

    def teardown(self) -> None:
        if self.driver is None:
            return
        try:
            for m in list(self.model.values()):
                self.push(self.teardown_lines(m, None, waits=not m.in_data))
            self.driver.finish()
            self.driver.oracle.check()
            assert len(self.driver.engine.sessions) == 0
        finally:
            self.driver.close()


TestSmtpdMachine = SmtpdMachine.TestCase
