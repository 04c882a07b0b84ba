"""py-filter-rspamd: scan every message with rspamd (a drop-in for poolpOrg's
filter-rspamd).

    filter "rspamd" proc-exec "py-filter-rspamd -url http://127.0.0.1:11333"

At the end of DATA the whole message (un-dot-stuffed) is POSTed to rspamd's
``/checkv2`` with the envelope as request headers, and rspamd's answer is
applied before the message goes on; the verdict is given at commit.  As the
Go filter does:

  -url URL          rspamd's normal worker (default http://localhost:11333);
                    a value not starting with ``http`` is a unix socket path
  -settings-id ID   sent as ``Settings-ID`` (pick an rspamd settings block)

  reject            ``550 5.7.1 <smtp_message>`` at commit
  soft reject       ``451 4.7.1 <smtp_message>`` (rspamd's greylisting)
  add header        ``X-Spam: yes``, ``X-Spam-Score: S / R``, ``X-Spam-Status:
                    Yes, score=S required=R`` + folded ``tests=[SYM=score, ...]``
  rewrite subject   the Subject (all of its lines) becomes rspamd's ``subject``
  greylist, no action   proceed
  dkim-signature    one ``DKIM-Signature`` header per value, first of all

And what the Go filter does not:

  -failMode open|closed  rspamd unreachable, timed out, 5xx or garbage: closed
                    (default) refuses with ``451 4.7.1`` at commit (the Go
                    filter's ``421`` drops the whole session); open passes the
                    message with ``X-Spam-Status: Unknown (not scanned)``.
  -timeout SECONDS  per request (default 15: above rspamd's 8 s task timeout)
  -maxSize BYTES    larger messages pass unscanned, logged (default 10 MiB;
                    0: no limit)
  -mtaTag TAG       sent as ``MTA-Tag`` (usable in rspamd settings)
  -skipAuth         authenticated senders pass unscanned (default: scanned,
                    with ``User``, so rspamd can DKIM-sign them)
  -discard junk|reject  what rspamd's discard / quarantine (action, or
                    ``milter.reject``) becomes: spam headers (default) or 550
  -dryRun           scan and log, but pass every message unchanged

All of ``milter.add_headers`` is written (plain strings at the top as the Go
filter does; ``{value, order}`` objects at their place: order N >= 0 before
the N-th header field rspamd saw, 0 = top, -1 = bottom; lists of both;
folded values line by line), ``milter.remove_headers`` with rspamd's index
(0 = all, N = the N-th, -N = the N-th from the end, continuation lines
included), and ``milter.no_action`` (``X-Rspamd-Action`` instead of the
action).  The client's own ``X-Spam``, ``X-Spam-*``, ``X-Spamd-*`` and
``X-Rspamd-*`` headers (those below smtpd's ``Received``) are removed before
ours are added.  The request carries every envelope header rspamd knows: IP,
Hostname, Helo, From (``<>`` for the null sender), Rcpt per accepted
recipient, Deliver-To (one recipient), Queue-Id, User (after AUTH), MTA-Name,
MTA-Tag, TLS-Version/TLS-Cipher, Settings-ID, ``Pass: All``.

rspamd need not be up when smtpd starts: nothing is contacted before the
first message, and a failure is answered per -failMode, never by exiting.
One log line per message on stderr, keyed by session id.
"""

from __future__ import annotations

import email.header
import json
import math
import re
import struct
import sys
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Sequence

from smtpd_filter_sdk import Filter, Header, Message, fold, reject
from smtpd_filter_sdk.goflags import GoFlags, Options, lookup_timeout
from smtpd_filter_sdk.http import HTTPClient, HTTPError, is_unix_url

PROG = "py-filter-rspamd"
#: ``make demo`` shows it against an rspamd that is not running: -failMode open
DEMO = {"args": ["-url", "http://127.0.0.1:9", "-failMode", "open", "-timeout", "1"]}

DEFAULT_URL = "http://localhost:11333"
#: the order filter-rspamd writes authentication headers in, when rspamd
#: gives several the same place (ARC set first, as RFC 8617 stacks them)
AUTH_RANK = {"arc-seal": 0, "arc-message-signature": 1, "arc-authentication-results": 2, "authentication-results": 3}
#: headers a client must not bring in: they would forge our verdict
SPOOFABLE = re.compile(r"^x-(spam|spam-.*|spamd-.*|rspamd-.*)$", re.IGNORECASE)
_HEADER_NAME = re.compile(r"^[!-9;-~]+$")  # printable ASCII, no colon, no space
TESTS_WIDTH = 68  # filter-rspamd folds tests=[...] at this many characters
UNKNOWN_STATUS = "Unknown (not scanned: rspamd unavailable)"


# --------------------------------------------------------------------------
# rspamd's answer


class ReplyError(ValueError):
    """An answer that is not an rspamd /checkv2 result."""


@dataclass(slots=True)
class Added:
    """One header rspamd asks for: ``order`` None for a plain string."""

    name: str
    value: str
    order: int | None
    seq: int = 0


@dataclass(slots=True)
class Reply:
    action: str
    score: float = 0.0
    required: float = 0.0
    subject: str | None = None
    smtp_message: str = ""
    symbols: dict[str, float] = field(default_factory=dict)
    dkim: list[str] = field(default_factory=list)
    add: list[Added] = field(default_factory=list)
    remove: list[tuple[str, int]] = field(default_factory=list)
    no_action: bool = False
    milter_reject: str | None = None


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0.0
    value = float(value)
    return value if math.isfinite(value) else 0.0


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _added(name: str, item: Any, seq: int) -> Added | None:
    if isinstance(item, str):
        return Added(name, item, None, seq)
    if isinstance(item, dict) and isinstance(item.get("value"), str):
        order = _int(item.get("order", item.get("index")))
        return Added(name, item["value"], order if order is not None else -1, seq)
    return None


def parse_reply(data: bytes | str) -> Reply:
    """rspamd's JSON; what does not fit the protocol is left out, but an
    answer without an action is no answer (ReplyError)."""
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ReplyError(f"not JSON: {str(exc)[:80]}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("action"), str):
        raise ReplyError("no action in the answer")
    reply = Reply(obj["action"], _number(obj.get("score")), _number(obj.get("required_score")))
    if isinstance(obj.get("subject"), str):
        reply.subject = obj["subject"]
    messages = obj.get("messages")
    if isinstance(messages, dict) and isinstance(messages.get("smtp_message"), str):
        reply.smtp_message = messages["smtp_message"]
    symbols = obj.get("symbols")
    if isinstance(symbols, dict):
        for name, sym in symbols.items():
            # printable ASCII without spaces: it goes into a header line
            if name.isascii() and name.isprintable() and " " not in name and name:
                reply.symbols[name] = _number(sym.get("score")) if isinstance(sym, dict) else 0.0
    dkim = obj.get("dkim-signature")
    for value in dkim if isinstance(dkim, list) else [dkim]:
        if isinstance(value, str) and value.strip():
            reply.dkim.append(value)
    milter = obj.get("milter")
    if isinstance(milter, dict):
        adds = milter.get("add_headers")
        if isinstance(adds, dict):
            for name, spec in adds.items():
                if not _HEADER_NAME.match(name):
                    continue
                for item in spec if isinstance(spec, list) else [spec]:
                    added = _added(name, item, len(reply.add))
                    if added is not None:
                        reply.add.append(added)
        removes = milter.get("remove_headers")
        if isinstance(removes, dict):
            for name, index in removes.items():
                if _HEADER_NAME.match(name) and _int(index) is not None:
                    reply.remove.append((name, _int(index)))  # type: ignore[arg-type]
        reply.no_action = milter.get("no_action") is True
        if milter.get("reject") in ("discard", "quarantine"):
            reply.milter_reject = milter["reject"]
    return reply


# --------------------------------------------------------------------------
# Formatting (what the Go filter prints)


def _f32(x: float) -> float:
    try:
        return struct.unpack("f", struct.pack("f", x))[0]
    except OverflowError:
        return math.copysign(math.inf, x)


def go_float(x: float) -> str:
    """Go's ``%v`` of a float32 (filter-rspamd decodes scores as float32):
    the shortest digits that read back as the same float32, no exponent
    between 1e-4 and 1e21.  ``6.0`` -> ``6``, ``15.0`` -> ``15``."""
    f = _f32(x)
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    if f == 0:
        return "-0" if math.copysign(1, f) < 0 else "0"
    for digits in range(0, 12):
        text = f"{f:.{digits}e}"
        if _f32(float(text)) == f:
            break
    mantissa, exp = text.split("e")
    exponent = int(exp)
    if -4 <= exponent < 21:
        out = format(Decimal(text), "f")
        return out.rstrip("0").rstrip(".") if "." in out else out
    mantissa = mantissa.rstrip("0").rstrip(".") if "." in mantissa else mantissa
    return f"{mantissa}e{'-' if exponent < 0 else '+'}{abs(exponent):02d}"


def f3(x: float) -> str:
    """Go's ``%.3f`` of a float32."""
    f = _f32(x)
    return f"{f:.3f}" if math.isfinite(f) else go_float(f)


def spam_status_lines(reply: Reply) -> list[str]:
    """``X-Spam-Status: Yes, score=.. required=..`` and the folded
    ``tests=[...]`` lines, symbols sorted, at most ~68 characters a line.
    (filter-rspamd leaves out the comma where it folds; we keep it, so the
    unfolded list still parses.)"""
    lines = [f"X-Spam-Status: Yes, score={f3(reply.score)} required={f3(reply.required)}"]
    buf = "tests=["
    for i, name in enumerate(sorted(reply.symbols)):
        sym = f"{name}={f3(reply.symbols[name])}"
        if buf and len(sym) + len(buf) > TESTS_WIDTH:
            lines.append("\t" + buf + ("," if i > 0 else ""))
            buf = ""
        if buf and i > 0:
            buf += ", "
        buf += sym
    lines.append("\t" + buf + "]")
    return lines


def value_lines(name: str, value: str) -> list[bytes]:
    """``Name: value`` split where rspamd folded it.  Every continuation line
    starts with white space and none is empty, so a value can never end the
    header block or forge another header."""
    if "\n" not in value and "\r" not in value and "\0" not in value:  # the common case: one line
        return [f"{name}: {value}".encode("utf-8", "surrogateescape")]
    parts = value.replace("\0", "").replace("\r\n", "\n").replace("\r", "\n").split("\n")
    first, rest = parts[0], [p for p in parts[1:] if p.strip()]
    if not first.strip() and rest:
        first = rest.pop(0).strip()
    lines = [f"{name}: {first}"] + [p if p[:1] in (" ", "\t") else "\t" + p for p in rest]
    return [line.encode("utf-8", "surrogateescape") for line in lines]


def subject_lines(subject: str) -> list[bytes]:
    """A new Subject: folded; RFC 2047 encoded words if it is not ASCII."""
    clean = " ".join(subject.replace("\0", "").split())
    if clean.isascii():
        return fold("Subject", clean)
    encoded = email.header.Header(clean, "utf-8", header_name="Subject").encode(linesep="\n")
    return value_lines("Subject", encoded)


def reply_text(text: str, default: str) -> str:
    """rspamd's smtp_message as one safe line of SMTP reply text."""
    clean = " ".join("".join(c if c.isprintable() and c.isascii() else " " for c in text).split())
    return (clean or default)[:400]


# --------------------------------------------------------------------------
# The request


def tls_fields(tls: str | None) -> list[tuple[str, str]]:
    """link-tls ``TLSv1.3:TLS_AES_256_GCM_SHA384:256`` -> TLS-Version, TLS-Cipher."""
    if not tls:
        return []
    parts = tls.split(":")
    out = []
    if parts[0]:
        out.append(("TLS-Version", parts[0]))
    if len(parts) > 1 and parts[1]:
        out.append(("TLS-Cipher", parts[1]))
    return out


def request_headers(session: Any, opts: Options, admd: str | None = None) -> list[tuple[str, str]]:
    """The envelope as rspamd's /checkv2 request headers."""
    src = session.src
    ip = "127.0.0.1" if src is None or src.is_local or not src.is_ip else src.host
    h: list[tuple[str, str]] = [("Pass", "All"), ("IP", ip)]  # as filter-rspamd spells it
    if session.has_rdns:
        h.append(("Hostname", session.rdns))
    if session.helo:
        h.append(("Helo", session.helo))
    tx = session.tx
    if tx is not None:
        if tx.mail_from is not None and tx.mail_from_result in (None, "ok"):
            h.append(("From", tx.mail_from or "<>"))
        rcpts = tx.accepted_rcpts
        h.extend(("Rcpt", r) for r in rcpts)
        if len(rcpts) == 1:
            h.append(("Deliver-To", rcpts[0]))
        h.append(("Queue-Id", tx.msgid))
    if session.authenticated and session.auth_user:
        h.append(("User", session.auth_user))
    mta = session.greeting or admd
    if mta:
        h.append(("MTA-Name", mta))
    if opts.mtaTag:
        h.append(("MTA-Tag", opts.mtaTag))
    h.extend(tls_fields(session.tls))
    settings_id = getattr(opts, "settings-id", "")
    if settings_id:
        h.append(("Settings-ID", settings_id))
    # header values must be one line of latin-1 for HTTP; an address with
    # other bytes goes as UTF-8 read as latin-1 (what rspamd reads back)
    return [(k, v.encode("utf-8", "surrogateescape").decode("latin-1").replace("\r", "").replace("\n", "")) for k, v in h]


# --------------------------------------------------------------------------
# Applying the answer to the message


def _client_start(fields: Sequence[Header]) -> int:
    """Index of the first header the client sent: after smtpd's Received."""
    for i, h in enumerate(fields):
        if h.name.lower() == "received":
            return i + 1
    return 0


def remove_indexed(fields: list[Header], removals: Sequence[tuple[str, int]]) -> list[Header]:
    """rspamd's remove_headers: 0 = every one, N = the N-th, -N = the N-th
    from the end, counted among the fields of that name as rspamd saw them."""
    if not removals:
        return fields
    names = [h.name.lower() for h in fields]
    drop: set[int] = set()
    for name, index in removals:
        lname = name.lower()
        where = [i for i, n in enumerate(names) if n == lname]
        if index == 0:
            drop.update(where)
        elif 0 < index <= len(where):
            drop.add(where[index - 1])
        elif index < 0 and -index <= len(where):
            drop.add(where[index])
    return [h for i, h in enumerate(fields) if i not in drop]


def strip_spoofed(fields: list[Header]) -> tuple[list[Header], int]:
    """Drop the client's X-Spam / X-Spam-* / X-Spamd-* / X-Rspamd-* fields."""
    start = _client_start(fields)
    kept = fields[:start] + [h for h in fields[start:] if not SPOOFABLE.match(h.name)]
    return kept, len(fields) - len(kept)


def _position(order: int, count: int) -> int:
    if order >= 0:
        return min(order, count)
    return count + order + 1 if -order <= count else 0


def place(fields: list[Header], added: Sequence[Added]) -> list[Header]:
    """Insert ordered headers at their places in ``fields`` (positions count
    the fields as they are before any insertion; several at one place go
    ARC set, Authentication-Results, then in rspamd's order)."""
    if not added:
        return fields
    count = len(fields)
    slots: dict[int, list[tuple[int, int, Added]]] = {}
    for a in added:
        pos = _position(a.order if a.order is not None else 0, count)
        slots.setdefault(pos, []).append((AUTH_RANK.get(a.name.lower(), 9), a.seq, a))
    out = list(fields)
    for pos in sorted(slots, reverse=True):  # from the bottom, so the positions still hold
        group = sorted(slots[pos], key=lambda t: (t[0], t[1]))
        out[pos:pos] = [Header(a.name, value_lines(a.name, a.value)) for _, _, a in group]
    return out


def spam_headers(reply: Reply) -> list[Header]:
    """What filter-rspamd adds for ``add header``."""
    out = [
        Header("X-Spam", [b"X-Spam: yes"]),
        Header("X-Spam-Score", [f"X-Spam-Score: {go_float(reply.score)} / {go_float(reply.required)}".encode()]),
    ]
    if reply.symbols:
        out.append(Header("X-Spam-Status", [line.encode() for line in spam_status_lines(reply)]))
    return out


@dataclass(slots=True)
class Verdict:
    decision: Any  # a Reject, or None to proceed
    what: str  # for the log line


def decide(reply: Reply, msg: Message, opts: Options) -> Verdict:
    """Apply rspamd's answer to ``msg`` (unless it is refused) and say what
    to answer at commit."""
    action = reply.action
    if reply.milter_reject and action == "reject":
        action = reply.milter_reject
    if reply.no_action:
        action = f"no action ({action})"
    if action == "reject" or (action in ("discard", "quarantine") and opts.discard == "reject"):
        text = reply_text(reply.smtp_message, "Spam message rejected")
        return Verdict(reject(550, text, enhanced="5.7.1"), f"{reply.action}: 550 5.7.1 {text}")
    if action == "soft reject":
        text = reply_text(reply.smtp_message, "Try again later")
        return Verdict(reject(451, text, enhanced="4.7.1"), f"soft reject: 451 4.7.1 {text}")

    fields = remove_indexed(msg.headers.fields, reply.remove)
    fields, spoofed = strip_spoofed(fields)
    ordered = [a for a in reply.add if a.order is not None]
    plain = [a for a in reply.add if a.order is None]
    top = [Header("DKIM-Signature", value_lines("DKIM-Signature", v)) for v in reply.dkim]
    if action in ("add header", "discard", "quarantine"):
        theirs = {a.name.lower() for a in reply.add}
        top += [h for h in spam_headers(reply) if h.name.lower() not in theirs]
    if action in ("discard", "quarantine") or reply.no_action:
        top.append(Header("X-Rspamd-Action", [f"X-Rspamd-Action: {reply.action}".encode()]))
    top += [Header(a.name, value_lines(a.name, a.value)) for a in plain]
    fields = place(fields, ordered)
    if action == "rewrite subject" and reply.subject is not None:
        new = Header("Subject", subject_lines(reply.subject))
        at = next((i for i, h in enumerate(fields) if h.name.lower() == "subject"), None)
        if at is None:
            fields.append(new)
        else:
            fields[at] = new
    msg.headers.fields = top + fields
    extra = f", {spoofed} spoofed header(s) removed" if spoofed else ""
    return Verdict(None, f"{action}: proceed{extra}")


# --------------------------------------------------------------------------
# Flags and the filter


def size_limit(value: int) -> int:
    if value < 0:
        raise ValueError("must be >= 0")
    return value


def rspamd_url(value: str) -> str:
    if is_unix_url(value):
        if not value:
            raise ValueError("empty")
        return value
    try:
        HTTPClient(value, timeout=1)
    except ValueError:
        raise ValueError("not an http://HOST[:PORT] URL (https is not supported: rspamd is local)") from None
    return value


def flags() -> GoFlags:
    g = GoFlags(PROG, "rspamd spam filter for OpenSMTPD (drop-in for filter-rspamd).")
    g.string("url", DEFAULT_URL, "rspamd's URL, or the path of its unix socket", metavar="URL", validate=rspamd_url)
    g.string("settings-id", "", "rspamd settings id sent with every message", metavar="ID")
    g.choice("failMode", "closed", ("open", "closed"), "rspamd unavailable: pass (open) or 451 (closed)", metavar="MODE")
    g.float("timeout", 15.0, "seconds a request to rspamd may take", validate=lookup_timeout)
    g.int("maxSize", 10 << 20, "messages larger than this many bytes pass unscanned (0: no limit)", metavar="BYTES", validate=size_limit)
    g.string("mtaTag", "", "MTA-Tag sent to rspamd", metavar="TAG")
    g.bool("skipAuth", False, "authenticated senders pass unscanned")
    g.choice("discard", "junk", ("junk", "reject"), "rspamd discard/quarantine: spam headers (junk) or 550", metavar="MODE")
    g.bool("dryRun", False, "scan and log, but pass every message unchanged")
    return g


class Scanner:
    """The rspamd side, shared by all sessions."""

    def __init__(self, opts: Options, client: HTTPClient | None = None) -> None:
        self.opts = opts
        self.client = client or HTTPClient(opts.url, timeout=opts.timeout, connect_timeout=min(opts.timeout, 5.0))
        self.admd: str | None = None

    async def scan(self, session: Any, body: bytes) -> Reply:
        reply = await self.client.post("/checkv2", body, request_headers(session, self.opts, self.admd))
        return parse_reply(reply.body)


def _qid(session: Any) -> str:
    return f"qid={session.tx.msgid} " if session.tx is not None else ""


def build(opts: Options, client: HTTPClient | None = None) -> Filter:
    """The filter for parsed flags (``client`` for tests)."""
    # -maxSize is the SDK's cap: a larger message is never buffered, it
    # streams on unchanged and on_oversize is told
    f = Filter(
        "rspamd",
        on_error="fail-open" if opts.failMode == "open" else "fail-closed",
        deadline=opts.timeout + 5.0,
        max_message_size=opts.maxSize or None,
    )
    scanner = Scanner(opts, client)
    f.scanner = scanner  # type: ignore[attr-defined]  (for tests)
    dry = " (dry run)" if opts.dryRun else ""

    @f.on_config
    def config(cfg):
        scanner.admd = cfg.admd

    @f.on_shutdown
    async def close():
        await scanner.client.close()

    @f.on_message
    async def scan(session, msg):
        qid = _qid(session)
        if opts.skipAuth and session.authenticated:
            f.log(f"{qid}user={session.auth_user}: authenticated, not scanned", session.id)
            return None
        body = msg.as_bytes()
        try:
            reply = await scanner.scan(session, body)
        except (HTTPError, ReplyError) as exc:
            return failed(session, msg, qid, str(exc))
        score = f"score={reply.score:.2f}/{reply.required:.2f}"
        if opts.dryRun:
            probe = Message(type(msg.headers)(list(msg.headers.fields)), [], msg.separated)
            verdict = decide(reply, probe, opts)
            f.log(f"{qid}{score} {verdict.what}{dry}", session.id)
            return None
        verdict = decide(reply, msg, opts)
        f.log(f"{qid}{score} {verdict.what}", session.id)
        return verdict.decision

    @f.on_oversize
    def oversize(session, size):
        qid = _qid(session)
        f.log(f"{qid}larger than -maxSize {opts.maxSize} (over {size} bytes): passed unscanned", session.id)

    def failed(session, msg, qid: str, why: str):
        if opts.failMode == "open":
            what = "passed unscanned (-failMode open)"
            decision = None
            if not opts.dryRun:
                fields, _ = strip_spoofed(msg.headers.fields)
                msg.headers.fields = [Header("X-Spam-Status", [f"X-Spam-Status: {UNKNOWN_STATUS}".encode()])] + fields
        else:
            what = "451 (-failMode closed)"
            decision = reject(451, "Try again later (spam filter unavailable)", enhanced="4.7.1")
        f.log(f"{qid}rspamd failed ({why}): {what}{dry}", session.id)
        return None if opts.dryRun else decision

    return f


def main(argv: Sequence[str] | None = None) -> int:
    g = flags()
    opts = g.parse(argv)
    f = build(opts)
    f.log(
        f"starting ({f.scanner.client!r}, failMode={opts.failMode}, maxSize={opts.maxSize}, "  # type: ignore[attr-defined]
        f"skipAuth={opts.skipAuth}, discard={opts.discard}{', dry run' if opts.dryRun else ''})"
    )
    f.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
