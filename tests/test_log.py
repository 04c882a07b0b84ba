"""The logger: one line per call, capped, no CR/LF; while the runtime runs,
a chunk's lines leave in one write once the loop gets to it."""

import asyncio
import threading

from smtpd_filter_sdk.log import MAX_LOG_LINE, Logger


def recorder():
    writes = []
    return writes, Logger("t", write=writes.append)


def test_a_line_per_call_capped_and_without_cr_lf():
    writes, log = recorder()
    log("forged\r\nsecond line", "sid1")
    log("x" * 5000)
    assert writes[0] == b"sid1 forged\\r\\nsecond line\n"
    assert len(writes[1]) == MAX_LOG_LINE - 16 + len(b"... (truncated)\n")


def test_held_lines_leave_together_when_the_loop_gets_to_it():
    writes, log = recorder()
    loop = asyncio.new_event_loop()
    log.hold(loop)
    for i in range(3):
        log(f"decision {i}", "sid")
    assert writes == []  # still handling the chunk
    loop.run_until_complete(asyncio.sleep(0))
    assert writes == [b"sid decision 0\nsid decision 1\nsid decision 2\n"]
    log("later")
    loop.run_until_complete(asyncio.sleep(0))
    assert writes[1:] == [b"later\n"]


def test_other_threads_and_a_closed_loop_write_at_once():
    writes, log = recorder()
    loop = asyncio.new_event_loop()
    log.hold(loop)
    worker = threading.Thread(target=log, args=("from a worker thread",))
    worker.start()
    worker.join()
    assert writes == [b"from a worker thread\n"]
    loop.close()
    log("while closing")
    assert writes[-1] == b"while closing\n"
    log.hold(asyncio.new_event_loop())
    log("held")
    log.unhold()
    assert writes[-1] == b"held\n"
