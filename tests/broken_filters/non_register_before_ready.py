"""Greets smtpd before registering."""
from rawfilter import Raw


def ready(f):
    f.write(b"hello smtpd")
    return False


Raw().run(on_ready=ready)
