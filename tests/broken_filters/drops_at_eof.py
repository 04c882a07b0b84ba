"""Answers connect from a background thread a little later (as the Go
filters answer from goroutines) and exits at EOF at once, dropping the
answers still to come."""
import threading

from rawfilter import Raw


def request(f, phase, sid, tok, version, param):
    if phase != "connect":
        return False
    timer = threading.Timer(0.3, f.result, (sid, tok, version, b"proceed"))
    timer.daemon = True  # dies with the process: the answer is lost at EOF
    timer.start()
    return True


Raw().run(on_request=request)
