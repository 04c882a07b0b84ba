"""Writes a line smtpd does not know after two answers (misbehave-garbage-after-2)."""
from rawfilter import Raw

count = 0


def request(f, phase, sid, tok, version, param):
    global count
    count += 1
    if count == 3:
        f.write(b"this is garbage|" + sid)


Raw().run(on_request=request)
