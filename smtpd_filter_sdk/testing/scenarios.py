"""The checker's built-in sessions: a seeded set of SMTP sessions that hit
what breaks filters in the field (protocol.md §7, §9): long lines up to the
65,533 bytes smtpd forwards, ``|`` in addresses and AUTH usernames, 8-bit
content, dot lines, null senders, RSET, unix-socket and IPv6 clients, clients
that leave in the middle of DATA or idle into smtpd's timeout, and sessions
interleaved with each other.

The seed changes the generated content (addresses, 8-bit bytes, lengths
near the limits), never the kind of session, so a failure reproduces with
the same ``--seed``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .simulator import (
    SMTP_LINE_MAX,
    Action,
    Auth,
    Command,
    Connect,
    Drop,
    Ehlo,
    Helo,
    Idle,
    Mail,
    Message,
    Noop,
    Quit,
    Rcpt,
    Rset,
    StartTLS,
    message_lines,
)


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    sessions: tuple[tuple[Action, ...], ...]  # run interleaved


def _word(rng: random.Random, n: int = 6) -> str:
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(n))


def _filler(rng: random.Random, size: int) -> bytes:
    """``size`` bytes of printable text (no leading dot, no spaces at the ends)."""
    unit = (_word(rng, 7) + " ").encode()
    out = (unit * (size // len(unit) + 1))[:size]
    return b"x" + out[1:-1] + b"x" if size > 2 else b"x" * size


def builtin_scenarios(seed: int = 0, *, long_lines: bool = True) -> list[Scenario]:
    rng = random.Random(seed)
    dom = _word(rng) + ".example"
    sender = f"{_word(rng)}@{dom}"
    rcpt = f"{_word(rng)}@rcpt.example"
    out: list[Scenario] = []

    def add(name: str, description: str, *sessions: list[Action]) -> None:
        out.append(Scenario(name, description, tuple(tuple(s) for s in sessions)))

    add(
        "plain",
        "EHLO, one recipient, a small message, QUIT",
        [
            Connect("192.0.2.10", "mail." + dom),
            Ehlo("mail." + dom),
            Message(sender, (rcpt,), message_lines(sender, [rcpt], b"Hello,\n\njust a plain message.\n-- \nBob\n")),
            Quit(),
        ],
    )

    eight_bit = "Grüße aus Köln – ½ € ✓".encode() + b" \xe9t\xe9 \xff\xfe raw"
    body = b"\n".join(
        [
            b"first line",
            b".a line starting with a dot",
            b".",
            b"..",
            b"...three",
            b"",
            b"pipes | in | the | body ||",
            b"tabs\there\tand trailing spaces   ",
            eight_bit,
            b"a bare \r carriage return inside",
            _filler(rng, 998),
            _filler(rng, 2100),
            _filler(rng, 5000),
            b"last line",
        ]
    )
    headers = [
        ("From", f"=?utf-8?q?J=C3=B6rg?= <{sender}>"),
        ("To", f"<{rcpt}>, <second@rcpt.example>, <third@rcpt.example>"),
        ("Subject", "a folded\n\tsubject line with 8-bit: " + eight_bit.decode("utf-8", "surrogateescape")),
        ("X-Pipe", "a|b|c"),
        ("Date", "Fri, 20 Nov 2026 12:00:00 +0000"),
        ("Message-ID", f"<{_word(rng, 12)}@{dom}>"),
    ]
    add(
        "multi",
        "SIZE=/BODY= params, three recipients, dot lines, folded and 8-bit headers, |, tabs, lines of 998-5000 bytes",
        [
            Connect("192.0.2.11", "mx." + dom),
            Ehlo("mx." + dom),
            Message(sender, (rcpt, "second@rcpt.example", "third@rcpt.example"), message_lines(sender, [rcpt], body, headers), mail_params="SIZE=9000 BODY=8BITMIME"),
            Quit(),
        ],
    )

    user = f"VBA|{_word(rng, 4)}|x"
    piped_from = f"{_word(rng, 3)}|{_word(rng, 3)}@{dom}"
    piped_rcpt = f"a|b|{_word(rng, 3)}@rcpt.example"
    add(
        "pipes",
        "| in the AUTH username, MAIL FROM and RCPT TO (the crash behind protocol 0.6 and 0.7)",
        [
            Connect("192.0.2.12", "client." + dom),
            Ehlo("client." + dom),
            StartTLS(),
            Ehlo("client." + dom),
            Auth(user, "wrong", result="fail"),
            Auth(user, "s3cret|pw"),
            Message(piped_from, (piped_rcpt,), message_lines(piped_from, [piped_rcpt], b"body | with | pipes\n")),
            Quit(),
        ],
    )

    add(
        "helo-rset",
        "HELP before HELO, plain HELO, NOOP, unknown commands, RSET mid-transaction, a null sender, two messages",
        [
            Connect("192.0.2.13", "host." + dom),
            Command("HELP"),
            Helo("plain-helo." + dom),
            Noop(),
            Command("VRFY alice"),
            Command("FOOBAR unknown command"),
            Mail(sender),
            Rcpt(rcpt),
            Rset(),
            Message(sender, (rcpt,), message_lines(sender, [rcpt], b"first message\n")),
            Message("", (rcpt,), message_lines("", [rcpt], b"bounce-like message from the null sender\n")),
            Quit(),
        ],
    )

    add(
        "auth-login",
        "STARTTLS, AUTH LOGIN, a message from an authenticated client",
        [
            Connect("192.0.2.14", "submit." + dom),
            Ehlo("submit." + dom),
            StartTLS(),
            Ehlo("submit." + dom),
            Auth(f"{_word(rng)}@{dom}", mechanism="LOGIN"),
            Message(sender, (rcpt,), message_lines(sender, [rcpt], b"sent after AUTH LOGIN\n")),
            Quit(),
        ],
    )

    add(
        "local-ipv6",
        "a local (unix socket) submission and an IPv6 client without reverse DNS, interleaved",
        [
            Connect("local", "localhost"),
            Helo("localhost"),
            Message("root@localhost", (rcpt,), message_lines("root@localhost", [rcpt], b"local submission\n")),
            Quit(),
        ],
        [
            Connect("2001:db8::25", "<unknown>", "fail"),
            Ehlo("[IPv6:2001:db8::25]"),
            Message(sender, (rcpt,), message_lines(sender, [rcpt], b"over IPv6\n")),
            Quit(),
        ],
    )

    add(
        "interleaved",
        "three clients at once, each sending a message",
        *[
            [
                Connect(f"198.51.100.{i + 1}", f"c{i}." + dom),
                Ehlo(f"c{i}." + dom),
                Message(f"u{i}@{dom}", (rcpt,), message_lines(f"u{i}@{dom}", [rcpt], f"message {i}\n".encode() * (i + 1))),
                Quit(),
            ]
            for i in range(3)
        ],
    )

    add(
        "abort",
        "a client that leaves in the middle of DATA, one that idles into the session timeout, one that just drops",
        [
            Connect("203.0.113.5", "gone." + dom),
            Ehlo("gone." + dom),
            Message(sender, (rcpt,), message_lines(sender, [rcpt], b"line 1\nline 2\nline 3\n"), abort_after=4),
        ],
        [
            Connect("203.0.113.6", "idle." + dom),
            Ehlo("idle." + dom),
            Mail(sender),
            Idle(),
        ],
        [Connect("203.0.113.7", "drop." + dom), Ehlo("drop." + dom), Drop()],
    )

    if long_lines:
        # A 65,400+ byte line (echoed it still fits smtpd's 65,535-byte limit),
        # one just past the limit once echoed, and the longest smtpd forwards.
        fits = 65400 + rng.randrange(80)
        past = 65486 + rng.randrange(40)
        add(
            "long-lines",
            f"body lines of {fits:,}, {past:,} and {SMTP_LINE_MAX:,} bytes (smtpd forwards up to {SMTP_LINE_MAX:,})",
            [
                Connect("192.0.2.20", "big." + dom),
                Ehlo("big." + dom),
                Message(sender, (rcpt,), message_lines(sender, [rcpt], [b"short", _filler(rng, fits), b"tail"])),
                Message(sender, (rcpt,), message_lines(sender, [rcpt], [_filler(rng, past), b"end"])),
                Message(sender, (rcpt,), message_lines(sender, [rcpt], [_filler(rng, SMTP_LINE_MAX), b"end"])),
                Quit(),
            ],
        )
    return out


def eof_sessions(seed: int = 0) -> list[list[Action]]:
    """Sessions for the checker's last step: sent up to the first thing each
    waits for from the filter (a message goes whole, final ``.`` included),
    then stdin closes.  Each request and message read must be answered
    before the filter exits."""
    rng = random.Random(seed)
    dom = _word(rng) + ".example"
    sender, rcpt = f"{_word(rng)}@{dom}", f"{_word(rng)}@rcpt.example"
    body = message_lines(sender, [rcpt], b"Hello,\n\n.a dot line, then the end.\n")
    return [
        [Connect("192.0.2.30", "mail." + dom), Ehlo("mail." + dom), Message(sender, (rcpt,), body), Quit()],
        [Connect("2001:db8::30", "six." + dom), Ehlo("six." + dom), Message(sender, (rcpt,), body), Quit()],
        [Connect("198.51.100.30", "<unknown>", fcrdns="error"), Helo("unknown." + dom), Quit()],
    ]
