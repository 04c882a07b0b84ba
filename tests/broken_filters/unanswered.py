"""Never answers RCPT TO."""
from rawfilter import Raw


def request(f, phase, sid, tok, version, param):
    return phase == "rcpt-to"


Raw().run(on_request=request)
