#!/usr/bin/env python3
"""The baseline: the fastest reasonable hand-written pass-through filter.

Handshake, register data-line and commit, then: os.read(0, 65536), split the
chunk into lines, answer each data-line with ``b"filter-dataline|" +
line.split(b"|", 5)[5]`` (= ``sid|token|payload`` unchanged), each commit with
``filter-result|sid|token|proceed``, and write everything produced by one
chunk with one os.write.  Below protocol 0.5 the answer ids are ``token|sid``.
No SDK, no session state, no validation: this is what the SDK's pass-through
is measured against (target: SDK >= 70 % of these lines/s).
"""
import os
import sys


def write_all(data: bytes) -> None:
    mv = memoryview(data)
    while mv:
        mv = mv[os.write(1, mv):]


def handshake() -> bytes | None:
    """Read up to ``config|ready`` (it may span several reads): what came
    after it, or None at EOF."""
    buf = b""
    while b"config|ready\n" not in buf:
        chunk = os.read(0, 65536)
        if not chunk:
            return None
        buf += chunk
    return buf[buf.index(b"config|ready\n") + 13:]


def main() -> int:
    rest = handshake()
    if rest is None:
        return 0
    write_all(b"register|filter|smtp-in|data-line\n"
              b"register|filter|smtp-in|commit\n"
              b"register|ready\n")

    old = (b"0.1", b"0.2", b"0.3", b"0.4")   # responses are TOK|SID below 0.5
    data = rest  # what came with the handshake is answered first (EOF may follow)
    read = os.read
    while True:
        cut = data.rfind(b"\n") + 1
        carry = data[cut:]
        lines = data[:cut].split(b"\n")
        lines.pop()
        if (b"|commit|" not in data and b"report|" not in data
                and not data.startswith(b"filter|0.4|")):
            # hot path: a chunk of data-lines only
            out = [b"filter-dataline|" + line.split(b"|", 5)[5] for line in lines]
        else:
            out = []
            append = out.append
            for line in lines:
                f = line.split(b"|", 5)
                if len(f) < 6 or f[0] != b"filter":
                    continue                      # reports: not registered, ignore
                if f[4] == b"data-line":
                    if f[1] in old:
                        sid, tok, payload = f[5].split(b"|", 2)
                        append(b"filter-dataline|" + tok + b"|" + sid + b"|" + payload)
                    else:
                        append(b"filter-dataline|" + f[5])
                else:
                    sid, tok = f[5].split(b"|", 2)[:2]
                    if f[1] in old:
                        sid, tok = tok, sid
                    append(b"filter-result|" + sid + b"|" + tok + b"|proceed")
        if out:
            out.append(b"")
            write_all(b"\n".join(out))
        chunk = read(0, 65536)
        if not chunk:
            return 0
        data = carry + chunk


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(0)
