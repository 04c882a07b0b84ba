"""Writes a data line while answering RCPT TO."""
from rawfilter import Raw


def request(f, phase, sid, tok, version, param):
    if phase == "rcpt-to":
        f.dataline(sid, tok, version, b"X-Out-Of-Place: yes")


Raw().run(on_request=request)
