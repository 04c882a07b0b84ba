#!/usr/bin/env python3
"""A raw-protocol filter (stdlib only, no SDK): the e2e harness's own control.

Speaks protocol 0.6 by hand: reads config until ``config|ready``, registers
a few phases + reports, echoes every data-line verbatim, answers ``proceed``
to everything else, flushes every answer, exits on EOF.  Options:

  --log FILE       append every line received from smtpd to FILE ("-": stderr,
                   which smtpd copies into its log as "<filter name>: <line>")
  --header 'N: v'  prepend this header line to every message
"""
import argparse
import sys

PHASES = ("connect", "helo", "ehlo", "mail-from", "rcpt-to", "data", "data-line", "commit")
REPORTS = ("*",)  # every smtp-in report event (the wildcard is accepted by 6.8)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--log")
    ap.add_argument("--header")
    a = ap.parse_args()
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    log = None
    if a.log == "-":
        log = sys.stderr.buffer
    elif a.log:
        log = open(a.log, "ab", buffering=0)
    header = a.header.encode() if a.header else None
    for line in inp:
        if log:
            log.write(line)
            log.flush()
        if line.rstrip(b"\n") == b"config|ready":
            break
    else:
        return
    for p in PHASES:
        out.write(b"register|filter|smtp-in|%s\n" % p.encode())
    for r in REPORTS:
        out.write(b"register|report|smtp-in|%s\n" % r.encode())
    out.write(b"register|ready\n")
    out.flush()
    first_line = set()  # sessions whose next data-line is the message's first
    for line in inp:
        if log:
            log.write(line)
            log.flush()
        f = line.rstrip(b"\n").split(b"|", 7)
        if f[0] == b"report" and len(f) >= 6 and f[4] == b"tx-begin":
            first_line.add(f[5])
        if f[0] != b"filter" or len(f) < 7:
            continue
        phase, sid, tok = f[4], f[5], f[6]
        if phase == b"data-line":
            payload = f[7] if len(f) > 7 else b""
            if header and sid in first_line:
                out.write(b"filter-dataline|%s|%s|%s\n" % (sid, tok, header))
            first_line.discard(sid)
            out.write(b"filter-dataline|%s|%s|%s\n" % (sid, tok, payload))
        else:
            out.write(b"filter-result|%s|%s|proceed\n" % (sid, tok))
        out.flush()


if __name__ == "__main__":
    main()
