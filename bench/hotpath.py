"""In-process hot path: put, reserve and delete through the command table, without
sockets. Prints microseconds per put+reserve+delete, and with --callgrind the
instructions per cycle counted by valgrind (the slope between two run lengths, so
startup and imports drop out): a figure that does not move with the machine's load,
for comparing two builds of qserver on a busy host.

    python bench/hotpath.py                          # this checkout, wall clock
    python bench/hotpath.py --callgrind              # instructions per cycle
    python bench/hotpath.py --callgrind --tree /tmp/other-checkout
"""

import argparse
import os
import subprocess
import sys
import time


def cycles(n: int) -> float:
    """Run n put+reserve+delete cycles; returns microseconds per cycle."""
    from qserver.commands import Commands
    from qserver.engine import Engine
    from qserver.session import Session
    from qserver.stats import ServerInfo
    from qserver.wire import Framer

    class Client:
        def __init__(self, engine):
            self.framer = Framer()
            self.session = Session(wake=lambda outcome: None)
            self.pending_put = self.pending_body = None     # older and newer builds
            self.closing = False
            engine.attach(self.session)

    engine = Engine()
    commands = Commands(engine, ServerInfo("bench", 65535, 1 << 20, 0.0), 65535)
    client = Client(engine)
    framer = client.framer
    put = b"put 0 0 60 100\r\n" + b"x" * 100 + b"\r\n"
    started = time.perf_counter()
    for _ in range(n):
        framer.buf += put
        commands.execute(client, framer.next())
        framer.buf += b"reserve\r\n"
        reply = commands.execute(client, framer.next())
        framer.buf += b"delete %s\r\n" % reply.split(b" ", 2)[1]
        commands.execute(client, framer.next())
    return (time.perf_counter() - started) / n * 1e6


def callgrind(tree: str, n: int) -> int:
    env = dict(os.environ, PYTHONPATH=tree)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
         sys.executable, __file__, "--run", str(n)],
        env=env, capture_output=True, text=True, check=True).stderr
    line = next(l for l in out.splitlines() if "Collected" in l)
    return int(line.split()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--callgrind", action="store_true")
    p.add_argument("--tree", default=os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), help="the checkout to measure (default: this one)")
    p.add_argument("--run", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.run:
        cycles(args.run)
        return
    if args.callgrind:
        subprocess.run([sys.executable, "-m", "compileall", "-q",
                        os.path.join(args.tree, "qserver")], check=True)
        low, high = callgrind(args.tree, 2000), callgrind(args.tree, 12000)
        print(f"{(high - low) / 10000:.0f} instructions per put+reserve+delete "
              f"({args.tree})")
    else:
        sys.path.insert(0, args.tree)
        print(f"{min(cycles(100_000) for _ in range(5)):.2f} us per put+reserve+delete")


if __name__ == "__main__":
    main()
