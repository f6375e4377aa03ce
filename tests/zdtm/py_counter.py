"""py_counter: a Python process with a lot of data and a log.

State: 200 MiB of pseudo-random bytes in a bytearray and a dict of 200000
entries (sha256 of both taken at setup); a SIGUSR1 handler counting
deliveries; a log written every 10 ms, one fixed-width line per sequence
number, through an fd without O_APPEND into a file preallocated to 16 MiB
(so the file's size never changes and a later restore from earlier images
rewrites the same bytes at the same offsets: see README.md).
Verified: both digests; the SIGUSR1 handler still installed and never run;
SigCgt unchanged; after 10 more lines, the fd offset is exactly 11 bytes per
line written, the file holds exactly the lines 0..n-1 before that offset,
and after it only NULs or the continuation n, n+1, ... (lines a discarded
original wrote after a leave-running checkpoint).
"""

import hashlib
import os
import random
import signal
import time

import zdtm

LINE = 11
LOG_SIZE = 16 << 20

usr1 = 0


def on_usr1(signum, frame):
    global usr1
    usr1 += 1


def line(n):
    return b"%010d\n" % n


def digests(data, table):
    return (hashlib.sha256(data).hexdigest(),
            hashlib.sha256(repr(sorted(table.items())).encode()).hexdigest())


def main():
    zdtm.init()
    signal.signal(signal.SIGUSR1, on_usr1)
    data = bytearray(random.Random(12345).randbytes(200 << 20))
    table = {"key%d" % i: (i * i, str(i)) for i in range(200000)}
    digest = digests(data, table)
    cgt = zdtm.status_field("SigCgt")

    fd = os.open(zdtm.path("py_counter.log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.ftruncate(fd, LOG_SIZE)
    seq = 0

    def write_line():
        nonlocal seq
        n = os.write(fd, line(seq))
        zdtm.check(n == LINE, "short log write")
        seq += 1

    while seq < 10:
        write_line()
        time.sleep(0.01)
    zdtm.ready()
    while not zdtm.stop:
        write_line()
        time.sleep(0.01)

    if zdtm.sabotage == 1:
        data[12345678] ^= 1
    elif zdtm.sabotage == 2:
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    elif zdtm.sabotage == 3:
        os.lseek(fd, -LINE, os.SEEK_CUR)
    elif zdtm.sabotage == 4:
        table["key7"] = (0, "7")
    elif zdtm.sabotage == 5:
        os.pwrite(fd, line(2), 3 * LINE)

    zdtm.check(signal.getsignal(signal.SIGUSR1) is on_usr1, "the SIGUSR1 handler is gone")
    zdtm.check(zdtm.status_field("SigCgt") == cgt,
               "SigCgt is %s, was %s" % (zdtm.status_field("SigCgt"), cgt))
    zdtm.check(usr1 == 0, "SIGUSR1 handler ran %d times" % usr1)
    for _ in range(10):
        write_line()
        time.sleep(0.01)
    off = os.lseek(fd, 0, os.SEEK_CUR)
    zdtm.check(off == seq * LINE, "log offset %d after %d lines, expected %d" % (off, seq, seq * LINE))
    with open(zdtm.path("py_counter.log"), "rb") as f:
        content = f.read()
    zdtm.check(len(content) == LOG_SIZE, "log size %d, expected %d" % (len(content), LOG_SIZE))
    head = content[:off]
    for i in range(seq):
        if head[i * LINE:(i + 1) * LINE] != line(i):
            zdtm.fail("log line %d is %r, expected %r (gap or duplicate)"
                      % (i, head[i * LINE:(i + 1) * LINE], line(i)))
    tail = content[off:].rstrip(b"\0")
    zdtm.check(len(tail) % LINE == 0 and b"\0" not in tail, "log has garbage after line %d" % seq)
    for i in range(len(tail) // LINE):
        zdtm.check(tail[i * LINE:(i + 1) * LINE] == line(seq + i),
                   "log line %d after the offset is not a continuation" % (seq + i))
    zdtm.check(digests(data, table) == digest, "data digest changed")
    zdtm.log("%d lines" % seq)
    zdtm.passed()


main()
