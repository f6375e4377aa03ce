"""Shared helpers for the Python zdtm programs (see README.md for the protocol)."""

import os
import signal
import sys
import time

stop = False
sabotage = int(os.environ.get("ZDTM_SABOTAGE") or 0)


def _on_term(signum, frame):
    global stop
    stop = True


def init():
    """Installs the SIGTERM handler; call first."""
    signal.signal(signal.SIGTERM, _on_term)


def path(name):
    """A file next to ZDTM_RESULT, where a program keeps its files."""
    return os.path.join(os.path.dirname(os.environ["ZDTM_RESULT"]), name)


def put(var, text):
    target = os.environ[var]
    tmp = "%s.tmp.%d" % (target, os.getpid())
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, target)


def log(msg):
    sys.stderr.write("[%d] %s\n" % (os.getpid(), msg))
    sys.stderr.flush()


def ready():
    put("ZDTM_READY", "ready\n")


def wait():
    while not stop:
        time.sleep(0.02)


def passed():
    log("PASS")
    put("ZDTM_RESULT", "PASS\n")
    os._exit(0)


def fail(msg):
    log("FAIL: " + msg)
    put("ZDTM_RESULT", "FAIL: %s\n" % msg)
    os._exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def status_field(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return line.split(":", 1)[1].strip()
    return None
