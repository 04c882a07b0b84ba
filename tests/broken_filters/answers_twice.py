"""Answers every request twice (both lines in one write)."""
from rawfilter import Raw


def request(f, phase, sid, tok, version, param):
    line = b"filter-result|" + f.ids(sid, tok, version) + b"|proceed"
    f.write(line, line)
    return True


Raw().run(on_request=request)
