#!/usr/bin/env python3
"""add-header: add one header to every message that passes.

    filter "add-header" proc-exec "/usr/bin/python3 /path/to/add_header.py --header 'X-Filtered-By: add-header'"

Only the header block is buffered; the body streams through untouched.  An
inbound header of the same name is removed first, so a client cannot forge it.
"""

import argparse

from smtpd_filter_sdk import Filter


def build(name: str, value: str) -> Filter:
    f = Filter("add-header")

    # @f.on_headers is all this filter asks for, so the SDK registers
    # data-line + commit and streams each body line straight through.
    @f.on_headers
    def add(session, headers):
        headers.remove(name)  # the client's copy, if it sent one
        headers.add(name, value)  # prepended, like a trace header

    return f


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--header", default="X-Filtered-By: add-header", help="'Name: value' to add")
    args = parser.parse_args(argv)
    name, sep, value = args.header.partition(":")
    if not sep or not name.strip() or " " in name.strip():
        parser.error(f"--header must look like 'Name: value', not {args.header!r}")
    build(name.strip(), value.strip()).run()


if __name__ == "__main__":
    main()
