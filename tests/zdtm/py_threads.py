"""py_threads: a Python process with 8 threads.

State: six threads each extending a sha256 hash chain (5 links per ms), a
producer and a consumer passing consecutive integers through a bounded
queue.Queue (so both block on its condition variables).
Verified: the same native thread ids exist and no others; every thread is
alive and still sees its own native id; all make progress after SIGTERM;
after they stop, each chain recomputed from its seed matches its length
and head; the consumer got every integer in order.
"""

import hashlib
import os
import queue
import threading
import time

import zdtm


class Chain(threading.Thread):
    def __init__(self, i):
        super().__init__(name="hash-%d" % i, daemon=True)
        self.seed = b"seed-%d" % i
        self.h = self.seed
        self.count = 0
        self.tid = None
        self.error = None
        self.quit = False
        self.die = False

    def run(self):
        self.tid = threading.get_native_id()
        while not self.quit and not self.die:
            h = self.h
            for _ in range(5):
                h = hashlib.sha256(h).digest()
            self.h = h
            self.count += 5
            if threading.get_native_id() != self.tid and not self.error:
                self.error = "%s: native id changed" % self.name
            time.sleep(0.001)

    def recompute(self):
        h = self.seed
        for _ in range(self.count):
            h = hashlib.sha256(h).digest()
        return h


def main():
    zdtm.init()
    q = queue.Queue(maxsize=100)
    state = {"produced": 0, "consumed": 0, "error": None, "quit": False, "skip": False}
    tids = {}

    def producer():
        tids["producer"] = threading.get_native_id()
        n = 0
        while not state["quit"]:
            try:
                q.put(n, timeout=0.1)
            except queue.Full:
                continue
            n += 2 if state["skip"] else 1
            state["skip"] = False
            state["produced"] = n
            if n % 50 == 0:
                time.sleep(0.001)

    def consumer():
        tids["consumer"] = threading.get_native_id()
        want = 0
        while not state["quit"]:
            try:
                got = q.get(timeout=0.1)
            except queue.Empty:
                continue
            if got != want and not state["error"]:
                state["error"] = "consumer got %d, expected %d" % (got, want)
            want = got + 1
            state["consumed"] = want
            time.sleep(0.0005)

    chains = [Chain(i) for i in range(6)]
    others = [threading.Thread(target=producer, name="producer", daemon=True),
              threading.Thread(target=consumer, name="consumer", daemon=True)]
    for t in chains + others:
        t.start()
    while any(c.tid is None for c in chains) or len(tids) < 2 or state["consumed"] < 100:
        time.sleep(0.01)
    native = {c.tid for c in chains} | set(tids.values()) | {threading.get_native_id()}
    zdtm.ready()
    zdtm.wait()

    if zdtm.sabotage == 1:
        chains[2].h = b"x" * 32
    elif zdtm.sabotage == 2:
        chains[3].die = True
        chains[3].join()
    elif zdtm.sabotage == 3:
        state["skip"] = True

    tasks = {int(t) for t in os.listdir("/proc/self/task")}
    zdtm.check(tasks == native, "threads %s, expected %s" % (sorted(tasks), sorted(native)))
    for t in chains + others:
        zdtm.check(t.is_alive(), "thread %s is dead" % t.name)
    snap = [c.count for c in chains]
    consumed = state["consumed"]
    deadline = time.monotonic() + 20
    while True:
        slow = [c.name for c, s in zip(chains, snap) if c.count < s + 50]
        if state["consumed"] < consumed + 100:
            slow.append("consumer")
        if not slow:
            break
        zdtm.check(time.monotonic() < deadline, "no progress in 20 s: %s" % ", ".join(slow))
        time.sleep(0.01)
    for c in chains:
        c.quit = True
    state["quit"] = True
    for t in chains + others:
        t.join(10)
        zdtm.check(not t.is_alive(), "thread %s did not stop" % t.name)
    for c in chains:
        zdtm.check(c.error is None, str(c.error))
        zdtm.check(c.recompute() == c.h, "%s: chain of %d links does not match its head"
                   % (c.name, c.count))
    zdtm.check(state["error"] is None, str(state["error"]))
    zdtm.check(state["consumed"] + q.qsize() == state["produced"],
               "produced %d, consumed %d, queued %d"
               % (state["produced"], state["consumed"], q.qsize()))
    zdtm.log("chains %s, %d items" % ([c.count for c in chains], state["consumed"]))
    zdtm.passed()


main()
