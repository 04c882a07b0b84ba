"""Exits (as an uncaught exception would) at the mail-from phase."""
import sys

from rawfilter import Raw


def request(f, phase, sid, tok, version, param):
    if phase == "mail-from":
        sys.exit(1)


Raw().run(on_request=request)
