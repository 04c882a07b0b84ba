"""py-filter-dkimsign: DKIM-sign outgoing mail in OpenSMTPD (a drop-in for
Martijn van Duren's filter-dkimsign).

    filter "dkimsign" proc-exec "py-filter-dkimsign -d example.org -s sel1 -k /etc/mail/dkim/sel1.key"

The flags of filter-dkimsign(8), with its defaults and its output:

  -a ALG      rsa-sha256 (default) or ed25519-sha256; the -k key must be of
              that kind
  -c CANON    simple or relaxed, as header[/body] (default simple/simple;
              one word means body simple)
  -d DOMAIN   signing domain, repeatable.  The From field's first mailbox
              picks one: its domain exactly, else its nearest parent among
              the configured domains, else the first -d
  -D FILE     more signing domains, one per line, # comments (re-read on SIGHUP)
  -h H1:H2    header fields to sign (must include from; default the RFC 6376
              §5.4.1 list filter-dkimsign uses); h= lists them bottom-up
  -k FILE     private key (PEM, RSA or Ed25519), -s SELECTOR its selector
  -t          add t= (signing time);  -x SECS  add x= (expiry)
  -z / -zz    add z= with the signed header fields / all header fields

The signature goes first, above smtpd's Received field, folded at 78
columns as filter-dkimsign folds it: with the same key, message and flags
(no -t) both write the same DKIM-Signature, byte for byte.

And what filter-dkimsign does not:

  -K DOMAIN:SELECTOR:FILE  a key and selector for one domain (repeatable; two
              keys for one domain, RSA and Ed25519, give two signatures,
              RFC 8463 dual signing); -keyTable FILE: such lines in a file
  -oversign H1:H2  list these once more in h= than present, so a field added
              later breaks the signature ("singletons": the RFC 5322 fields
              that occur once)
  -authOnly   sign only mail of authenticated or local (unix socket) sessions
  -aligned    sign only when the envelope sender's domain is the signing
              domain or below it (null senders, bounces, are signed)
  -maxSize N  messages over N bytes pass unsigned, never held (default 36700160,
              smtpd's default max-message-size)
  -dryRun     decide and log, add nothing

Keys are read at start and on SIGHUP (a bad reload keeps the old keys); a
missing or unusable key is a usage error naming the file, a key file other
users can read is a warning.  Signing failures (no From, no domain, no key,
too big) pass the message unsigned with one log line: this filter never
refuses or breaks mail.  The body is hashed as it arrives; RSA and Ed25519
sign through OpenSSL (``cryptography``).
"""

from __future__ import annotations

import os
import re
import stat
import sys
import time
from typing import Any, Sequence

from smtpd_filter_sdk import Filter, Header
from smtpd_filter_sdk.goflags import GoFlags, Options as FlagValues
from smtpd_filter_sdk.netaddr import DomainList, ListFileError, parse_domain, read_list

try:  # the installed package, or filters/ run from a checkout
    from smtpd_filters import dkimcore as dkim
except ImportError:  # pragma: no cover - python3 filters/dkimsign.py
    import dkimcore as dkim  # type: ignore[no-redef]

PROG = "py-filter-dkimsign"
DEFAULT_MAX_SIZE = 36700160
_SELECTOR = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*")
#: ``make demo`` signs with a throw-away Ed25519 key made at start.
DEMO = {"args": ["-testKey", "-a", "ed25519-sha256", "-d", "example.org", "-s", "demo"]}


def flags() -> GoFlags:
    g = GoFlags(PROG, "DKIM-sign outgoing mail (RFC 6376, RFC 8463), as filter-dkimsign does")
    g.choice("a", "rsa-sha256", ("rsa-sha256", "ed25519-sha256"), "signing algorithm of the -k key", metavar="ALG")
    g.string("c", "simple/simple", "canonicalization, header[/body]", metavar="CANON", validate=check_canon)
    g.strings("d", "signing domain (the From domain, its nearest parent, else the first -d)", metavar="DOMAIN")
    g.string("D", "", "file of signing domains, one per line, # comments", metavar="FILE")
    g.string("h", ":".join(dkim.DEFAULT_HEADERS), "header fields to sign, colon-separated, must include from", metavar="H1:H2")
    g.string("k", "", "private key file (PEM)", metavar="FILE")
    g.string("s", "", "selector of the -k key", metavar="SELECTOR", validate=check_selector)
    g.bool("t", False, "add t= (time of signing)")
    g.int("x", 0, "add x=, the signature expiring SECS after signing", metavar="SECS")
    g.bool("z", False, "add z= with the signed header fields")
    g.bool("zz", False, "add z= with all header fields")
    g.strings("K", "key and selector for one domain (two per domain: dual signing)", metavar="DOMAIN:SELECTOR:FILE")
    g.string("keyTable", "", "file of DOMAIN:SELECTOR:FILE lines", metavar="FILE")
    g.string("oversign", "", "header fields to oversign, colon-separated, or 'singletons'", metavar="H1:H2")
    g.bool("authOnly", False, "sign only authenticated or local sessions")
    g.bool("aligned", False, "sign only when the envelope sender is in the signing domain")
    g.int("maxSize", DEFAULT_MAX_SIZE, "messages over N bytes pass unsigned", metavar="N")
    g.bool("dryRun", False, "decide and log, never add a signature")
    g.bool("testKey", False, "sign with a throw-away key of the -a kind made at start (demos, tests)", hidden=True)
    return g


def check_canon(text: str) -> None:
    dkim.parse_canon(text)  # raises ValueError: a usage error


def header_list(text: str, flag: str, *, need_from: bool) -> tuple[str, ...]:
    names = tuple(n.lower() for n in text.split(":")) if text else ()
    if any(not dkim.valid_field_name(n) for n in names):
        raise ValueError(f"-{flag}: not a header field name list: {text!r}")
    if need_from and "from" not in names:
        raise ValueError(f"-{flag}: the From header must be included")
    return names


def check_selector(text: str) -> str:
    """A selector is a DNS name under _domainkey (RFC 6376 §3.1)."""
    if not _SELECTOR.fullmatch(text):
        raise ValueError(f"selector {text!r} is not a DNS name")
    return text


def parse_key_entry(text: str) -> tuple[str, str, str]:
    domain, _, rest = text.partition(":")
    selector, _, path = rest.partition(":")
    if not (domain and selector and path):
        raise ValueError("want DOMAIN:SELECTOR:FILE")
    return parse_domain(domain), check_selector(selector), path


class Keys:
    """Everything read from files: the signing domains and the identities
    of each.  Built whole at start and on SIGHUP, then swapped in."""

    def __init__(self, opts: FlagValues, log: Any) -> None:
        self.fallback = opts.d[0].lower().rstrip(".") if opts.d else None
        domains = [parse_domain(d) for d in opts.d]
        if opts.D:
            domains += read_list(_read(opts.D), parse_domain, opts.D)  # type: ignore[arg-type]
        entries = [parse_key_entry(e) for e in opts.K]
        if opts.keyTable:
            entries += read_list(_read(opts.keyTable), parse_key_entry, opts.keyTable)  # type: ignore[arg-type]
        loaded: dict[str, dkim.Key] = {}

        def key(path: str) -> dkim.Key:
            if path not in loaded:
                loaded[path] = dkim.load_key(path)
                mode = os.stat(path).st_mode
                if mode & stat.S_IROTH:
                    log(f"warning: key file {path} is readable by other users (chmod o-r)")
            return loaded[path]

        self.identities: dict[str, list[dkim.Identity]] = {}
        for domain, selector, path in entries:
            self.identities.setdefault(domain, []).append(dkim.Identity(domain, selector, key(path)))
        self.default: dkim.Key | None = None
        if opts.testKey:
            self.default = dkim.throwaway_key(opts.a.split("-")[0])
        elif opts.k:
            self.default = key(opts.k)
            if self.default.algorithm != opts.a:
                raise dkim.KeyFileError(f"key file {opts.k} is a {self.default.kind} key, not for -a {opts.a}")
        self.selector = opts.s
        self.domains = DomainList(domains + list(self.identities))

    def choose(self, from_domain: str | None) -> str | None:
        """filter-dkimsign's choice: the From domain, its nearest configured
        parent, else the first -d."""
        return self.domains.match(from_domain) or self.fallback

    def signers(self, domain: str) -> list[dkim.Identity]:
        own = self.identities.get(domain)
        if own:
            return own
        if self.default is not None:
            return [dkim.Identity(domain, self.selector, self.default)]
        return []


def _read(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ListFileError(path, None, str(getattr(exc, "strerror", None) or exc)) from None


class Signature:
    """One message being signed: the body hash grows as lines arrive; at the
    end every identity of the domain signs the header block."""

    __slots__ = ("body_hash", "domain", "signers", "opts", "log", "sid", "size")

    def __init__(self, domain: str, signers: list[dkim.Identity], opts: dkim.Options, log: Any, sid: str) -> None:
        self.body_hash = dkim.BodyHash(opts.body_canon)
        self.domain, self.signers, self.opts, self.log, self.sid = domain, signers, opts, log, sid
        self.size = 0

    def body(self, chunk: bytes) -> None:
        self.size += len(chunk)
        self.body_hash.update(chunk)

    def end(self, headers: Any) -> None:
        fields = [(h.name, h.lines) for h in headers.fields if h.name]
        bh = self.body_hash.digest()
        now = int(time.time())
        # Signing stays on the loop's thread: on a worker thread (end()
        # returning an awaitable) it cost 0.78x the messages/s, 1.4x the CPU
        # and 80 MB RSS here (bench/README.md, py-filter-dkimsign).
        made = [dkim.sign(fields, bh, who, self.opts, now) for who in self.signers]
        for lines in reversed(made):  # the first identity's signature on top
            headers.fields.insert(0, Header("DKIM-Signature", lines))
        what = ", ".join(f"s={who.selector} a={who.key.algorithm}" for who in self.signers)
        self.log(f"signed d={self.domain} {what} ({self.size} body bytes)", self.sid)


def envelope_domain(session: Any) -> str | None:
    tx = session.tx
    sender = tx.mail_from if tx is not None else None
    if not sender:
        return None
    return sender.rpartition("@")[2].lower().rstrip(".") or None


def build(opts: FlagValues, keys: Keys) -> Filter:
    # The session fields the flags make start() read: the code reads them
    # all, whatever the flags, so the SDK could not tell the difference, and
    # on 50-line mail each report event not needed costs as much as a line.
    reads = ["authenticated", "is_local"] if opts.authOnly else []
    if opts.aligned:
        reads.append("tx.mail_from")
    f = Filter("dkimsign", on_error="fail-open", max_message_size=opts.maxSize, track=reads)
    f.keys = keys  # type: ignore[attr-defined]  (for tests)
    oversign = dkim.SINGLETONS if opts.oversign == "singletons" else header_list(opts.oversign, "oversign", need_from=False)
    shape = dkim.Options(
        *dkim.parse_canon(opts.c),
        sign_headers=header_list(opts.h, "h", need_from=True),
        oversign=oversign,
        timestamp=opts.t,
        expire=opts.x,
        copies=2 if opts.zz else 1 if opts.z else 0,
    )
    state = {"keys": keys}

    @f.on_reload
    def reload() -> None:
        state["keys"] = Keys(opts, f.log)  # raises on a bad file: the old keys stay

    @f.on_message_stream
    def start(session, headers):
        keys = state["keys"]
        if opts.authOnly and not (session.authenticated or session.is_local):
            f.log("not signed: session neither authenticated nor local (-authOnly)", session.id)
            return None
        from_value = headers.get("From")
        if from_value is None:
            f.log("not signed: no From header", session.id)
            return None
        author = dkim.from_domain(from_value)
        domain = keys.choose(author)
        if domain is None:
            f.log(f"not signed: From domain {author or '(unparsable)'} has no signing domain", session.id)
            return None
        signers = keys.signers(domain)
        if not signers:
            f.log(f"not signed: no key for d={domain}", session.id)
            return None
        if opts.aligned:
            env = envelope_domain(session)
            if env is not None and env != domain and not env.endswith("." + domain):
                f.log(f"not signed: envelope sender domain {env} is not in d={domain} (-aligned)", session.id)
                return None
        if opts.dryRun:
            f.log(f"would sign d={domain} (dry run)", session.id)
            return None
        return Signature(domain, signers, shape, f.log, session.id)

    @f.on_oversize
    def oversize(session, size):
        f.log(f"not signed: message over {opts.maxSize} bytes (-maxSize), passed on unsigned", session.id)

    return f


def main(argv: Sequence[str] | None = None) -> int:
    g = flags()
    opts = g.parse(argv)
    if opts.x < 0:
        g.fail("-x: seconds must be positive")
    if opts.maxSize <= 0:
        g.fail("-maxSize: must be positive")
    if (opts.k or opts.testKey) and not (opts.s and opts.d):
        g.fail("-k needs -s SELECTOR and -d DOMAIN")
    if not opts.k and not opts.K and not opts.keyTable and not opts.testKey:
        g.fail("no key: give -k FILE (with -s and -d), -K DOMAIN:SELECTOR:FILE or -keyTable FILE")
    log = Filter("dkimsign").log
    try:
        header_list(opts.h, "h", need_from=True)
        if opts.oversign != "singletons":
            header_list(opts.oversign, "oversign", need_from=False)
        keys = Keys(opts, log)
    except (ValueError, ListFileError) as exc:
        g.fail(str(exc))
    f = build(opts, keys)
    ids = sorted({f"{who.domain}/{who.selector}" for ws in keys.identities.values() for who in ws})
    f.log(
        f"starting (c={opts.c}, domains {len(keys.domains)}, per-domain keys {len(ids)}, "
        f"default key {keys.default.path if keys.default else 'none'}{', auth only' if opts.authOnly else ''}{', dry run' if opts.dryRun else ''})"
    )
    f.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
