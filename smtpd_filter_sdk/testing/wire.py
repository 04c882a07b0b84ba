"""smtpd's side of the wire, for tests: build the lines smtpd would send.

The inverse of ``smtpd_filter_sdk.protocol``'s parsers, driven by the same
version table, so a test can say *what* happens and get the exact bytes of
any protocol version.  Used by the simulator, the checker and the hypothesis
strategies.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..protocol import Rules, rules_for

#: Handshakes as each smtpd release sends them (protocol.md §1.1).
DIALECTS: dict[str, dict[str, object]] = {
    # name: version on every line, smtpd-version, announce subsystems, admd, config|protocol
    "0.4": {"version": "0.4", "smtpd": "6.6.4p1", "subsystems": False, "admd": False, "protocol": False},
    "0.5": {"version": "0.5", "smtpd": "6.6.0-portable", "subsystems": True, "admd": False, "protocol": False},
    "0.6": {"version": "0.6", "smtpd": "6.8.0p2", "subsystems": True, "admd": True, "protocol": False},
    "0.7": {"version": "0.7", "smtpd": "7.4.0p1", "subsystems": True, "admd": True, "protocol": False},
    "0.7/7.6": {"version": "0.7", "smtpd": "7.8.0", "subsystems": True, "admd": True, "protocol": True},
}


def _b(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class Wire:
    """Line builder for one dialect (see ``DIALECTS``)."""

    dialect: str = "0.6"
    admd: str = "mx.test"
    smtp_out: bool = False

    @property
    def version(self) -> bytes:
        return _b(str(DIALECTS[self.dialect]["version"]))

    @property
    def rules(self) -> Rules:
        rules = rules_for(self.version)
        assert rules is not None
        return rules

    def handshake(self) -> list[bytes]:
        d = DIALECTS[self.dialect]
        lines = [b"config|smtpd-version|" + _b(str(d["smtpd"]))]
        if d["protocol"]:
            lines.append(b"config|protocol|" + self.version)
        lines.append(b"config|smtp-session-timeout|300")
        if d["subsystems"]:
            lines.append(b"config|subsystem|smtp-in")
            if self.smtp_out:
                lines.append(b"config|subsystem|smtp-out")
        if d["admd"]:
            lines.append(b"config|admd|" + _b(self.admd))
        lines.append(b"config|ready")
        return lines

    # -- reports -------------------------------------------------------------

    def report(self, ts: str, event: str, sid: str, *fields: str | bytes, subsystem: str = "smtp-in") -> bytes:
        head = b"|".join([b"report", self.version, _b(ts), _b(subsystem), _b(event), _b(sid)])
        return head + b"".join(b"|" + _b(f) for f in fields)

    def tx_address(self, ts: str, event: str, sid: str, msgid: str, result: str, address: str | bytes) -> bytes:
        """tx-mail / tx-rcpt in this version's field order."""
        if self.rules.tx_address_middle:
            return self.report(ts, event, sid, msgid, address, result)
        return self.report(ts, event, sid, msgid, result, address)

    def link_auth(self, ts: str, sid: str, username: str | bytes, result: str) -> bytes:
        if self.rules.auth_result_first:
            return self.report(ts, "link-auth", sid, result, username)
        return self.report(ts, "link-auth", sid, username, result)

    # -- requests ------------------------------------------------------------

    def request(self, ts: str, phase: str, sid: str, token: str, param: str | bytes = b"") -> bytes:
        return b"|".join(
            [b"filter", self.version, _b(ts), b"smtp-in", _b(phase), _b(sid), _b(token), _b(param)]
        )

    def connect(self, ts: str, sid: str, token: str, rdns: str, src: str) -> bytes:
        return self.request(ts, "connect", sid, token, _b(rdns) + b"|" + _b(src))

    # -- answers the filter must give ----------------------------------------

    def ids(self, sid: str, token: str) -> bytes:
        return _b(token) + b"|" + _b(sid) if self.rules.token_first else _b(sid) + b"|" + _b(token)

    def result(self, sid: str, token: str, decision: str | bytes) -> bytes:
        return b"filter-result|" + self.ids(sid, token) + b"|" + _b(decision)

    def dataline(self, sid: str, token: str, payload: str | bytes) -> bytes:
        return b"filter-dataline|" + self.ids(sid, token) + b"|" + _b(payload)
