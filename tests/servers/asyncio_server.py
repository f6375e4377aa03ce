#!/usr/bin/env python3
"""A small asyncio TCP server whose in-memory state a test checks from
outside, across checkpoint and restore (crates/cli/tests/servers.rs).

    asyncio_server.py PORT_FILE

Listens on 127.0.0.1, a free port it writes to PORT_FILE once it accepts.
One command per line, one reply line per command:

    PUT key value   store a pair                     -> OK
    GET key         a stored value                   -> the value, or NONE
    ARM seconds     a one-shot call_later timer      -> OK
    STATE           the state as one JSON object     -> {...}
    INC             this connection's own counter    -> its new value

STATE holds: ticks (a periodic timer every 20 ms), keys and sum (sha256 of
the sorted "key=value\\n" lines of the dataset), armed and fired (one-shot
timers set and fired), open and served (connections), and the inner
client: a coroutine of this same process connected to the server over
loopback, sending INC every 20 ms and checking that the server's
per-connection counter matches its own (sent, bad).
"""

import asyncio
import hashlib
import json
import os
import sys

state = {"ticks": 0, "armed": 0, "fired": 0, "open": 0, "served": 0, "sent": 0, "bad": 0}
data = {}


def digest():
    h = hashlib.sha256()
    for k in sorted(data):
        h.update(f"{k}={data[k]}\n".encode())
    return h.hexdigest()


def tick(loop):
    state["ticks"] += 1
    loop.call_later(0.02, tick, loop)


def fire():
    state["fired"] += 1


async def serve(reader, writer):
    state["open"] += 1
    state["served"] += 1
    count = 0  # per-connection state
    loop = asyncio.get_running_loop()
    try:
        while line := await reader.readline():
            words = line.decode().split()
            if not words:
                continue
            cmd, args = words[0], words[1:]
            if cmd == "PUT" and len(args) == 2:
                data[args[0]] = args[1]
                reply = "OK"
            elif cmd == "GET" and len(args) == 1:
                reply = data.get(args[0], "NONE")
            elif cmd == "ARM" and len(args) == 1:
                state["armed"] += 1
                loop.call_later(float(args[0]), fire)
                reply = "OK"
            elif cmd == "STATE":
                reply = json.dumps(dict(state, keys=len(data), sum=digest()))
            elif cmd == "INC":
                count += 1
                reply = str(count)
            else:
                reply = "ERR"
            writer.write(reply.encode() + b"\n")
            await writer.drain()
    finally:
        state["open"] -= 1
        writer.close()


async def inner(port):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    while True:
        writer.write(b"INC\n")
        await writer.drain()
        reply = int((await reader.readline()).decode())
        state["sent"] += 1
        if reply != state["sent"]:
            state["bad"] += 1
        await asyncio.sleep(0.02)


async def main(port_file):
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    loop.call_later(0.02, tick, loop)
    task = asyncio.create_task(inner(port))
    with open(port_file + ".tmp", "w") as f:
        f.write(f"{port}\n")
    os.rename(port_file + ".tmp", port_file)
    async with server:
        await asyncio.gather(server.serve_forever(), task)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
