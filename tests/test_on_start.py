"""``@f.on_start``: a background task started once registered, cancelled at EOF."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

import pytest

import filterkit
from smtpd_filter_sdk import Filter
from smtpd_filter_sdk.testing.harness import Harness


def test_starts_after_registration_and_is_cancelled_at_close():
    f = Filter("bg")
    seen: list[str] = []

    @f.on_start
    async def background():
        seen.append("started")
        try:
            await asyncio.sleep(3600)
        finally:
            seen.append("cancelled")

    @f.on("connect")
    async def connect(session, rdns, src):
        await asyncio.sleep(0)  # the loop runs: the background task gets its turn
        return None

    h = Harness(f)
    assert seen == []  # the loop has not run yet
    assert h.session(src="192.0.2.1").connect.decision == "proceed"
    assert seen == ["started"]
    h.close()
    assert seen == ["started", "cancelled"]


def test_a_failing_background_task_is_logged_and_the_filter_goes_on():
    f = Filter("bg")

    @f.on_start
    async def broken():
        raise RuntimeError("no redis")

    @f.on("connect")
    async def connect(session, rdns, src):
        await asyncio.sleep(0.01)

    with Harness(f) as h:
        assert h.session(src="192.0.2.1").connect.decision == "proceed"
        assert any("background task broken failed: RuntimeError('no redis')" in line for line in h.stderr)


def test_only_async_functions():
    f = Filter("bg")
    with pytest.raises(TypeError):
        f.on_start(lambda: None)


def test_the_process_exits_on_eof_with_a_background_task_running(tmp_path):
    script = tmp_path / "bg.py"
    script.write_text(textwrap.dedent("""
        import asyncio
        from smtpd_filter_sdk import Filter
        f = Filter("bg")

        @f.on_start
        async def forever():
            while True:
                await asyncio.sleep(0.01)

        @f.on("connect")
        def connect(session, rdns, src):
            return None

        f.run()
    """))
    from smtpd_filter_sdk.testing.wire import Wire

    w = Wire("0.6")
    stdin = b"".join(line + b"\n" for line in w.handshake())
    r = subprocess.run([sys.executable, str(script)], input=stdin, capture_output=True, env=filterkit.env(), timeout=10)
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith(b"register|ready\n")
