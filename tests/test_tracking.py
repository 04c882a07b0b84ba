"""The SDK registers only the report events whose session fields a filter's
handlers read (smtpd_filter_sdk.tracking), and a handler still sees every
field it reads, however it reaches it."""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import io

import pytest

import filterkit  # noqa: F401  (maps filters/ to smtpd_filters)
from enginekit import Driven
from examplekit import example
from smtpd_filter_sdk import Filter, in_thread, junk, reject
from smtpd_filter_sdk.protocol import REPORT_EVENTS
from smtpd_filter_sdk.session import TRACKED_EVENTS
from smtpd_filter_sdk.testing.harness import Harness
from smtpd_filter_sdk.tracking import fields_read
from smtpd_filters import dkimsign, rdns, rspamd, senderscore, spamtraps
from smtpd_filters.trapstore import TrapStore

ROOT = Path(__file__).resolve().parent.parent


def reports_of(f: Filter) -> set[str]:
    return {event for sub, event in f.registrations()[0] if sub == "smtp-in"}


# -- what is read ------------------------------------------------------------------------


def test_attribute_reads_in_the_handler_and_in_code_nested_in_it():
    def handler(session, identity):
        names = [r.address for r in session.tx.rcpts]
        check = lambda: session.helo == identity  # noqa: E731
        return names, check

    assert fields_read([handler]) == {"tx.msgid", "tx.rcpts", "helo"}


def test_a_global_name_is_not_a_field_read():
    # ``junk`` the decision is a global; ``session.junk`` would be the field
    def handler(session, rdns, src):
        return junk()

    assert fields_read([handler]) == set()


class Scorer:
    def __init__(self) -> None:
        self.seen = 0

    def score(self, session):
        self.seen += 1
        return self.address_of(session)

    def address_of(self, session):  # reached from score() through self
        return session.src.host if not session.is_local else None


def _helper(session):
    return session.auth_user


def test_calls_are_followed_into_closures_objects_and_globals():
    scorer = Scorer()

    def handler(session, rdns, src):
        return scorer.score(session), _helper(session)

    assert fields_read([handler]) == {"src", "is_local", "auth_user"}


def test_wrapped_handlers_are_looked_into():
    @in_thread
    def blocking(session, address):
        return session.tls

    assert fields_read([blocking]) == {"tls"}


def test_getattr_with_the_name_written_out_is_an_ordinary_read():
    def handler(session, address):
        return getattr(session, "helo", None), getattr(session.tx, "rcpts")

    assert fields_read([handler]) == {"helo", "tx.msgid", "tx.rcpts"}
    passed_on = lambda session, name: sorted(map(getattr, [session], [name]))  # noqa: E731
    assert fields_read([passed_on]) is None  # getattr itself handed on: cannot tell
    assert fields_read([lambda session, kind: getattr(session, "auth_" + kind)]) is None  # a computed name
    assert fields_read([lambda session, d: getattr(session, "tls", d.fallback())]) is None  # cannot tell what the default is


class Keeper:
    """Gets the session in its constructor, reads it in a method nobody
    calls by name (as a MessageWatcher's end())."""

    def __init__(self, session):
        self.session = session

    def end(self, headers):
        return self.session.tls, self.session.tx.envelopes


def test_a_class_the_handler_refers_to_is_looked_into_whole():
    assert fields_read([lambda session, headers: Keeper(session)]) == {"tls", "tx.msgid", "tx.envelopes"}

    def local(session, headers):
        class Inline:
            def end(self, headers):
                return session.greeting

        return Inline()

    assert fields_read([local]) == {"greeting"}


@pytest.mark.parametrize(
    "handler",
    [
        lambda session, name: getattr(session, name),  # a computed attribute name
        lambda session, name: vars(session),
        functools.partial(print, "x"),  # no code to look at
        len,
    ],
    ids=["getattr", "vars", "partial", "builtin"],
)
def test_when_it_cannot_be_told_everything_is_tracked(handler):
    assert fields_read([handler]) is None
    f = Filter("t")
    f.on("helo")(handler)
    assert reports_of(f) == set(TRACKED_EVENTS)


# -- what is registered ------------------------------------------------------------------


def test_a_filter_that_reads_nothing_registers_link_disconnect_only():
    f = Filter("t")
    f.on("helo")(lambda s, name: reject(550, "5.7.1 no") if name == "x" else None)
    assert reports_of(f) == {"link-disconnect"}


def test_message_handlers_keep_tx_reset():
    f = Filter("t")
    f.on_headers(lambda s, headers: headers.add("X-A", "1"))
    assert reports_of(f) == {"link-disconnect", "tx-reset"}


def test_fields_map_to_the_events_that_set_them():
    f = Filter("t")
    f.on("mail-from")(lambda s, a: (s.src, s.helo, s.authenticated, s.junk))
    assert reports_of(f) == {"link-connect", "link-identify", "link-auth", "filter-response", "link-disconnect"}
    g = Filter("t")
    g.on("rcpt-to")(lambda s, a: s.tx.mail_from)
    assert reports_of(g) == {"tx-begin", "tx-mail", "tx-reset", "link-disconnect"}


def test_the_transaction_is_tracked_by_the_parts_read():
    f = Filter("t")
    f.on("data")(lambda s: s.tx is None)  # only whether there is one: it begins and ends
    assert reports_of(f) == {"tx-begin", "tx-reset", "link-disconnect"}
    g = Filter("t")
    g.on("commit")(lambda s: (len(s.tx.accepted_rcpts), s.tx.size, s.tx.junk))
    assert reports_of(g) == {"tx-begin", "tx-rcpt", "tx-commit", "filter-response", "tx-reset", "link-disconnect"}
    # given by hand, "tx" is the whole transaction
    assert reports_of(Filter("t", track=["tx"])) >= {"tx-mail", "tx-rcpt", "tx-envelope", "tx-data", "tx-commit"}


def test_explicit_track_overrides_what_the_code_shows():
    f = Filter("t", track=["greeting"])
    f.on("helo")(lambda s, name: s.src)
    assert reports_of(f) == {"link-greeting", "link-disconnect"}
    assert reports_of(Filter("t", track="all")) == set(TRACKED_EVENTS)
    assert reports_of(Filter("t", track=["tx.mail_from", "data"])) == {"tx-begin", "tx-mail", "tx-reset", "link-disconnect"}


@pytest.mark.parametrize(
    "track, complaint",
    [
        (["sourc"], r"track: 'sourc' is not a session field \(did you mean src\?\); the fields are .*, src, "),
        (["src", "helo_name", "tx.from"], "track: 'helo_name', 'tx.from' are not session fields"),
        ("src", "track must be \"all\", None or a list of session fields, not 'src'"),
        (["link-connect"], "'link-connect' is not a session field"),  # an event name is not a field
    ],
)
def test_a_wrong_field_name_in_track_is_a_value_error_at_construction(track, complaint):
    with pytest.raises(ValueError, match=complaint):
        Filter("t", track=track)


def test_report_handlers_get_their_events_the_record_is_theirs():
    f = Filter("t")
    f.on_report("protocol-client")(lambda s, report: report.params.command)
    assert reports_of(f) == {"protocol-client", "link-disconnect"}


# -- the handler still sees what it reads -------------------------------------------------


def test_fields_reached_through_an_object_are_filled():
    scorer = Scorer()
    f = Filter("t")

    @f.on("helo")
    def helo(session, name):
        return reject(550, f"5.7.1 {scorer.score(session)} {_helper(session)}")

    h = Harness(f)
    assert {"link-connect", "link-auth"} <= h.reports and "tx-begin" not in h.reports
    s = h.session(src="192.0.2.7")
    assert s.helo("x").reply == "550 5.7.1 192.0.2.7 None"


@pytest.mark.parametrize(
    "argv, reports",
    [
        (["-testMode", "-junkBelow", "80"], {"link-connect", "link-disconnect"}),
        (["-testMode", "-junkBelow", "80", "-scoreHeader"], {"link-connect", "link-disconnect", "tx-reset"}),
    ],
)
def test_senderscore_registers_what_it_reads(argv, reports):
    done = subprocess.run([sys.executable, "-m", "smtpd_filters.senderscore", *argv], input=b"config|ready\n",
                          capture_output=True, timeout=30)
    got = {line.split(b"|")[3].decode() for line in done.stdout.splitlines() if line.startswith(b"register|report|")}
    assert got == reports


# -- what each example and production filter registers ------------------------------------
#
# Each set is what the filter reads, checked against its code: the report events
# that fill those fields, its own report handlers' events, link-disconnect, and
# tx-reset for message handlers.  The filters' own tests (which see only the
# reports registered, as from smtpd) show each of them is enough.

CONNECT, AUTH, IDENTIFY, GREETING, TLS = "link-connect", "link-auth", "link-identify", "link-greeting", "link-tls"
END, RESET, BEGIN, MAIL, RCPT = "link-disconnect", "tx-reset", "tx-begin", "tx-mail", "tx-rcpt"


def registered(f: Filter) -> set[str]:
    d = Driven(f)
    try:
        return {line.split(b"|")[3].decode() for line in d.registration if line.startswith(b"register|report|smtp-in|")}
    finally:
        d.close()


EXAMPLES = [
    ("add_header", lambda m: m.build("X-Filtered", "yes"), {END, RESET}),
    ("dnsbl", lambda m: m.build(["bl.test"], "block"), {CONNECT, END}),  # session.src
    ("dnsbl", lambda m: m.build(["bl.test"], "junk"), {CONNECT, END}),
    ("dnsbl", lambda m: m.build(["bl.test"], "header"), {CONNECT, END, RESET}),
    ("rate_limit", lambda m: m.build(10, 60), {CONNECT, AUTH, END}),  # src, authenticated
    ("reject_helo", lambda m: m.build(["mx.example.org"]), {GREETING, END}),  # greeting
    ("subject_tag", lambda m: m.build(), {"filter-response", BEGIN, RESET, END}),  # junk, tx.junk
    ("event_log", lambda m: m.build(io.StringIO()), set(REPORT_EVENTS)),  # on_report("*")
]


@pytest.mark.parametrize("name, build, reports", EXAMPLES, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(EXAMPLES)])
def test_each_example_registers_what_it_reads(name, build, reports):
    assert registered(build(example(name))) == reports


def dkimsign_filter(*flags: str) -> Filter:
    opts = dkimsign.flags().parse_or_raise(["-testKey", "-a", "ed25519-sha256", "-d", "example.org", "-s", "s", *flags])
    return dkimsign.build(opts, dkimsign.Keys(opts, lambda *a: None))


def spamtraps_filter(tmp_path, *flags: str) -> Filter:
    (tmp_path / "traps").write_text("trap@example.org\n")
    opts = spamtraps.flags().parse_or_raise(["-traps", str(tmp_path / "traps"), "-db", str(tmp_path / "t.db"), "-spf=false", *flags])
    return spamtraps.build(opts, store=TrapStore(opts.db, spamtraps.policy_of(opts), host="mx1"))


FILTERS = [
    # dkimsign: the flags say what start() reads (track=...)
    (lambda tmp: dkimsign_filter(), {END, RESET}),
    (lambda tmp: dkimsign_filter("-authOnly"), {AUTH, CONNECT, END, RESET}),  # authenticated, is_local
    (lambda tmp: dkimsign_filter("-aligned"), {BEGIN, MAIL, END, RESET}),  # tx.mail_from
    (lambda tmp: dkimsign_filter("-authOnly", "-aligned"), {AUTH, CONNECT, BEGIN, MAIL, END, RESET}),
    # rspamd: everything its request headers carry (the Go filter's set, plus TLS)
    (lambda tmp: rspamd.build(rspamd.flags().parse_or_raise(["-url", "http://127.0.0.1:9"])),
     {CONNECT, GREETING, IDENTIFY, TLS, AUTH, BEGIN, MAIL, RCPT, END, RESET}),
    (lambda tmp: rdns.build(rdns.flags().parse_or_raise([])), {CONNECT, END}),
    (lambda tmp: rdns.build(rdns.flags().parse_or_raise(["-heloCheck", "reject"])), {CONNECT, AUTH, END}),
    (lambda tmp: rdns.build(rdns.flags().parse_or_raise(["-heloCheck", "reject", "-bypassAuth"])), {CONNECT, AUTH, IDENTIFY, END}),
    (lambda tmp: rdns.build(rdns.flags().parse_or_raise(["-header", "-authResults"])), {CONNECT, END, RESET}),
    (lambda tmp: senderscore.build(senderscore.flags().parse_or_raise(["-blockBelow", "10", "-blockPhase", "mail-from"])), {CONNECT, END}),
    (lambda tmp: senderscore.build(senderscore.flags().parse_or_raise(["-scoreHeader"])), {CONNECT, END, RESET}),
    # spamtraps: src, is_local, authenticated, auth_user, helo, tx.mail_from
    (lambda tmp: spamtraps_filter(tmp), {CONNECT, AUTH, IDENTIFY, BEGIN, MAIL, END, RESET}),
    (lambda tmp: spamtraps_filter(tmp, "-learnSpam", "http://127.0.0.1:9/"),
     {CONNECT, AUTH, IDENTIFY, BEGIN, MAIL, END, RESET, "tx-commit", "tx-rollback"}),  # + its on_report events
]


@pytest.mark.parametrize("build, reports", FILTERS, ids=[str(i) for i in range(len(FILTERS))])
def test_each_production_filter_registers_what_it_reads(tmp_path, build, reports):
    assert registered(build(tmp_path)) == reports


def test_an_example_script_registers_the_same_when_run():
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "reject_helo.py")], input=b"config|ready\n",
                          capture_output=True, timeout=30, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    got = {line.split(b"|")[3].decode() for line in done.stdout.splitlines() if line.startswith(b"register|report|")}
    assert got == {GREETING, END}