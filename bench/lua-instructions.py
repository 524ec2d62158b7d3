#!/usr/bin/env python3
"""Instructions redis-server runs per member of a room append (issue 19).

Counts with `valgrind --tool=callgrind`, which counts instructions, not
seconds: the same script on the same Redis gives the same count whatever
else the machine is doing, so a change to lua/ can be measured on a busy
2-core box where wall-clock figures drift by 20 %.

For each script version (the working tree's lua/, and with --base REV the
one at that git revision) and for the raw ceiling (the same entry written by
a plain pipelined XADD), it starts its own redis-server under callgrind on a
free port (never 6379), runs a warm-up, then CALLS append.lua calls of
MEMBERS members (20 rooms in turn, as W1), and reports the instructions of
that work per member: the run minus a run of the warm-up alone.

Needs valgrind, redis-server and redis-cli; Python's standard library only.

    bench/lua-instructions.py --base HEAD          # working tree vs the last commit
    bench/lua-instructions.py --base 0d254ee --aof no --calls 200
"""

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = '{"t":1733540000000000000,"k":12345}'


def resp(*args):
    out = [f"*{len(args)}\r\n".encode()]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(f"${len(b)}\r\n".encode() + b + b"\r\n")
    return b"".join(out)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def script(rev):
    def read(name):
        if rev is None:
            with open(os.path.join(ROOT, "lua", name)) as f:
                return f.read()
        return subprocess.run(
            ["git", "-C", ROOT, "show", f"{rev}:lua/{name}"],
            check=True, capture_output=True, text=True,
        ).stdout
    # As the engine loads it (src/engine/redis/scripts.rs): lib.lua, then the script.
    return read("lib.lua") + "\n" + read("append.lua")


def append_call(sha, room, members):
    players = [f"p{room}-{i}" for i in range(members)]
    keys = []
    for p in players:
        keys += [f"mythos:player:{{{p}}}:events", f"mythos:player:{{{p}}}:meta"]
    argv = [members, 0, 1000, 7 * 86400000, "r", "bench", "2026-12-07T03:00:00.000Z",
            DATA, f"r{room}", "", "PUBLISH", f"mythos:live:room:{{r{room}}}", ""] + players
    return resp("EVALSHA", sha, len(keys), *keys, *argv)


def xadd_calls(room, members):
    return b"".join(
        resp("XADD", f"mythos:player:{{p{room}-{i}}}:events", "MAXLEN", "=", 1000, "*",
             "event_type", "bench", "timestamp", "2026-12-07T03:00:00.000Z",
             "data", DATA, "room_id", f"r{room}")
        for i in range(members))


def cli(port, *args, stdin=None):
    return subprocess.run(["redis-cli", "-p", str(port), *args], input=stdin,
                          check=True, capture_output=True).stdout


def instructions(payload_of, aof):
    """Starts redis-server under callgrind, sends what payload_of(sha_of)
    builds through `redis-cli --pipe`, shuts it down; returns its Ir total."""
    d = tempfile.mkdtemp(prefix="mythos-lua-ir-")
    port = free_port()
    out = os.path.join(d, "callgrind.out")
    p = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "redis-server",
         "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", aof,
         "--appendfsync", "everysec", "--dir", d],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                if cli(port, "PING").strip() == b"PONG":
                    break
            except subprocess.CalledProcessError:
                pass
            time.sleep(0.1)
        else:
            sys.exit("redis-server under valgrind did not answer PING within 30 s")
        payload = payload_of(lambda src: cli(port, "SCRIPT", "LOAD", src).decode().strip())
        answer = cli(port, "--pipe", stdin=payload).decode()
        if "errors: 0" not in answer:
            sys.exit(f"redis-cli --pipe reported errors: {answer}")
        try:
            cli(port, "SHUTDOWN", "NOSAVE")
        except subprocess.CalledProcessError:
            pass
        p.wait(timeout=120)
        with open(out) as f:
            for line in f:
                if line.startswith(("summary:", "totals:")):
                    return int(line.split()[1])
        sys.exit("callgrind wrote no total")
    finally:
        if p.poll() is None:
            p.kill()
        shutil.rmtree(d, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", help="git revision whose lua/ is compared with the working tree's")
    ap.add_argument("--calls", type=int, default=200, help="append.lua calls measured (default 200)")
    ap.add_argument("--members", type=int, default=50, help="members per room (default 50)")
    ap.add_argument("--aof", choices=["yes", "no"], default="yes",
                    help="appendonly, as W1 runs Redis (default yes, fsync everysec)")
    a = ap.parse_args()
    for tool in ("valgrind", "redis-server", "redis-cli"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: apt-get install valgrind redis-server")
    rooms = 20
    n = a.calls * a.members

    def append_ir(src):
        def warm(load):
            sha = load(src)
            return b"".join(append_call(sha, r, a.members) for r in range(rooms))

        def work(load):
            sha = load(src)
            warmup = b"".join(append_call(sha, r, a.members) for r in range(rooms))
            return warmup + b"".join(append_call(sha, c % rooms, a.members) for c in range(a.calls))
        return (instructions(work, a.aof) - instructions(warm, a.aof)) / n

    rows = []
    if a.base:
        rows.append((f"append.lua at {a.base}", append_ir(script(a.base))))
    rows.append(("append.lua, working tree", append_ir(script(None))))
    idle = instructions(lambda load: b"", a.aof)
    xadd = (instructions(lambda load: b"".join(xadd_calls(c % rooms, a.members)
                                               for c in range(a.calls)), a.aof) - idle) / n
    print(f"redis-server instructions per member ({a.calls} calls x {a.members} members, "
          f"appendonly {a.aof}; valgrind --tool=callgrind)")
    print("| script | instructions per member | ÷ raw XADD |")
    print("|---|---:|---:|")
    for name, ir in rows:
        print(f"| {name} | {ir:,.0f} | {ir / xadd:.2f} |")
    print(f"| raw XADD of the same entry (pipelined) | {xadd:,.0f} | 1.00 |")
    if len(rows) == 2:
        print(f"change: {rows[1][1] / rows[0][1] - 1:+.1%}")


if __name__ == "__main__":
    main()
