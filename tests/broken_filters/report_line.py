"""Writes a report| line (smtpd 6.6-7.8 die parsing it)."""
import time

from rawfilter import Raw


def request(f, phase, sid, tok, version, param):
    if phase == "mail-from":
        f.write(b"report|%.6f|smtp-in|" % time.time() + sid + b"|hello-from-filter")


Raw().run(on_request=request)
