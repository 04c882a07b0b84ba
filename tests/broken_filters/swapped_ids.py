"""Answers with session id and token in the other version's order (issue #1096)."""
from rawfilter import Raw


def request(f, phase, sid, tok, version, param):
    wrong = sid + b"|" + tok if version < (0, 5) else tok + b"|" + sid
    f.write(b"filter-result|" + wrong + b"|proceed")
    return True


Raw().run(on_request=request)
