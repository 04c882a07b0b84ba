#!/usr/bin/env python3
"""event-log: every report event smtpd sends, as one JSON object per line.

    filter "event-log" proc-exec "/usr/bin/python3 /path/to/event_log.py --output /var/log/smtpd-events.jsonl"

Incoming sessions (``smtp-in``) and, where smtpd offers them, outgoing ones
(``smtp-out``: attach the filter to a relay action, ``action "out" relay
filter "event-log"``; smtpd 6.6 has none, and the SDK then registers smtp-in
only).  Each line reads like

    {"time": "1795218811.493653", "subsystem": "smtp-in", "event": "tx-mail",
     "session": "a3785d2560151333", "msgid": "5c1a0b9e", "result": "ok",
     "address": "alice@example.org"}

with the event's own fields, typed and in the same order on every protocol
version (the SDK parses the dialects).  AUTH credentials never appear:
smtpd masks them.  The filter decides nothing and sees no message content,
so it costs smtpd nothing but the reports.  SIGHUP reopens ``--output``
(after logrotate moved it); the default, ``-``, is stderr - the mail log.
"""

import argparse
import dataclasses
import json
import sys

from smtpd_filter_sdk import Filter


def as_record(report):
    """A report as a flat JSON-able dict."""
    record = {"time": report.timestamp, "subsystem": report.subsystem, "event": report.event, "session": report.session}
    for field in dataclasses.fields(report.params):
        value = getattr(report.params, field.name)
        record[field.name] = value if value is None or isinstance(value, (int, str)) else str(value)
    return record


class Output:
    """Where the lines go; reopened on SIGHUP."""

    def __init__(self, path):
        self.path = path
        self.stream = None
        self.reopen()

    def reopen(self):
        if self.path == "-":
            self.stream = sys.stderr
            return
        new = open(self.path, "a", buffering=1, encoding="utf-8")  # line-buffered: one write per event
        old, self.stream = self.stream, new
        if old is not None:
            old.close()

    def write(self, record):
        self.stream.write(json.dumps(record, ensure_ascii=False) + "\n")


def build(output) -> Filter:
    f = Filter("event-log")

    # "*" is every event; one handler per subsystem.  smtp-out reports are
    # registered only where smtpd announces them (config|subsystem|smtp-out).
    @f.on_report("*")
    @f.on_report("*", subsystem="smtp-out")
    def log_event(session, report):
        output.write(as_record(report))

    @f.on_reload  # a failing reopen is logged and the old file kept
    def reopen():
        output.reopen()

    return f


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="-", help="file to append to (default -: stderr, the mail log)")
    args = parser.parse_args(argv)
    try:
        output = Output(args.output)
    except OSError as exc:
        parser.error(f"--output: {exc}")
    build(output).run()


if __name__ == "__main__":
    main()
