"""Testing tools for filter authors (see docs/testing.md).

* ``harness``: ``Harness`` (a ``Filter`` in-process) and ``SubprocessHarness``
  (any command, run the way smtpd runs it): simulated SMTP sessions, decisions
  and the queued message back, every output line judged like smtpd would.
* ``simulator``: the smtpd model behind both (report/request order, decision
  effects, lka_filter.c's rules for filter output).
* ``checker``: the ``smtpd-filter-check`` command.
* ``scenarios``: its seeded built-in sessions.
* ``demo``: ``python -m smtpd_filter_sdk.testing.demo`` (``make demo``).
* ``wire``: smtpd-side line builders per dialect.
* ``strategies``: hypothesis strategies for smtpd streams (needs hypothesis).
* ``dnsserver``: a loopback DNS server for tests.

Nothing is imported here, so ``import smtpd_filter_sdk.testing`` stays cheap and
hypothesis stays optional.
"""
