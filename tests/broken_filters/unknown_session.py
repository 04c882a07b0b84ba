"""Answers mail-from for a session id it made up."""
from rawfilter import Raw


def request(f, phase, sid, tok, version, param):
    if phase == "mail-from":
        f.result(b"00000000deadbeef", tok, version, b"proceed")
        return True


Raw().run(on_request=request)
