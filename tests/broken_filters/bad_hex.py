"""Writes a session id that is not hex."""
from rawfilter import Raw


def request(f, phase, sid, tok, version, param):
    f.result(b"session-" + sid, tok, version, b"proceed")
    return True


Raw().run(on_request=request)
