"""Adds a 70,000-byte header to every message (smtpd's reader jams on it)."""
from rawfilter import Raw

seen = set()


def dataline(f, sid, tok, version, payload):
    if sid not in seen:
        seen.add(sid)
        f.dataline(sid, tok, version, b"X-Huge: " + b"h" * 70000)
    f.dataline(sid, tok, version, payload)
    return True


Raw().run(on_dataline=dataline)
