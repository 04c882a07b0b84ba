"""Control: a correct filter that registers little and writes a garbage line
(fatal for smtpd, so the checker reports it) if smtpd ever sends it an event
or phase it did not register, or an event twice in a row."""
from rawfilter import Raw

EVENTS = ("link-connect", "tx-mail", "link-disconnect")
PHASES = ("mail-from", "data-line")
last = [None]


def complain(f, what):
    f.write(b"unexpected|" + what)


def report(f, parts):
    if parts[4].decode() not in EVENTS:
        complain(f, parts[4])
    if parts[4] == b"link-connect" and last[0] == b"|".join(parts[5:]):
        complain(f, b"twice")
    last[0] = b"|".join(parts[5:])


def request(f, phase, sid, tok, version, param):
    if phase not in PHASES:
        complain(f, phase.encode())


Raw(phases=PHASES, events=EVENTS).run(on_report=report, on_request=request)
