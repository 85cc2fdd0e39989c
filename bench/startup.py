#!/usr/bin/env python3
"""Startup: how long from spawning qserver to the first reply of a command.

    python bench/startup.py              # 15 spawns of each entry point
    python bench/startup.py --spawns 30

Client libraries' test suites spawn the server and connect about 0.1 s later (greenstalk's
sleep 0.1 s after Popen), so this is a product promise; it is a figure here, not a test,
because a slower or busier host would miss it (tests/test_cli.py only checks that a
spawned server answers). Each spawn: Popen, then connect with retries every 2 ms (as a
client that starts early does), send `stats`, time the first bytes of the reply; then
SIGTERM. Both entry points are measured, interleaved: `python -m qserver` and the
`qserver` console script; so is `python -c pass` (the interpreter starting and
exiting, site hooks included), the floor under both. Prints median, min and max in ms,
how many spawns answered within 100 ms, and how busy the machine's CPUs were meanwhile
(other processes slow a start down a lot: this machine is shared). Before each round
it waits up to --quiet-wait s for the CPUs to be under 15 % busy, as bench/run.py does.
Run it from anywhere; it uses the interpreter it runs under.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))   # bench/
from machine import busy_since, cpu_times, wait_quiet  # noqa: E402

BUDGET = 0.100           # client suites connect 0.1 s after spawning the server
TIMEOUT = 10.0           # a server that does not answer within this fails the run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def first_reply(argv: list, port: int) -> float:
    """Seconds from Popen to the first bytes of the reply to `stats`."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
                break
            except OSError:
                if time.monotonic() - start > TIMEOUT or proc.poll() is not None:
                    raise SystemExit(f"{argv[0]}: no listener after {TIMEOUT} s "
                                     f"(exit code {proc.poll()})")
                time.sleep(0.002)
        with sock:
            sock.settimeout(TIMEOUT)
            sock.sendall(b"stats\r\n")
            if sock.recv(3) != b"OK ":
                raise SystemExit(f"{argv[0]}: unexpected reply to stats")
            return time.monotonic() - start
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def entry_points() -> dict:
    entries = {"python -m qserver": [sys.executable, "-m", "qserver"]}
    script = os.path.join(os.path.dirname(sys.executable), "qserver")
    if os.path.exists(script):
        entries["qserver (console script)"] = [script]
    else:
        print(f"(no console script at {script}; pip install -e . to measure it)")
    return entries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spawns", type=int, default=15, help="spawns per entry point")
    parser.add_argument("--quiet-wait", type=float, default=3.0,
                        help="wait at most S s for quiet CPUs before each round (3)")
    args = parser.parse_args()
    entries = entry_points()
    times = {name: [] for name in entries}
    # For scale: the bare interpreter, started and exited (site hooks included), is
    # the floor under both entry points.
    floor = "python -c pass (floor)"
    times[floor] = []
    busy = []
    for _ in range(args.spawns):              # interleaved: drifts hit both alike
        wait_quiet(args.quiet_wait)
        for name, argv in entries.items():
            port = free_port()
            before = cpu_times()
            times[name].append(first_reply(argv + ["-l", "127.0.0.1", "-p", str(port)],
                                           port))
            busy.append(busy_since(before))
        start = time.monotonic()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        times[floor].append(time.monotonic() - start)
    print(f"startup: spawn -> first reply to `stats`, {args.spawns} spawns each, "
          f"{os.cpu_count()} CPUs busy {statistics.median(busy):.0%} (median over the "
          f"spawns, the spawn itself included)")
    print(f"{'entry point':<26} {'median':>8} {'min':>8} {'max':>8}   within {BUDGET * 1000:.0f} ms")
    for name, values in times.items():
        ms = [v * 1000 for v in values]
        within = sum(v <= BUDGET for v in values)
        print(f"{name:<26} {statistics.median(ms):>6.1f}ms {min(ms):>6.1f}ms "
              f"{max(ms):>6.1f}ms   {within}/{len(values)}")


if __name__ == "__main__":
    main()
