"""Rejects RCPT TO without a reply text."""
from rawfilter import Raw


def request(f, phase, sid, tok, version, param):
    if phase == "rcpt-to":
        f.result(sid, tok, version, b"reject")
        return True


Raw().run(on_request=request)
