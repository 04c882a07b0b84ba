#!/usr/bin/env python3
"""SDK pass-through: registers data-line (and commit) and echoes every line.

Default: the shape of every header-tagging filter (senderscore -scoreHeader,
rdns, add_header): an ``on_headers`` handler sees the header block, then the
body streams through the SDK's hot loop untouched.  ``--per-line``: a Python
``on_data_line`` callback is called for every line and returns None (pass).

Measured against echo_loop.py (target: >= 70 % of its lines/s) and against
Debian's filter-senderscore (target: >= 5x its lines/s on the 100 KB stream).
"""
import os
import sys

# Use the working tree's SDK when it is not installed (run.py starts filters
# with a near-empty environment, like smtpd, so PYTHONPATH is not set).
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from smtpd_filter_sdk import Filter  # noqa: E402

f = Filter("passthrough")

if "--per-line" in sys.argv[1:]:

    @f.on_data_line
    def echo(session, line: bytes):  # None = pass the line through unchanged
        return None

else:

    @f.on_headers
    def look(session, headers):  # nothing to change: the message passes as it came
        return None


if __name__ == "__main__":
    f.run()
