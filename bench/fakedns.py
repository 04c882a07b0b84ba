#!/usr/bin/env python3
"""Tiny fake DNS server for benchmarks (UDP, stdlib only, loopback only).

run.py starts it inside its private network namespace (only ``lo`` exists
there and /etc/resolv.conf is bind-mounted to ``nameserver 127.0.0.1``), so
filters that look things up at link-connect (filter-senderscore,
py-filter-senderscore, rDNS filters) get instant answers and nothing can leave
the machine.

Answers:
  A    *.score.senderscore.com   -> 127.0.4.SCORE (default 77)
  PTR  1.0.0.127.in-addr.arpa    -> localhost
  A    localhost, *.rig.test      -> 127.0.0.1
  anything else                   -> NXDOMAIN (AAAA of known names: NODATA)

  fakedns.py [--addr 127.0.0.1] [--port 53] [--score 77]
"""
import argparse
import ipaddress
import socket
import struct
import sys


def parse_qname(msg: bytes, off: int):
    labels = []
    while True:
        n = msg[off]
        if n == 0:
            return ".".join(labels), off + 1
        if n & 0xC0:
            raise ValueError("compressed name in question")
        labels.append(msg[off + 1:off + 1 + n].decode("ascii", "replace"))
        off += 1 + n


def encode_name(name: str) -> bytes:
    out = b""
    for lab in name.rstrip(".").split("."):
        if lab:
            out += bytes([len(lab)]) + lab.encode()
    return out + b"\0"


def answer(q: bytes, score: int):
    if len(q) < 17:
        return None
    qid, flags, qd = struct.unpack(">HHH", q[:6])
    try:
        name, off = parse_qname(q, 12)
        qtype, _qclass = struct.unpack(">HH", q[off:off + 4])
    except (ValueError, IndexError, struct.error):
        return None
    question = q[12:off + 4]
    lname = name.lower().rstrip(".")
    rcode, answers = 3, []
    if lname.endswith(".score.senderscore.com"):
        rcode = 0
        if qtype == 1:
            answers.append((1, socket.inet_aton("127.0.4.%d" % score)))
    elif lname == "1.0.0.127.in-addr.arpa":
        rcode = 0
        if qtype == 12:
            answers.append((12, encode_name("localhost")))
    elif lname == "localhost" or lname == "rig.test" or lname.endswith(".rig.test"):
        rcode = 0
        if qtype == 1:
            answers.append((1, socket.inet_aton("127.0.0.1")))
    rflags = 0x8000 | 0x0400 | (flags & 0x0100) | 0x0080 | rcode
    out = struct.pack(">HHHHHH", qid, rflags, 1, len(answers), 0, 0) + question
    for rtype, rdata in answers:
        out += b"\xc0\x0c" + struct.pack(">HHIH", rtype, 1, 60, len(rdata)) + rdata
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=53)
    ap.add_argument("--score", type=int, default=77)
    a = ap.parse_args()
    if not ipaddress.ip_address(a.addr).is_loopback:
        sys.exit("fakedns: refusing to bind a non-loopback address")
    u = socket.socket(socket.AF_INET6 if ":" in a.addr else socket.AF_INET, socket.SOCK_DGRAM)
    u.bind((a.addr, a.port))
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        q, peer = u.recvfrom(4096)
        r = answer(q, a.score)
        if r is not None:
            u.sendto(r, peer)


if __name__ == "__main__":
    sys.exit(main())
