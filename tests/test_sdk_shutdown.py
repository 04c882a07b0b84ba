"""Filter.on_shutdown: called once when smtpd goes away, before the loop closes."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from pathlib import Path

from smtpd_filter_sdk import Filter
from smtpd_filter_sdk.testing.harness import Harness, SubprocessHarness


def test_sync_and_async_handlers_run_once_at_close_and_a_failing_one_is_logged():
    f = Filter("shut")
    calls = []

    @f.on_shutdown
    def plain():
        calls.append("plain")

    @f.on_shutdown
    async def later():
        await asyncio.sleep(0)
        calls.append("async")

    @f.on_shutdown
    def broken():
        raise RuntimeError("boom")

    h = Harness(f)
    with h:
        h.session().send_message()
        assert calls == []
    assert calls == ["plain", "async"]
    assert any("shutdown handler 'broken' failed" in line and "boom" in line for line in h.stderr)


def test_a_filter_process_runs_its_handler_on_eof(tmp_path):
    script = tmp_path / "f.py"
    script.write_text(textwrap.dedent("""
        import sys
        from smtpd_filter_sdk import Filter
        f = Filter("shut")
        @f.on_shutdown
        async def bye():
            f.log("closing pooled connections")
        f.run()
    """))
    h = SubprocessHarness(f"{sys.executable} {script}", env_extra={"PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    with h:
        h.session().quit()
    assert any("closing pooled connections" in line for line in h.stderr)
