#!/usr/bin/env python3
"""Compaction slices: how long the log sweep holds the event loop with many live jobs.

    python bench/compaction.py               # 1,000,000 live jobs of 100 B
    python bench/compaction.py --jobs 200000 --reps 3

The sweep rewrites every live job into the newest segment, a slice at a time, and hands
the loop back (call_soon) between slices; each slice stops once SWEEP_SLICE_SECONDS
(10 ms) are used up, so no client waits long behind it. This measures that: the journal
and engine in-process, driven by a scheduler this script runs (as
tests/test_journal_unit.py does), with 1,000,000 live jobs written to the log; the sweep
is started directly and each slice is timed with perf_counter. The first "slice" is
the start: it rotates the segment and lists the live ids (the sweep proper begins at
the next loop turn), so it is reported on its own. Like the
server after a replay, the job objects are frozen out of the cyclic GC first, so the
figures are the sweep's and not a full GC pass's. Before each sweep it waits up to
--quiet-wait s for the CPUs to be under 15 % busy (as bench/run.py does) and reports how
busy they were during the sweep (the sweep itself keeps one CPU busy). A figure, not a
test: the test suite only checks that the sweep runs in slices and migrates every job.
"""
from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # this work tree
sys.path.insert(0, str(Path(__file__).resolve().parent))          # bench/

from machine import busy_since, cpu_times, wait_quiet  # noqa: E402

import qserver.journal  # noqa: E402
from qserver.engine import Engine  # noqa: E402
from qserver.journal import Journal  # noqa: E402
from qserver.session import Session  # noqa: E402


class Scheduler:
    """What the journal asks of the event loop, run by hand: only call_soon is used
    with fsync off (-F), and that is how the sweep schedules its next slice."""

    def __init__(self):
        self.soon = []

    def clock(self):
        return time.monotonic()

    def call_soon(self, callback):
        self.soon.append(callback)

    def call_later(self, delay, callback):
        raise AssertionError("no timers with fsync off")

    def run_in_thread(self, work, done):
        raise AssertionError("no fsync with fsync off")


def sweep_once(jobs: int, segment_size: int, quiet_wait: float) -> dict:
    directory = tempfile.mkdtemp(prefix="qbench-compaction-")
    try:
        scheduler = Scheduler()
        journal = Journal(directory, segment_size, None, scheduler)   # -F: no fsync
        journal.recover()
        engine = Engine(log=journal)
        journal.start(engine)
        engine.attach(Session(wake=lambda outcome: None))
        body = b"y" * 100 + b"\r\n"
        wall = time.time()
        for _ in range(jobs):
            engine.put(engine.default_tube, engine.allocate_id(), 0, 0, 60, body, 0.0, wall)
        segments = len([n for n in os.listdir(directory) if n.startswith("qlog.")])
        gc.collect()
        gc.freeze()
        wait_quiet(quiet_wait)
        cpus = cpu_times()
        try:
            started = time.perf_counter()
            journal._start_sweep()                  # lists the ids; the slices follow
            slices = [time.perf_counter() - started]
            while journal.sweep is not None:
                if not scheduler.soon:
                    raise SystemExit("the sweep stopped without finishing")
                callback = scheduler.soon.pop(0)
                started = time.perf_counter()
                callback()
                slices.append(time.perf_counter() - started)
        finally:
            gc.unfreeze()
        busy = busy_since(cpus)
        if journal.migrated < jobs - 1:
            raise SystemExit(f"only {journal.migrated} of {jobs} jobs migrated")
        return {"slices": slices, "migrated": journal.migrated, "segments": segments,
                "busy": busy}
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1_000_000, help="live jobs (1,000,000)")
    parser.add_argument("--reps", type=int, default=1, help="repetitions (1)")
    parser.add_argument("--segment-size", type=int, default=8 << 20,
                        help="log segment size in bytes (8 MiB)")
    parser.add_argument("--quiet-wait", type=float, default=3.0,
                        help="wait at most S s for quiet CPUs before each sweep (3)")
    args = parser.parse_args()
    target = qserver.journal.SWEEP_SLICE_SECONDS * 1000
    print(f"compaction: {args.jobs:,} live jobs of 100 B, segments of "
          f"{args.segment_size >> 20} MiB, slice target {target:.0f} ms, "
          f"{os.cpu_count()} CPUs")
    print(f"{'rep':>3} {'segments':>8} {'slices':>6} {'first ms':>8} {'longest ms':>10} "
          f"{'longest after first':>19} {'median ms':>9} {'total s':>7} {'CPUs busy':>9}")
    for rep in range(1, args.reps + 1):
        r = sweep_once(args.jobs, args.segment_size, args.quiet_wait)
        s = [x * 1000 for x in r["slices"]]
        rest = s[1:] or [0.0]
        print(f"{rep:>3} {r['segments']:>8} {len(s):>6} {s[0]:>8.1f} {max(s):>10.1f} "
              f"{max(rest):>19.1f} {statistics.median(s):>9.1f} {sum(s) / 1000:>7.2f} "
              f"{r['busy']:>9.0%}")


if __name__ == "__main__":
    main()
