"""Answers connect with the report decision (fine on 7.6+, fatal before)."""
from rawfilter import Raw


def request(f, phase, sid, tok, version, param):
    if phase == "connect":
        f.result(sid, tok, version, b"report|client seen")
        return True


Raw().run(on_request=request)
