#!/usr/bin/env python3
"""The floor for py-filter-senderscore: what ``-junkBelow 80 -scoreHeader``
does to the bench's small-message stream, hand-written, without the SDK.

A second baseline beside echo_loop.py (issue 13): it shows what any Python
filter doing senderscore's work per session costs, so that the SDK's share
of py-filter-senderscore's cost can be told from the work's own.  Like
echo_loop.py it reads 64 KiB at a time, answers each line from one bounded
split, and writes each chunk's answers (and log lines, on stderr) in one
write.  Per session it does what py-filter-senderscore does there, and
nothing more:

* link-connect: the client's score is looked up (a dict: every lookup is a
  cache hit, as in the bench after the first session; no DNS at all);
* connect: ``junk`` below 80, else ``proceed``; one log line;
* data-line: ``X-SenderScore: N`` first, then the header block less any
  inbound ``X-SenderScore`` field, then the body, echoed;
* commit: ``proceed``; link-disconnect: the session is forgotten.

No validation, no failure policy, no async, no line-length limits, one
client address: a floor, not a filter.  Protocol 0.5 and later (SID|TOK
answers) only.
"""
import os
import sys

from echo_loop import handshake  # (bench/ is the script's directory: on sys.path)

JUNK_BELOW = 80
SCORES = {b"127.0.0.1": 77}  # what the bench's fake DNS answers (127.0.4.77)
HEADER = b"x-senderscore:"


def write_all(fd: int, data: bytes) -> None:
    mv = memoryview(data)
    while mv:
        mv = mv[os.write(fd, mv):]


def main() -> int:
    data = handshake()  # what came after it is answered first
    if data is None:
        return 0
    write_all(1, b"register|report|smtp-in|link-connect\n"
                 b"register|report|smtp-in|link-disconnect\n"
                 b"register|report|smtp-in|tx-reset\n"
                 b"register|filter|smtp-in|connect\n"
                 b"register|filter|smtp-in|data-line\n"
                 b"register|filter|smtp-in|commit\n"
                 b"register|ready\n")
    scores: dict[bytes, int | None] = {}  # SID -> the client's score
    bodies: dict[bytes, bytes] = {}  # SID -> SID|TOK| of its message once in the body
    body = b"\n"   # SID|TOK| of the message last seen in its body (b"\n": none)
    head = b"\n"   # SID|TOK| of the message whose header block is open
    dropping = False  # inside an inbound X-SenderScore field
    read = os.read
    while True:
        cut = data.rfind(b"\n") + 1
        carry = data[cut:]
        lines = data[:cut].split(b"\n")
        lines.pop()
        out: list[bytes] = []
        log: list[bytes] = []
        append = out.append
        for line in lines:
            f = line.split(b"|", 5)
            if len(f) < 6:
                continue
            phase, rest = f[4], f[5]
            if phase == b"data-line":
                if rest.startswith(body):  # the body: echoed
                    append(b"filter-dataline|" + rest)
                    continue
                if not rest.startswith(head):
                    sid, tok, _ = rest.split(b"|", 2)
                    ids = sid + b"|" + tok + b"|"
                    if bodies.get(sid) == ids:
                        body = ids
                        append(b"filter-dataline|" + rest)
                        continue
                    head, dropping = ids, False  # a new message: ours goes first
                    score = scores.get(sid)
                    if score is not None:
                        append(b"filter-dataline|%sX-SenderScore: %d" % (ids, score))
                payload = rest[len(head):]
                if payload == b"" or payload == b".":  # the block ends
                    bodies[head[:head.index(b"|")]] = body = head
                    head = b"\n"
                elif payload[:1] in (b" ", b"\t"):
                    if dropping:
                        continue
                elif payload[:14].lower() == HEADER:
                    dropping = True
                    continue
                else:
                    dropping = False
                append(b"filter-dataline|" + rest)
            elif phase == b"link-connect":
                sid, _, params = rest.partition(b"|")
                src = params.rsplit(b"|", 2)[1]
                scores[sid] = SCORES.get(src.rpartition(b":")[0])
            elif phase == b"connect":
                sid, tok, params = rest.split(b"|", 2)
                score = scores.get(sid)
                if score is None:
                    score = scores[sid] = SCORES.get(params.rpartition(b"|")[2])
                if score is not None and score < JUNK_BELOW:
                    append(b"filter-result|" + sid + b"|" + tok + b"|junk")
                    log.append(b"%s connect score=%d: junk (below %d)" % (sid, score, JUNK_BELOW))
                else:
                    append(b"filter-result|" + sid + b"|" + tok + b"|proceed")
            elif phase == b"commit":
                sid, tok, _ = rest.split(b"|", 2)
                append(b"filter-result|" + sid + b"|" + tok + b"|proceed")
            elif phase == b"link-disconnect":
                scores.pop(rest, None)
                bodies.pop(rest, None)
        if out:
            out.append(b"")
            write_all(1, b"\n".join(out))
        if log:
            log.append(b"")
            write_all(2, b"\n".join(log))
        chunk = read(0, 65536)
        if not chunk:
            return 0
        data = carry + chunk


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(0)
