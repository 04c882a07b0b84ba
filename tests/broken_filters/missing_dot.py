"""Echoes every data line except the final '.'."""
from rawfilter import Raw


def dataline(f, sid, tok, version, payload):
    if payload != b".":
        f.dataline(sid, tok, version, payload)
    return True


Raw().run(on_dataline=dataline)
