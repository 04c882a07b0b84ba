"""The filter printed in README.md works as the README says."""

import re
from pathlib import Path

from enginekit import Driven

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def readme_filter():
    code = re.search(r"```python\n(.*?)```", README, re.S).group(1)
    namespace = {"__name__": "readme"}  # so the `if __name__ == "__main__"` run() is skipped
    exec(compile(code, "README.md", "exec"), namespace)
    return namespace["f"]


def test_readme_filter_rejects_localhost_and_tags_messages():
    d = Driven(readme_filter())
    w = d.wire
    assert d.send(w.request("1", "helo", "s1", "t1", "LocalHost"))[0].endswith(
        b"reject|550 5.7.1 HELO localhost not accepted"
    )
    d.send(w.report("1", "link-identify", "s1", "EHLO", "mx.example.org"))
    out = d.send(*[w.request("1", "data-line", "s1", "t2", line) for line in [b"X-HELO-Checked: forged", b"Subject: hi", b"", b"body", b"."]])
    assert [line.split(b"|", 3)[3] for line in out] == [
        b"X-HELO-Checked: mx.example.org",
        b"Subject: hi",
        b"",
        b"body",
        b".",
    ]
