"""Registers but never says register|ready."""
from rawfilter import Raw


def ready(f):
    f.register(ready=False)
    return True


Raw().run(on_ready=ready)
