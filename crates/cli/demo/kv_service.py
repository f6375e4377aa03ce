# The demo partition's program: a TCP service that keeps its state in
# memory. Each request "N\n" (N = the client's sequence number) is answered
# "N COUNT DIGEST\n": COUNT is how many requests it has served since it
# started, DIGEST a hash chained over every request, so a lost, repeated or
# reordered request, or memory that did not survive a move, shows in the
# answer. It also holds a block of memory it keeps rewriting: the request
# "verify" (which counts as no request) replays every write the service
# made to it and answers "verify ok PAGES" when all of it is as it should
# be, "verify BAD ..." naming the first page that is not.
import hashlib
import selectors
import socket
import sys

port = int(sys.argv[1])
ballast = bytearray(int(sys.argv[2]) << 20 if len(sys.argv) > 2 else 32 << 20)
for i in range(0, len(ballast), 4096):
    ballast[i] = (i // 4096) % 251
count = 0
chain = hashlib.sha256()


def verify():
    pages = len(ballast) // 4096
    want = [p % 251 for p in range(pages)]
    for c in range(1, count + 1):
        want[(c * 4096) % len(ballast) // 4096] = c % 256
    zeros = bytes(4095)
    for p in range(pages):
        page = ballast[p * 4096:(p + 1) * 4096]
        if page[0] != want[p] or page[1:] != zeros:
            return b"verify BAD page %d: first byte %d, want %d\n" % (p, page[0], want[p])
    return b"verify ok %d\n" % pages

sel = selectors.DefaultSelector()
srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", port))
srv.listen(16)
sel.register(srv, selectors.EVENT_READ)
pending = {}
print(f"kv service listening on port {port}", flush=True)
while True:
    for key, _ in sel.select(timeout=0.05):
        s = key.fileobj
        if s is srv:
            c, addr = srv.accept()
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pending[c] = b""
            sel.register(c, selectors.EVENT_READ)
            print(f"client {addr[0]}:{addr[1]} connected", flush=True)
            continue
        data = s.recv(65536)
        if not data:
            sel.unregister(s)
            del pending[s]
            s.close()
            continue
        buf = pending[s] + data
        *lines, rest = buf.split(b"\n")
        pending[s] = rest
        out = []
        for line in lines:
            if line == b"verify":
                out.append(verify())
                continue
            count += 1
            chain.update(line + b"\n")
            ballast[(count * 4096) % len(ballast)] = count % 256
            out.append(b"%s %d %s\n" % (line, count, chain.hexdigest()[:16].encode()))
        s.sendall(b"".join(out))
