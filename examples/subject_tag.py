#!/usr/bin/env python3
"""subject-tag: put a tag in front of the Subject of junk mail.

    filter "subject-tag" proc-exec "/usr/bin/python3 /path/to/subject_tag.py --tag '[SPAM]' --body-pattern 'viagra|lottery'"

A message is junk when a filter before this one said so (the session or the
transaction was junked: smtpd then writes ``X-Spam: Yes`` on top of it) or
when ``--body-pattern`` (a case-insensitive regex) matches a body line.  Its
Subject becomes ``[SPAM] original subject`` (once: a message tagged already
is left alone); a message without a Subject gets one.

It uses ``@f.on_message``: the SDK buffers each whole message, hands it over
with editable headers and body, and sends the result on at the end.  (A
filter that only needs the header block should use ``@f.on_headers``, which
streams the body instead - see add_header.py.)
"""

import argparse
import re

from smtpd_filter_sdk import Filter

#: ``make demo``: the demo's second message says "Grüße"
DEMO = {"args": ["--body-pattern", "Grüße"]}


def is_junk(session, msg, pattern):
    if session.junk or (session.tx is not None and session.tx.junk):
        return "junked by an earlier filter"
    if (msg.headers.get("X-Spam") or "").lower() == "yes":
        return "X-Spam: Yes"
    if pattern is not None:
        for line in msg.body:  # bytes, unstuffed, without CRLF
            if pattern.search(line.decode("utf-8", "replace")):
                return f"body matches {pattern.pattern!r}"
    return None


def build(tag="[SPAM]", pattern=None) -> Filter:
    f = Filter("subject-tag")

    @f.on_message
    def tag_subject(session, msg):
        why = is_junk(session, msg, pattern)
        if why is None:
            return None
        subject = msg.headers.get("Subject")
        if subject is None:
            msg.headers.add("Subject", tag, prepend=False)
        elif not subject.startswith(tag):
            msg.headers.replace("Subject", f"{tag} {subject}")  # refolded if long
        f.log(f"tagged ({why})", session.id)
        return None  # deliver the changed message; reject(...) would refuse it at commit

    return f


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tag", default="[SPAM]", help="what goes in front of the Subject (default [SPAM])")
    parser.add_argument("--body-pattern", help="also tag messages whose body matches this regex")
    args = parser.parse_args(argv)
    if not args.tag.strip() or "\n" in args.tag or "\r" in args.tag:
        parser.error("--tag must be one line of text")
    try:
        pattern = re.compile(args.body_pattern, re.IGNORECASE) if args.body_pattern else None
    except re.error as exc:
        parser.error(f"bad --body-pattern: {exc}")
    build(args.tag, pattern).run()


if __name__ == "__main__":
    main()
