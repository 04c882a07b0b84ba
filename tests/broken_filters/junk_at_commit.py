"""Junks the message at commit (smtpd: 'filter-reponse junk after DATA')."""
from rawfilter import Raw


def request(f, phase, sid, tok, version, param):
    if phase == "commit":
        f.result(sid, tok, version, b"junk")
        return True


Raw().run(on_request=request)
