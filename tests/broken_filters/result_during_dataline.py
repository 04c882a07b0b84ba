"""Answers a data line with a filter-result."""
from rawfilter import Raw


def dataline(f, sid, tok, version, payload):
    f.result(sid, tok, version, b"proceed")
    return True


Raw().run(on_dataline=dataline)
