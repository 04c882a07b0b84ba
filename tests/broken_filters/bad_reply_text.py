"""Rejects RCPT TO with a text that is no SMTP reply (smtpd sends 421 and drops the client)."""
from rawfilter import Raw


def request(f, phase, sid, tok, version, param):
    if phase == "rcpt-to":
        f.result(sid, tok, version, b"reject|go away")
        return True


Raw().run(on_request=request)
