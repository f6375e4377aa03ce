# The demo's connected user: sends numbered requests over one TCP
# connection, checks every answer against its own model of the service
# (count and chained digest), and on SIGINT or after the given seconds
# prints a summary: requests, errors, and the longest time it waited for an
# answer. It exits non-zero on any wrong answer or a broken connection.
# With a fourth argument, a file, it rewrites there the number of answers
# checked so far, every 10 answers (tests wait on it).
import hashlib
import os
import signal
import socket
import sys
import time

addr, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
progress = sys.argv[4] if len(sys.argv) > 4 else None
stop = False


def on_int(sig, frame):
    global stop
    stop = True


signal.signal(signal.SIGINT, on_int)
signal.signal(signal.SIGTERM, on_int)
deadline = time.monotonic() + 30
while True:
    try:
        s = socket.create_connection((addr, port), timeout=2)
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.1)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s.settimeout(20)
chain = hashlib.sha256()
n = 0
longest = 0.0
errors = []
buf = b""
end = time.monotonic() + seconds
while not stop and time.monotonic() < end and not errors:
    n += 1
    line = b"%d" % n
    t = time.monotonic()
    try:
        s.sendall(line + b"\n")
        while b"\n" not in buf:
            d = s.recv(4096)
            if not d:
                errors.append(f"request {n}: connection closed")
                break
            buf += d
    except OSError as e:
        errors.append(f"request {n}: {e}")
        break
    if errors:
        break
    wait = time.monotonic() - t
    longest = max(longest, wait)
    answer, buf = buf.split(b"\n", 1)
    chain.update(line + b"\n")
    want = b"%s %d %s" % (line, n, chain.hexdigest()[:16].encode())
    if answer != want:
        errors.append(f"request {n}: answer {answer!r}, expected {want!r}")
    elif progress and n % 10 == 0:
        with open(progress + ".tmp", "w") as f:
            f.write(f"{n}\n")
        os.replace(progress + ".tmp", progress)
    time.sleep(0.002)
print(f"requests {n} errors {len(errors)} longest_wait_ms {longest * 1000:.1f}", flush=True)
for e in errors:
    print(e, flush=True)
sys.exit(1 if errors else 0)
