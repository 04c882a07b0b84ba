"""The SDK registers only the report events whose session fields a filter's
handlers read (smtpd_filter_sdk.tracking), and a handler still sees every
field it reads, however it reaches it."""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import pytest

from smtpd_filter_sdk import Filter, in_thread, junk, reject
from smtpd_filter_sdk.session import TRACKED_EVENTS
from smtpd_filter_sdk.testing.harness import Harness
from smtpd_filter_sdk.tracking import fields_read

ROOT = Path(__file__).resolve().parent.parent


def reports_of(f: Filter) -> set[str]:
    return {event for sub, event in f.registrations()[0] if sub == "smtp-in"}


# -- what is read ------------------------------------------------------------------------


def test_attribute_reads_in_the_handler_and_in_code_nested_in_it():
    def handler(session, identity):
        names = [r.address for r in session.tx.rcpts]
        check = lambda: session.helo == identity  # noqa: E731
        return names, check

    assert fields_read([handler]) == {"tx", "helo"}


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
    assert {"tx-begin", "tx-mail", "tx-rcpt", "tx-reset"} <= reports_of(g)


def test_explicit_track_overrides_what_the_code_shows():
    f = Filter("t", track=["greeting"])
    f.on("helo")(lambda s, name: s.src)
    assert reports_of(f) == {"link-greeting", "link-disconnect"}
    assert reports_of(Filter("t", track="all")) == set(TRACKED_EVENTS)
    with pytest.raises(ValueError, match="not session fields"):
        Filter("t", track=["sourc"])
    with pytest.raises(ValueError):
        Filter("t", track="src")


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


def test_the_examples_register_what_they_read():
    for script, reports in (("add_header.py", {"link-disconnect", "tx-reset"}), ("reject_helo.py", None)):
        done = subprocess.run([sys.executable, str(ROOT / "examples" / script)], input=b"config|ready\n",
                              capture_output=True, timeout=30, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
        got = {line.split(b"|")[3].decode() for line in done.stdout.splitlines() if line.startswith(b"register|report|")}
        assert "link-disconnect" in got and len(got) < len(TRACKED_EVENTS)
        if reports is not None:
            assert got == reports
