"""Writes 'proceed|' (an empty parameter after proceed)."""
from rawfilter import Raw


def request(f, phase, sid, tok, version, param):
    f.result(sid, tok, version, b"proceed|")
    return True


Raw().run(on_request=request)
