"""Correctness of the benchmark tools (bench/gen_stream.py, bench/run.py,
bench/echo_loop.py, bench/senderscore_loop.py).  No timing assertions: these only check that the
generated streams have smtpd's exact shapes per protocol version and that the
runner counts answers right; each test runs in milliseconds to a second, but
for the instruction count's, which runs Python under valgrind six times
(~25 s)."""

from __future__ import annotations

import argparse
import collections
import os
import random
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.join(os.path.dirname(HERE), "bench")
sys.path.insert(0, BENCH)

import gen_stream as g  # noqa: E402
import run as runner  # noqa: E402

ECHO = "%s %s" % (sys.executable, os.path.join(BENCH, "echo_loop.py"))
ECHO_REGS = ["register|filter|smtp-in|data-line", "register|filter|smtp-in|commit"]


def lines_of(b: bytes) -> list[str]:
    return b.decode().split("\n")[:-1]


def one_session(version="0.6", regs=None, **kw) -> list[str]:
    ev, ph = g.parse_registrations(regs) if regs is not None else g.everything()
    st = g.Stream(g.StreamSpec(version=version, sessions=1, events=ev, phases=ph, **kw))
    return lines_of(st.session(0))


def shape(lines):
    return [(l.split("|")[0], l.split("|")[4]) for l in lines if l.startswith(("report|", "filter|"))]


# ---------------------------------------------------------------- handshake

def test_handshakes_per_version():
    hs = {v: g.dialect(v).handshake() for v in g.VERSIONS}
    assert hs["0.4"] == ["config|smtpd-version|6.6.4p1", "config|smtp-session-timeout|300",
                         "config|ready"]
    assert not any("subsystem" in l or "admd" in l for l in hs["0.5"])
    for v in ("0.6", "0.7"):
        assert hs[v][2:] == ["config|subsystem|smtp-in", "config|admd|mx.rig.test",
                             "config|ready"]
        assert not any(l.startswith("config|protocol|") for l in hs[v])
    assert hs["0.7+"][1] == "config|protocol|0.7"
    assert hs["0.7+"][-1] == "config|ready"
    assert g.dialect("0.7-7.6") is g.dialect("0.7+")
    with pytest.raises(ValueError):
        g.dialect("1.0")


def test_shape_matches_real_6_8_capture():
    """Event/phase sequence of one session = the real smtpd 6.8.0p2 capture."""
    cap = open(os.path.join(HERE, "data", "plain.txt")).read().split("\n")
    cap = [l for l in cap if l]
    mine = one_session("0.6", lines=11)
    assert shape(mine) == shape(cap[5:])
    # same field counts line by line (values differ)
    assert [l.count("|") for l in mine if not l.startswith("filter|0.6|") or "data-line" not in l] == \
        [l.count("|") for l in cap[5:] if not l.startswith("filter|0.6|") or "data-line" not in l]


# ---------------------------------------------------------------- versions

@pytest.mark.parametrize("version,order", [("0.4", "addr-mid"), ("0.5", "addr-mid"),
                                           ("0.6", "result-mid"), ("0.7", "result-mid"),
                                           ("0.7+", "result-mid")])
def test_tx_mail_rcpt_field_order(version, order):
    ls = one_session(version)
    for ev, addr in (("tx-mail", "bob@example.org"), ("tx-rcpt", "alice@rig.test")):
        (line,) = [l for l in ls if l.split("|")[4] == ev]
        f = line.split("|")
        assert f[1] == g.dialect(version).proto
        assert f[7:] == ([addr, "ok"] if order == "addr-mid" else ["ok", addr])


@pytest.mark.parametrize("version", g.VERSIONS)
def test_link_auth_and_tls(version):
    ls = one_session(version, tls=True, auth=True)
    (auth,) = [l for l in ls if l.split("|")[4] == "link-auth"]
    assert auth.split("|")[6:] == (["pass", "rig"] if version.startswith("0.7") else ["rig", "pass"])
    names = [l.split("|")[4] for l in ls]
    assert names.index("starttls") < names.index("link-tls") < names.index("auth")
    assert names.count("ehlo") == 2
    rcv = [l for l in ls if "|data-line|" in l][1]
    assert "with ESMTPSA id" in rcv and "TLSv1.3" in rcv


# ---------------------------------------------------------------- registrations

def test_only_registered_and_duplicates():
    regs = ["register|report|smtp-in|link-connect", "register|report|smtp-in|*",
            "register|filter|smtp-in|rcpt-to", "register|filter|smtp-in|data-line",
            "register|report|smtp-out|link-connect", "register|ready"]
    ls = one_session("0.6", regs, lines=10)
    names = collections.Counter(l.split("|")[4] for l in ls)
    assert names["link-connect"] == 2          # '*' + explicit: smtpd sends it twice
    assert names["link-disconnect"] == 1
    phases = {l.split("|")[4] for l in ls if l.startswith("filter|")}
    assert phases == {"rcpt-to", "data-line"}
    only_dl = one_session("0.6", ["register|filter|smtp-in|data-line"], lines=10)
    assert all(l.startswith("filter|") and "|data-line|" in l for l in only_dl)
    nothing = one_session("0.6", [])
    assert nothing == []


def test_message_dot_stuffed_received_first_final_dot():
    ls = one_session("0.6", ["register|filter|smtp-in|data-line"], lines=30)
    payloads = [l.split("|", 7)[7] for l in ls]
    assert payloads[0].startswith("Received: from ")
    assert payloads[1].startswith("\tby mx.rig.test (OpenSMTPD) with ESMTP id ")
    assert payloads[-1] == "."
    body = payloads[4:-1]
    assert len(body) == 30
    dotted = [p for p in body if p.startswith(".")]
    assert dotted and all(p.startswith("..") for p in dotted)
    assert len({l.split("|")[6] for l in ls}) == 1        # one token per phase


def test_size_in_bytes():
    st = g.Stream(g.StreamSpec(sessions=1, lines=None, size=102400))
    assert 102400 <= st.message_bytes < 102400 + 100


# ---------------------------------------------------------------- stamping, segments, interleave

def test_sessions_stamped_uniquely():
    st = g.Stream(g.StreamSpec(sessions=50, lines=5))
    sids = set()
    for i in range(50):
        b = st.session(i)
        assert b"<<" not in b and b"<PRT>" not in b and b"@>>" not in b
        f = b.split(b"\n")[0].split(b"|")
        assert len(f[5]) == 16 and len(f[2]) == 17
        sids.add(f[5])
    assert len(sids) == 50


def test_segments_cut_where_smtpd_waits():
    st = g.Stream(g.StreamSpec(sessions=2, lines=8))
    segs = st.session_segments(1)
    assert b"".join(s for s, _ in segs) == st.session(1)
    kinds = [w for _, w in segs]
    assert kinds.count("dot") == 1 and kinds[-1] is None
    assert kinds.count("result") == st.requests_per_session
    for data, wait in segs:
        last = lines_of(data)[-1]
        if wait == "result":
            assert last.startswith("filter|") and "|data-line|" not in last
        elif wait == "dot":
            assert last.endswith("|data-line|" + last.split("|")[5] + "|" + last.split("|")[6] + "|.")


def test_interleave_keeps_per_session_order():
    spec = dict(sessions=7, lines=6)
    seq = g.Stream(g.StreamSpec(**spec))
    mixed = g.Stream(g.StreamSpec(interleave=3, **spec))
    a = b"".join(seq.iter_sessions_bytes())
    b = b"".join(mixed.iter_sessions_bytes())
    assert a != b and sorted(lines_of(a)) == sorted(lines_of(b))
    per = collections.defaultdict(list)
    for l in lines_of(b):
        per[l.split("|")[5]].append(l)
    for i in range(7):
        assert "\n".join(per[seq.ids(i)[0].decode()]) + "\n" == seq.session(i).decode()
    assert b"".join(mixed.iter_chunks(4096)) == b


def test_response_ids():
    assert g.response_ids(b"filter-result|aaaa|bbbb|proceed", False) == (b"aaaa", b"bbbb")
    assert g.response_ids(b"filter-result|aaaa|bbbb|proceed", True) == (b"bbbb", b"aaaa")


def test_cli_writes_stream(tmp_path, capsys):
    out = tmp_path / "s.txt"
    assert g.main(["--version", "0.4", "-n", "3", "--lines", "5", "--register",
                   "filter:data-line,report:link-connect", "-o", str(out)]) == 0
    data = out.read_bytes()
    assert data.startswith(b"config|smtpd-version|6.6.4p1\n")
    assert data.count(b"|link-connect|") == 3 and data.count(b"|data-line|") == 3 * (5 + 5)


# ---------------------------------------------------------------- runner

def test_stream_counter_straddling_reads():
    st = g.Stream(g.StreamSpec(sessions=20, lines=12))
    tok = st.tokens["data-line"].encode()
    text = b"".join(b"filter-dataline|" + l.split(b"|", 5)[5] + b"\n"
                    for l in st.session(0).split(b"\n")[:-1]) * 20
    text += b"filter-result|x|y|proceed\n" * 7
    rng = random.Random(3)
    c = runner.StreamCounter(b"|" + tok + b"|.\n", size=64)
    i = 0
    while i < len(text):
        k = min(rng.randint(1, 64), len(text) - i)
        c.buf[:k] = text[i:i + k]
        c.feed_n(k)
        i += k
    assert c.lines == text.count(b"\n")
    assert c.results == 7
    assert c.dots == text.count(b"|" + tok + b"|.\n") == 20
    assert c.datalines == text.count(b"filter-dataline|")


def bench_args(**kw) -> argparse.Namespace:
    a = runner.build_parser().parse_args(["x"])
    a.repeats, a.repeats_given, a.memory_given = 1, True, False
    for k, v in kw.items():
        setattr(a, k, v)
    if a.size is not None:
        a.lines = None
    return a


@pytest.mark.parametrize("version", g.VERSIONS)
@pytest.mark.parametrize("window", [0, 3])
def test_runner_echo_loop_complete(version, window):
    a = bench_args(version=version, sessions=40, lines=12, window=window, tls=True,
                   auth=True, interleave=1 if window else 4, sample_interval=0)
    r = runner.run_once(a, "echo", ECHO)
    assert r["complete"] and r["exact"], r
    assert r["results"] == 40 and r["dots"] == 40
    assert r["datalines"] == r["expected_datalines"] == 40 * (12 + 5)
    assert r["registered"] == ECHO_REGS
    assert r["exit"] == 0 and not r["killed_at_exit"]
    assert r["in_lines"] == 40 * r["lines_per_session"]
    assert r["max_rss_MB"] > 1


@pytest.mark.parametrize("lines", [50, 10, 1])
def test_senderscore_floor_answers_as_py_filter_senderscore(lines):
    """bench/senderscore_loop.py, the hand-written floor the small-message
    bench sets beside py-filter-senderscore, does the same work: fed the
    stream py-filter-senderscore -junkBelow 80 -scoreHeader registers for
    (the score cached as after the bench's first session), both answer
    every line alike, X-SenderScore header and junk verdicts included."""
    import asyncio
    import subprocess

    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "filters"))
    import senderscore

    from smtpd_filter_sdk.runtime import Engine

    opts = senderscore.flags().parse(["-junkBelow", "80", "-scoreHeader", "-resolver", "127.0.0.1"])
    filt = senderscore.build(opts)
    filt.log = lambda *a, **k: None
    score = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, %r); "
                            "import senderscore_loop as s; print(s.SCORES[b'127.0.0.1'])" % BENCH],
                           capture_output=True, text=True, check=True).stdout
    filt.senderscore.cache.put("127.0.0.1", senderscore.Score(int(score), "dns"))
    reports, phases = filt.registrations()
    regs = ["register|report|%s|%s" % r for r in sorted(reports)]
    regs += ["register|filter|smtp-in|%s" % ph for ph in sorted(phases)]
    ev, ph = g.parse_registrations(regs)
    st = g.Stream(g.StreamSpec(version="0.6", sessions=30, lines=lines, events=ev, phases=ph))
    data = st.handshake_bytes() + b"".join(st.iter_sessions_bytes())

    engine = Engine(filt, loop=asyncio.new_event_loop())
    for at in range(0, len(data), 4096):  # reads that cut messages, as smtpd's do
        engine.feed(data[at:at + 4096])
    engine.end_of_input()
    sdk = lines_of(b"\n".join(engine.out) + b"\n")
    run = subprocess.run([sys.executable, os.path.join(BENCH, "senderscore_loop.py")],
                         input=data, capture_output=True, check=True)
    floor = lines_of(run.stdout)
    assert sorted(l for l in floor if l.startswith("register|")) == sorted(
        l for l in sdk if l.startswith("register|")), "the floor must register what the filter does"
    answers = [l for l in sdk if not l.startswith("register|")]
    assert [l for l in floor if not l.startswith("register|")] == answers
    assert sum("|X-SenderScore: %d" % int(score) in l for l in answers) == 30
    assert sum(l.endswith("|junk") for l in answers) == 30
    assert run.stderr.count(b"junk") == 30  # one log line per decision


@pytest.mark.parametrize("loop", ["echo_loop.py", "senderscore_loop.py"])
def test_loops_answer_what_came_with_the_handshake_before_eof(loop):
    """A stream piped in whole (the handshake, a session, EOF: one read) is
    answered in full by the baselines too, as by the SDK (issue 13); the
    echo loop once dropped what its handshake read brought."""
    import subprocess

    st = g.Stream(g.StreamSpec(version="0.6", sessions=2, lines=3))
    run = subprocess.run([sys.executable, os.path.join(BENCH, loop)],
                         input=st.handshake_bytes() + b"".join(st.iter_sessions_bytes()),
                         capture_output=True, check=True)
    answers = lines_of(run.stdout)
    assert sum(l.startswith("filter-dataline|") and l.endswith("|.") for l in answers) == 2
    assert sum(l.startswith("filter-result|") for l in answers) >= 2  # commit (and connect)


@pytest.mark.skipif(not runner.shutil.which("valgrind"), reason="valgrind is not installed")
def test_instruction_counts_per_session_are_repeatable_and_tell_work_apart():
    """--small --instructions (callgrind's Ir per session) is what a noisy
    machine can still compare: the same filter on the same stream counts
    the same twice, and the floor, which does senderscore's work on top of
    echoing, counts more per session than the echo loop it is built on."""
    a = bench_args(sessions=200, lines=10, stderr_file=None, handshake_timeout=10.0, exit_timeout=10.0)
    # (through env(1), as the shortcuts run the SDK's filters: python is counted, not env)
    floor = "env SCORE_UNUSED=1 %s %s" % (sys.executable, os.path.join(BENCH, "senderscore_loop.py"))
    echo = runner.instructions_per_session(a, "echo_loop", ECHO, 10)
    again = runner.instructions_per_session(a, "echo_loop", ECHO, 10)
    more = runner.instructions_per_session(a, "senderscore_loop", floor, 10)
    assert echo["sessions"] == 100  # the last half: the first half's one-time costs cancel out
    assert abs(again["ir_per_session"] - echo["ir_per_session"]) < 0.01 * echo["ir_per_session"], (echo, again)
    assert more["ir_per_session"] > 1.2 * echo["ir_per_session"], (echo, more)


def test_instructions_without_small_is_a_usage_error(capsys):
    """--instructions counts only the --small set: with a single filter it
    used to be ignored, and the run timed instead of counting."""
    with pytest.raises(SystemExit) as exit_:
        runner.main(["--instructions", "@echo"])
    assert exit_.value.code == 2
    assert "--instructions counts the --small set only: add --small" in capsys.readouterr().err


def test_runner_counts_incomplete_when_answers_missing(tmp_path):
    """A filter that swallows data-lines never completes: reported, not hung."""
    f = tmp_path / "mute.py"
    f.write_text("import os, sys\n"
                 "buf = b''\n"
                 "while b'config|ready\\n' not in buf: buf += os.read(0, 4096)\n"
                 "os.write(1, b'register|filter|smtp-in|data-line\\nregister|ready\\n')\n"
                 "while os.read(0, 65536): pass\n")
    a = bench_args(sessions=5, lines=5, idle_timeout=0.5, sample_interval=0)
    r = runner.run_once(a, "mute", "%s %s" % (sys.executable, f))
    assert not r["complete"] and r["timed_out"] and r["dots"] == 0


def test_against_skips_missing_anchor(capsys):
    a = bench_args(sessions=5, lines=5, repeats=1)
    out = runner.Output(a)
    c = runner.mode_against(a, out, "@echo", "/nonexistent/filter-senderscore -x")
    assert "skipped" in c
    printed = capsys.readouterr().out
    assert "skipped: " in printed and "not installed" in printed


def test_resolvers_are_loopback(tmp_path):
    f = tmp_path / "resolv.conf"
    f.write_text("nameserver 127.0.0.53\nnameserver ::1\noptions edns0\n")
    assert runner.resolvers_are_loopback(str(f))
    f.write_text("nameserver 127.0.0.1\nnameserver 10.0.0.2\n")
    assert not runner.resolvers_are_loopback(str(f))
    f.write_text("# nothing\n")
    assert not runner.resolvers_are_loopback(str(f))


def test_dns_querying_anchor_never_runs_outside_the_namespace(monkeypatch):
    monkeypatch.delenv(runner.NETNS_MARK, raising=False)
    monkeypatch.setattr(runner, "resolvers_are_loopback", lambda *a: False)
    a = bench_args(sessions=2, lines=2, isolate="no")
    r = runner.run_once(a, "ss", "%s -c pass # filter-senderscore" % sys.executable)
    assert "private network namespace" in r["skipped"]  # even with --isolate no


def test_against_and_memory_modes_small(capsys):
    a = bench_args(sessions=30, lines=8, repeats=2, sample_interval=0.05)
    out = runner.Output(a)
    c = runner.mode_against(a, out, "@echo", "@echo")
    assert c["a"]["all_complete"] and c["b"]["all_complete"] and c["ratio_lines_per_s"] > 0
    a2 = bench_args(lines=3, sample_interval=0.05, interleave=5, memory_sessions="100,1000")
    m = runner.mode_memory(a2, out, "@echo")
    assert m["all_complete"] and m["sizes"] == [100, 1000]
    assert set(m["rss_at_sessions_MB_in_largest_run"]) == {"100", "1000"}
    assert "flat" in capsys.readouterr().out
