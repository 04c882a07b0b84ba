"""Ends the message with '.' as soon as the header block is over."""
from rawfilter import Raw


def dataline(f, sid, tok, version, payload):
    f.dataline(sid, tok, version, payload)
    if payload == b"":
        f.dataline(sid, tok, version, b".")
    return True


Raw().run(on_dataline=dataline)
