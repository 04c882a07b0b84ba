"""Shuts its output down at mail-from but keeps running."""
import socket
import time

from rawfilter import Raw


def request(f, phase, sid, tok, version, param):
    if phase == "mail-from":
        socket.socket(fileno=1).shutdown(socket.SHUT_WR)
        time.sleep(30)


Raw().run(on_request=request)
