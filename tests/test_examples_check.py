"""Every example passes smtpd-filter-check on every released protocol
dialect: run as smtpd runs it, through the built-in nasty sessions, nothing
it writes would make smtpd exit or hang."""

from __future__ import annotations

import shlex
import sys

import pytest

from examplekit import ROOT, all_examples
from smtpd_filter_sdk.dns import dnsbl_name
from smtpd_filter_sdk.testing.checker import RELEASED_DIALECTS, check
from smtpd_filter_sdk.testing.dnsserver import DNSServer, Zone


@pytest.fixture(scope="module")
def dns_port():
    zone = Zone().add("*.bl.test", "A", "127.0.0.2").set_behaviour(dnsbl_name("192.0.2.1", "bl.test"), "nxdomain")
    with DNSServer(zone) as srv:
        yield srv.port


def args_for(name: str, tmp_path, dns_port: int) -> list[str]:
    return {
        "dnsbl.py": ["--zone", "bl.test", "--action", "header", "--resolver", f"127.0.0.1:{dns_port}", "--timeout", "1"],
        "event_log.py": ["--output", str(tmp_path / "events.jsonl")],
        "rate_limit.py": ["--max", "3", "--window", "60"],
        "subject_tag.py": ["--body-pattern", "caf"],
    }.get(name, [])


def test_there_are_at_least_six_examples():
    assert {p.name for p in all_examples()} >= {
        "add_header.py", "reject_helo.py", "dnsbl.py", "rate_limit.py", "subject_tag.py", "event_log.py",
    }


@pytest.mark.parametrize("path", all_examples(), ids=lambda p: p.name)
def test_example_passes_the_checker_on_every_dialect(path, tmp_path, dns_port):
    command = shlex.join([sys.executable, str(path), *args_for(path.name, tmp_path, dns_port)])
    result = check(command, RELEASED_DIALECTS, env_extra={"PYTHONPATH": str(ROOT)}, hang_timeout=5.0,
                   smtp_out=path.name == "event_log.py")
    assert [r.dialect for r in result.results] == list(RELEASED_DIALECTS)
    bad = [f.format() for f in result.findings if f.severity in ("FATAL", "HANG")]
    assert bad == [] and not result.failed
    assert all(r.sessions > 5 and r.restarts == 0 for r in result.results)
    for r in result.results:
        # The only thing smtpd may do to an SDK filter's output is cut long
        # lines on < 7.4, which the SDK logs.
        assert {f.rule for f in r.findings} <= ({"legacy-truncation"} if r.dialect in ("0.4", "0.6") else set())
    if path.name == "event_log.py":  # it really wrote the events it was sent
        assert (tmp_path / "events.jsonl").read_text().count('"event": "link-connect"') > 5
