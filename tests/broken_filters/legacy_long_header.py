"""Adds a 3,000-byte header line (smtpd <= 7.3 keeps 2,047 bytes of it)."""
from rawfilter import Raw

seen = set()


def dataline(f, sid, tok, version, payload):
    if sid not in seen:
        seen.add(sid)
        f.dataline(sid, tok, version, b"X-Long: " + b"y" * 3000)
    f.dataline(sid, tok, version, payload)
    if payload == b".":
        seen.discard(sid)
    return True


Raw().run(on_dataline=dataline)
