"""Last stage of pipeline.sh: checks `yes lpm | cat -n` output line by line.

Reads slowly (a 10 ms pause every 2000 lines) so the pipes stay full. Writes
ready after 10000 good lines and once the shell has armed its trap. On
SIGTERM it reads 5000 more lines (within 10 s) and reports.
"""

import os
import select
import signal
import sys
import time

import zdtm


def main():
    signal.signal(signal.SIGTERM, zdtm._on_term)
    fd = sys.stdin.fileno()
    expect = 1
    error = None
    buf = b""
    ready = False
    stop_at = None
    deadline = None

    while True:
        if zdtm.stop and stop_at is None:
            stop_at = expect + 5000
            deadline = time.monotonic() + 10
            if zdtm.sabotage == 1:
                expect += 1
        if stop_at is not None and (expect >= stop_at or error):
            break
        if deadline is not None and time.monotonic() > deadline:
            error = error or "the pipeline stalled: line %d not reached in 10 s" % stop_at
            break
        if error:
            time.sleep(0.02)
            continue
        r, _, _ = select.select([fd], [], [], 0.1)
        if not r:
            continue
        chunk = os.read(fd, 16384)
        if not chunk:
            error = "EOF after line %d" % (expect - 1)
            continue
        buf += chunk
        lines = buf.split(b"\n")
        buf = lines.pop()
        for ln in lines:
            num, _, word = ln.partition(b"\t")
            try:
                n = int(num)
            except ValueError:
                n = -1
            if n != expect or word != b"lpm":
                error = "line %r, expected %d followed by lpm" % (ln[:40], expect)
                break
            expect += 1
            if expect % 2000 == 0:
                time.sleep(0.01)
        if not ready and expect > 10000 and os.path.exists(zdtm.path("pipeline.armed")):
            zdtm.ready()
            ready = True
    if error:
        zdtm.fail(error)
    zdtm.log("%d lines" % (expect - 1))
    zdtm.passed()


main()
