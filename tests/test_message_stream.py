"""The message-layer extension: ``on_message_stream`` (a watcher sees the body
as it arrives while the SDK holds the message) and ``max_message_size`` /
``on_oversize`` (a message past the cap goes on unchanged and unbuffered)."""

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enginekit import Driven
from smtpd_filter_sdk import Filter, reject
from smtpd_filter_sdk.message import stuff
from smtpd_filter_sdk.protocol import is_fatal_output
from smtpd_filter_sdk.testing.harness import Harness

SID, TOK = "aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"
TS = "1795218811.493169"


def data_lines(d, payloads):
    return [d.wire.request(TS, "data-line", SID, TOK, p) for p in payloads]


def payloads(out):
    return [line.split(b"|", 3)[3] for line in out]


def commit(d):
    return d.send(d.wire.request(TS, "commit", SID, TOK))[0].split(b"|", 3)[3]


class Recorder:
    """A watcher that keeps what it is shown and stamps the headers."""

    def __init__(self, log):
        self.log = log
        self.chunks = []

    def body(self, chunk):
        self.chunks.append(chunk)

    def end(self, headers):
        self.log.append(b"".join(self.chunks))
        headers.add("X-Seen", f"{len(self.chunks)} chunks")


def watching(seen, *, cap=None):
    f = Filter("t", max_message_size=cap)
    f.on_message_stream(lambda session, headers: Recorder(seen))
    return f


# -- on_message_stream ------------------------------------------------------------


def test_watcher_sees_the_unstuffed_body_and_the_message_leaves_after_the_dot():
    seen = []
    d = Driven(watching(seen))
    held = d.send(*data_lines(d, [b"Received: x", b"Subject: s", b"", b"..dot", b"plain", b"", b"tail "]))
    assert held == []  # nothing leaves before the end: the header goes first
    out = d.send(*data_lines(d, [b"."]))
    assert seen == [b".dot\r\nplain\r\n\r\ntail \r\n"]
    assert payloads(out) == [b"X-Seen: 1 chunks", b"Received: x", b"Subject: s", b"", b"..dot", b"plain", b"", b"tail ", b"."]
    assert commit(d) == b"proceed"


def test_a_long_body_reaches_the_watcher_in_batches_as_it_arrives():
    seen = []
    watcher_holder = []

    def start(session, headers):
        watcher_holder.append(Recorder(seen))
        return watcher_holder[0]

    f = Filter("t")
    f.on_message_stream(start)
    d = Driven(f)
    body = [b"line %d" % i if i % 7 else b".dotted %d" % i for i in range(1000)]
    d.send(*data_lines(d, [b"Subject: s", b""] + [stuff(x) for x in body]))
    assert len(watcher_holder[0].chunks) >= 3  # seen before the end, a batch at a time
    out = d.send(*data_lines(d, [b"."]))
    assert seen == [b"".join(x + b"\r\n" for x in body)]
    assert payloads(out)[2:-1] == [b""] + [stuff(x) for x in body]


def test_handler_that_returns_none_holds_nothing():
    f = Filter("t")

    @f.on_message_stream
    def start(session, headers):
        headers.add("X-Skipped", "yes")
        return None

    d = Driven(f)
    out = d.send(*data_lines(d, [b"Subject: s", b"", b"body"]))
    assert payloads(out) == [b"X-Skipped: yes", b"Subject: s", b"", b"body"]
    assert payloads(d.send(*data_lines(d, [b"."]))) == [b"."]


@pytest.mark.parametrize(
    "lines, body",
    [
        ([b"Subject: s", b"."], b""),  # headers only, no empty line
        ([b"Subject: s", b"", b"."], b""),  # empty body
        ([b"Subject: s", b"not a header", b"."], b"not a header\r\n"),  # no separator
    ],
)
def test_message_shapes_without_a_usual_body(lines, body):
    seen = []
    d = Driven(watching(seen))
    out = d.send(*data_lines(d, lines))
    assert seen == [body]
    assert payloads(out) == [b"X-Seen: %d chunks" % (1 if body else 0)] + lines
    assert sum(line.endswith(b"|.") for line in out) == 1


@pytest.mark.parametrize("policy", ["fail-open", "fail-closed"])
@pytest.mark.parametrize("where", ["start", "body", "end"])
def test_a_failing_watcher_lets_the_message_pass_unchanged(policy, where, capfd):
    class Broken:
        def body(self, chunk):
            if where == "body":
                raise RuntimeError("boom")

        def end(self, headers):
            headers.add("X-Half", "done")
            if where == "end":
                raise RuntimeError("boom")

    f = Filter("t", on_error=policy)

    @f.on_message_stream
    def start(session, headers):
        if where == "start":
            raise RuntimeError("boom")
        return Broken()

    d = Driven(f)
    message = [b"Subject: s", b""] + [b"..l%d" % i for i in range(600)]
    out = d.send(*data_lines(d, message + [b"."]))
    assert payloads(out) == message + [b"."]
    assert commit(d) == (b"proceed" if policy == "fail-open" else b"reject|451 4.7.0 Temporary filter failure, try again later")
    assert "boom" in capfd.readouterr().err


def test_a_watcher_must_have_body_and_end(capfd):
    f = Filter("t")
    f.on_message_stream(lambda session, headers: "not a watcher")
    d = Driven(f)
    assert payloads(d.send(*data_lines(d, [b"Subject: s", b"", b"x", b"."]))) == [b"Subject: s", b"", b"x", b"."]
    assert "not a watcher" in capfd.readouterr().err


def test_watcher_decision_is_applied_at_commit():
    class Refuse:
        def body(self, chunk):
            self.bad = b"GTUBE" in chunk

        def end(self, headers):
            return reject(550, "5.7.1 no") if self.bad else None

    f = Filter("t")
    f.on_message_stream(lambda s, h: Refuse())
    d = Driven(f)
    d.send(*data_lines(d, [b"Subject: s", b"", b"GTUBE", b"."]))
    assert commit(d) == b"reject|550 5.7.1 no"


def test_long_lines_are_held_and_checked_like_any_other(capfd):
    seen = []
    d = Driven(watching(seen), "0.6")
    out = d.send(*data_lines(d, [b"Subject: s", b"", b"x" * 3000, b"."]))
    assert seen == [b"x" * 3000 + b"\r\n"] and payloads(out)[3] == b"x" * 3000
    assert "cut at 2047 bytes" in capfd.readouterr().err  # smtpd < 7.4 would cut it
    d = Driven(watching(seen), "0.7")
    out = d.send(*data_lines(d, [b"Subject: s", b"", b"y" * 70000, b"."]))
    assert max(map(len, out)) < 200 and commit(d).startswith(b"reject|552")


def test_decorators_exclude_each_other():
    f = Filter("t")
    f.on_message_stream(lambda s, h: None)
    for other in (f.on_message, f.on_headers, f.on_data_line):
        with pytest.raises(ValueError):
            other(lambda s, x: None)
    g = Filter("t")
    g.on_message(lambda s, m: None)
    with pytest.raises(ValueError):
        g.on_message_stream(lambda s, h: None)
    with pytest.raises(TypeError):

        @Filter("t").on_message_stream
        async def start(session, headers):
            return None


def test_stream_handler_registers_data_lines_and_a_plain_filter_does_not():
    f = Filter("t")
    f.on_message_stream(lambda s, h: None)
    reg = Driven(f).registration
    assert b"register|filter|smtp-in|data-line" in reg and b"register|filter|smtp-in|commit" in reg
    g = Filter("t", max_message_size=10)
    g.on("helo")(lambda s, name: None)
    assert b"register|filter|smtp-in|data-line" not in Driven(g).registration


def reports_of(f):
    return {line.split(b"|")[3].decode() for line in Driven(f).registration if line.startswith(b"register|report|")}


def test_track_registers_only_the_fields_given():
    f = Filter("t", track=["authenticated"])
    f.on_message_stream(lambda s, h: None)
    assert reports_of(f) == {"link-auth", "link-disconnect", "tx-reset"}
    d = Driven(f)
    d.send(d.wire.link_auth(TS, SID, "bob", "pass"))
    assert d.engine.sessions.peek(SID).authenticated  # what it asked for is tracked
    everything = reports_of(Filter("t", track="all"))
    assert "filter-response" in everything and len(everything) == 15


class Stamper:
    """A watcher that keeps the session and reads it only in end(): nothing
    in the handler names the fields it reads."""

    def __init__(self, session):
        self.session = session

    def body(self, chunk):
        pass

    def end(self, headers):
        headers.add("X-Stamp", f"helo={self.session.helo} from={self.session.tx.mail_from}")


def test_what_a_returned_watcher_reads_is_registered_and_filled():
    f = Filter("t")
    f.on_message_stream(lambda session, headers: Stamper(session))
    assert reports_of(f) == {"link-identify", "tx-begin", "tx-mail", "tx-reset", "link-disconnect"}
    with Harness(f) as h:
        s = h.session()
        s.ehlo("mx.client.test")
        out = s.send_message("alice@client.test", "bob@example.net")
    assert b"X-Stamp: helo=mx.client.test from=alice@client.test" in out.output_lines


def test_what_an_oversize_handler_reads_is_registered_and_filled():
    told = []
    f = Filter("t", max_message_size=200)
    f.on_message_stream(lambda session, headers: None)
    f.on_oversize(lambda session, size: told.append((session.src.host, session.tx.mail_from)))
    assert reports_of(f) == {"link-connect", "tx-begin", "tx-mail", "tx-reset", "link-disconnect"}
    with Harness(f) as h:
        s = h.session(src="192.0.2.7")
        s.send_message("alice@client.test", "bob@example.net", body=b"x" * 100 + b"\n" + b"y" * 100 + b"\n")
    assert told == [("192.0.2.7", "alice@client.test")]


# -- max_message_size / on_oversize -------------------------------------------------


def oversized(kind):
    calls = []
    f = Filter("t", max_message_size=100)
    if kind == "message":
        f.on_message(lambda s, m: calls.append(("message", m)))
    elif kind == "headers":
        f.on_headers(lambda s, h: calls.append(("headers", h)))
    else:
        f.on_message_stream(lambda s, h: Recorder(calls))

    @f.on_oversize
    def big(session, size):
        calls.append(("oversize", size))
        return reject(552, "5.3.4 too big for me")

    return f, calls


@pytest.mark.parametrize("kind", ["message", "stream", "headers"])
def test_a_message_past_the_cap_streams_on_unchanged_and_the_filter_is_told(kind):
    f, calls = oversized(kind)
    d = Driven(f)
    head = [b"Subject: s", b"X-Long: " + b"a" * 40] if kind != "headers" else [b"Subject: s"]
    filler = [b"..b" * 10] * 3 if kind != "headers" else [b"X-H: " + b"h" * 30] * 3
    out = d.send(*data_lines(d, head + ([b""] if kind != "headers" else []) + filler))
    sent = head + ([b""] if kind != "headers" else []) + filler
    assert payloads(out) == sent  # what was held went out the moment the cap was passed
    sizes = [sum(len(x) + 2 for x in sent[: i + 1]) for i in range(len(sent))]
    crossed = next(size for size in sizes if size > 100)  # the size when it passed the cap
    assert [c for c in calls if c[0] == "oversize"] == [("oversize", crossed)]
    later = d.send(*data_lines(d, [b"more", b"."]))
    assert payloads(later) == [b"more", b"."]  # the rest streams
    assert [c[0] for c in calls] == ["oversize"]  # the message handler never saw it
    assert commit(d) == b"reject|552 5.3.4 too big for me"


def test_the_cap_is_per_message_and_logged_without_a_handler(capfd):
    seen = []
    d = Driven(watching(seen, cap=60))
    d.send(*data_lines(d, [b"Subject: s", b"", b"x" * 80, b"."]))
    assert seen == [] and "message over 60 bytes: passed on unchanged" in capfd.readouterr().err
    assert commit(d) == b"proceed"
    d.send(d.wire.report(TS, "tx-reset", SID, "0a0b0c0d"))
    out = d.send(*data_lines(d, [b"Subject: t", b"", b"small", b"."]))
    assert seen == [b"small\r\n"] and payloads(out)[0] == b"X-Seen: 1 chunks"


# -- property: whatever the lines, the watcher sees the body and the wire is intact ---

line_st = st.one_of(
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b"")),
    st.sampled_from([b"", b".", b"..", b" ", b"\t", b".x", b"From: a@b"]),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(line_st, max_size=40), st.lists(line_st, max_size=700))
def test_property_watched_message(header_lines, body):
    header_lines = [h for h in header_lines if h and h[:1] not in b" \t" and b":" in h] or [b"Subject: s"]
    seen = []
    d = Driven(watching(seen))
    wire_in = [stuff(x) for x in header_lines + [b""] + body]
    out = d.send(*data_lines(d, wire_in + [b"."]))
    assert all(is_fatal_output(line) is None for line in out)
    assert payloads(out)[0].startswith(b"X-Seen: ") and payloads(out)[1:] == wire_in + [b"."]
    assert seen == [b"".join(x + b"\r\n" for x in body)]
    # the same message in one read (the hot loop's path for consecutive lines)
    d.send(d.wire.report(TS, "tx-reset", SID, "0a0b0c0d"))
    whole = d.feed(b"".join(line + b"\n" for line in data_lines(d, wire_in + [b"."])))
    assert payloads(whole)[1:] == wire_in + [b"."] and seen[1] == seen[0]


# -- end() may finish later: it returns an awaitable (a signer on a worker thread) ---


class Later:
    """A watcher whose end() returns a coroutine: it waits for ``gate`` (a
    future the test resolves, or "never"), then stamps the headers and returns
    ``result``; ``edit_first`` stamps before waiting (a half-done edit)."""

    def __init__(self, gate=None, result=None, edit_first=False, fail=False):
        self.gate, self.result, self.edit_first, self.fail = gate, result, edit_first, fail
        self.chunks = []

    def body(self, chunk):
        self.chunks.append(chunk)

    def end(self, headers):
        if self.edit_first:
            headers.add("X-Half", "done")
        return self.finish(headers)

    async def finish(self, headers):
        if self.gate == "never":
            await asyncio.get_running_loop().create_future()  # nobody resolves it
        elif self.gate is not None:
            await self.gate
        if self.fail:
            raise RuntimeError("boom")
        headers.add("X-Seen", "%d bytes" % len(b"".join(self.chunks)))
        return self.result


def later_filter(make, **kw):
    f = Filter("t", **kw)
    f.on_message_stream(lambda session, headers: make())
    return f


def lines_of(d, sid, payloads):
    return [d.wire.request(TS, "data-line", sid, TOK, p) for p in payloads]


def test_an_awaitable_end_holds_the_message_until_it_is_done_and_other_sessions_go_on():
    watchers = {"a" * 16: Later(), "c" * 16: Later()}
    f = Filter("t")
    f.on_message_stream(lambda session, headers: watchers[session.id])
    d = Driven(f)
    gate = watchers["a" * 16].gate = d.loop.create_future()

    def pump(lines):  # feed, let the loop turn, but do not wait for A
        for line in lines:
            d.engine.feed(line + b"\n")
        d.loop.run_until_complete(asyncio.sleep(0.01))
        return d.engine.take_lines()

    # session A's message ends, and its watcher waits for the gate ...
    assert pump(lines_of(d, "a" * 16, [b"Subject: a", b"", b"body a", b"."])) == []
    # ... while session C's message passes whole
    out_c = pump(lines_of(d, "c" * 16, [b"Subject: c", b"", b"body c", b"."]))
    assert [line.split(b"|")[1] for line in out_c] == [b"c" * 16] * 5
    assert payloads(out_c) == [b"X-Seen: 8 bytes", b"Subject: c", b"", b"body c", b"."]
    # the gate opens: A's message leaves in order, headers edited, one "."
    gate.set_result(None)
    out_a = d.take()
    assert payloads(out_a) == [b"X-Seen: 8 bytes", b"Subject: a", b"", b"body a", b"."]
    assert [line.split(b"|")[1] for line in out_a] == [b"a" * 16] * 5


def test_an_awaitable_end_decides_at_commit():
    d = Driven(later_filter(lambda: Later(result=reject(550, "5.7.1 no"))))
    out = d.send(*data_lines(d, [b"Subject: s", b"", b"x", b"."]))
    assert payloads(out)[-1] == b"."
    assert commit(d) == b"reject|550 5.7.1 no"


@pytest.mark.parametrize("policy", ["fail-open", "fail-closed"])
@pytest.mark.parametrize("how", ["raises", "runs past the deadline"])
def test_an_awaitable_end_that_fails_passes_the_message_unchanged(policy, how, capfd):
    def make():
        if how == "raises":
            return Later(fail=True, edit_first=True)
        return Later(gate="never", edit_first=True)

    d = Driven(later_filter(make, on_error=policy, deadline=0.05))
    message = [b"Subject: s", b""] + [b"..l%d" % i for i in range(70)]
    out = d.send(*data_lines(d, message + [b"."]))
    assert payloads(out) == message + [b"."]  # not even the half-done edit
    assert commit(d) == (b"proceed" if policy == "fail-open" else b"reject|451 4.7.0 Temporary filter failure, try again later")
    err = capfd.readouterr().err
    assert ("boom" if how == "raises" else "ran past 0.05s") in err and SID in err


class Now:
    """The same watcher, ending at once: the reference for ``Later``."""

    def __init__(self):
        self.chunks = []

    def body(self, chunk):
        self.chunks.append(chunk)

    def end(self, headers):
        headers.add("X-Seen", "%d bytes" % len(b"".join(self.chunks)))


@settings(max_examples=100, deadline=None)
@given(st.lists(line_st, max_size=20), st.lists(line_st, max_size=300), st.integers(1, 3))
def test_property_an_awaitable_end_writes_what_an_immediate_one_writes(header_lines, body, sessions):
    """Differential: interleaved sessions whose watchers finish later give,
    per session, the bytes the same watcher finishing at once gives."""
    header_lines = [h for h in header_lines if h and h[:1] not in b" \t" and b":" in h] or [b"Subject: s"]
    wire_in = [stuff(x) for x in header_lines + [b""] + body] + [b"."]
    sids = ["%016x" % (i + 1) for i in range(sessions)]
    interleaved = [line for row in zip(*(lines_of(Driven(Filter("t")), s, wire_in) for s in sids)) for line in row]
    results = []
    for make in (Now, Later):
        d = Driven(later_filter(make))
        out = d.feed(b"".join(line + b"\n" for line in interleaved))
        assert all(is_fatal_output(line) is None for line in out)
        results.append({s: [line for line in out if line.split(b"|")[1] == s.encode()] for s in sids})
    assert results[0] == results[1]
    for s in sids:
        assert payloads(results[1][s]) == [b"X-Seen: %d bytes" % sum(len(line) + 2 for line in body)] + wire_in
