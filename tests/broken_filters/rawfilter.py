"""A tiny raw-protocol filter (no SDK) that the broken examples bend.

By default it is correct: it reads the handshake, registers, answers every
request with ``proceed`` in the order the request's version wants, echoes
data lines and exits on EOF.  Each broken filter passes hooks that break one
rule.  A hook returns True when it wrote the answer itself.
"""

import os
import sys

PHASES = ("connect", "helo", "ehlo", "mail-from", "rcpt-to", "data", "data-line", "commit", "quit")
EVENTS = ("link-connect", "link-disconnect", "tx-begin", "tx-reset")


class Raw:
    def __init__(self, phases=PHASES, events=EVENTS, registration=None, eol=b"\n"):
        self.phases = phases
        self.events = events
        self.registration = registration  # explicit register lines (without ready), or None
        self.eol = eol
        self.config = {}

    def write(self, *lines):
        os.write(1, b"".join(line + self.eol for line in lines))

    @staticmethod
    def ids(sid, tok, version):
        return tok + b"|" + sid if version < (0, 5) else sid + b"|" + tok

    def result(self, sid, tok, version, decision):
        self.write(b"filter-result|" + self.ids(sid, tok, version) + b"|" + decision)

    def dataline(self, sid, tok, version, payload):
        self.write(b"filter-dataline|" + self.ids(sid, tok, version) + b"|" + payload)

    def register(self, ready=True):
        if self.registration is not None:
            lines = list(self.registration)
        else:
            lines = [b"register|report|smtp-in|" + e.encode() for e in self.events]
            lines += [b"register|filter|smtp-in|" + p.encode() for p in self.phases]
        if ready:
            lines.append(b"register|ready")
        self.write(*lines)

    def lines(self):
        buf = b""
        while True:
            data = os.read(0, 65536)
            if not data:
                return
            buf += data
            *lines, buf = buf.split(b"\n")
            yield from lines

    def run(self, on_request=None, on_dataline=None, on_report=None, on_ready=None):
        for line in self.lines():
            if line.startswith(b"config|"):
                key, _, value = line[7:].partition(b"|")
                self.config[key.decode()] = value.decode()
                if line == b"config|ready":
                    if on_ready is None or not on_ready(self):
                        self.register()
                continue
            parts = line.split(b"|", 7)
            if parts[0] == b"filter" and len(parts) == 8:
                version = tuple(int(x) for x in parts[1].split(b"."))
                phase, sid, tok, param = parts[4].decode(), parts[5], parts[6], parts[7]
                if phase == "data-line":
                    if not (on_dataline and on_dataline(self, sid, tok, version, param)):
                        self.dataline(sid, tok, version, param)
                elif not (on_request and on_request(self, phase, sid, tok, version, param)):
                    self.result(sid, tok, version, b"proceed")
            elif parts[0] == b"report" and on_report:
                on_report(self, parts)
        sys.exit(0)
