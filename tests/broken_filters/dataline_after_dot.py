"""Appends a line after the final '.'."""
from rawfilter import Raw


def dataline(f, sid, tok, version, payload):
    f.dataline(sid, tok, version, payload)
    if payload == b".":
        f.dataline(sid, tok, version, b"X-Too-Late: yes")
    return True


Raw().run(on_dataline=dataline)
