"""Proceeds with a token it made up."""
from rawfilter import Raw


def request(f, phase, sid, tok, version, param):
    f.result(sid, b"0123456789abcdef", version, b"proceed")
    return True


Raw().run(on_request=request)
