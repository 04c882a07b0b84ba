"""Registers one more phase after register|ready."""
from rawfilter import Raw


def ready(f):
    f.register()
    f.write(b"register|filter|smtp-in|rset")
    return True


Raw().run(on_ready=ready)
