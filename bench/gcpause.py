#!/usr/bin/env python3
"""GC pauses with a million jobs live: the collector's passes, timed inside the server.

    python bench/gcpause.py                    # collector policy on and off, 2 reps each
    python bench/gcpause.py --reps 3 --jobs 1000000 --grow 250000 --seconds 20
    python bench/gcpause.py --log              # with -b DIR -f 50

Each run starts a fresh qserver (pinned to CPU 0) under a wrapper that times every
pass of CPython's cyclic collector (gc.callbacks: wall time and the thread's CPU
time, which a busy machine inflates much less), fills --jobs jobs of 100 B into tube
`backlog` (bench/gen, CPU 1), then runs the 5,000 jobs/s cycle of `rate5k` for
--seconds in tube `bench` while a second generator puts --grow more jobs into the
backlog (1 connection, 8 puts in flight): growing the long-lived objects by a
quarter is what makes CPython's collector take a full pass over all of them. Reported
per run: the cycle's max and p99 end-to-end latency (the loop stalls show up there,
together with the machine's own noise) and the longest pass of each generation
during the fill and during the cycle. `off` is the same tree with the collector
policy (qserver/collector.py) not started: CPython's defaults, as before issue 14.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import GEN_BIN, build_gen, free_port, wait_quiet  # noqa: E402

WRAPPER = r"""
import gc, json, os, sys, time
import qserver.collector
if os.environ["GCPAUSE_POLICY"] == "off":
    qserver.collector.Collector.start = lambda self: None
phase_name = {"value": "start"}
passes = []
t = {}
def cb(phase, info):
    g = info["generation"]
    if phase == "start":
        t[g] = (time.perf_counter(), time.thread_time())
    else:
        w0, c0 = t.pop(g, (None, None))
        if w0 is not None:
            passes.append((phase_name["value"], g, time.perf_counter() - w0,
                           time.thread_time() - c0))
gc.callbacks.append(cb)
import signal
def mark(signum, frame):
    phase_name["value"] = "cycle" if phase_name["value"] == "start" else "after"
signal.signal(signal.SIGUSR2, mark)
from qserver.cli import main
sys.argv[0] = "qserver"
try:
    main(sys.argv[1:])
finally:
    gc.callbacks.remove(cb)
    with open(os.environ["GCPAUSE_OUT"], "w") as f:
        json.dump({"passes": passes, "frozen": gc.get_freeze_count()}, f)
"""


def gen(args: list, limit: float) -> dict:
    p = subprocess.run(["taskset", "-c", "1", str(GEN_BIN)] + args + ["--timeout", str(limit)],
                       capture_output=True, text=True, timeout=limit + 30)
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {"status": "error", "error": p.stderr[-300:]}


def one_run(policy: str, opts) -> dict:
    port = free_port()
    out = tempfile.NamedTemporaryFile(suffix=".json", delete=False).name
    logdir = tempfile.mkdtemp(prefix="gcpause-log-") if opts.log else None
    env = dict(os.environ, GCPAUSE_POLICY=policy, GCPAUSE_OUT=out,
               PYTHONPATH=str(HERE.parent))
    argv = ["taskset", "-c", "0", sys.executable, "-c", WRAPPER, "-l", "127.0.0.1", "-p", str(port)]
    if logdir:
        argv += ["-b", logdir, "-f", "50"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rec = {"policy": policy}
    try:
        deadline = time.monotonic() + 20
        import socket
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("server not listening")
                time.sleep(0.02)
        common = ["--port", str(port), "--server-pid", str(proc.pid), "--size", "100"]
        fill = gen(["fill"] + common + ["--tube", "backlog", "--conns", "10", "--depth", "50",
                                        "--jobs", str(opts.jobs)], 300)
        rec["fill_status"] = fill.get("status")
        proc.send_signal(signal.SIGUSR2)        # passes from here on belong to the cycle
        grower = subprocess.Popen(
            ["taskset", "-c", "1", str(GEN_BIN), "fill"] + common
            + ["--tube", "backlog", "--conns", "1", "--depth", "8", "--jobs", str(opts.grow),
               "--timeout", "300"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) \
            if opts.grow else None
        cyc = gen(["cycle"] + common + ["--producers", "10", "--workers", "10", "--depth", "1",
                                        "--wdepth", "1", "--backlog", "100", "--rate", "5000",
                                        "--warmup", "1", "--seconds", str(opts.seconds)],
                  opts.seconds + 60)
        proc.send_signal(signal.SIGUSR2)
        if grower is not None:
            grower.wait(300)
        rec.update(status=cyc.get("status"), ops_per_s=cyc.get("ops_per_s"),
                   p99_us=cyc.get("p99_us"), max_us=cyc.get("max_us"),
                   srv_cpu_us_per_op=cyc.get("srv_cpu_us_per_op"),
                   noise=(cyc.get("gen_runq_util") or 0) + (cyc.get("srv_runq_util") or 0)
                   + (cyc.get("steal_util") or 0))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
        if logdir:
            subprocess.run(["rm", "-rf", logdir])
    data = json.load(open(out))
    os.unlink(out)
    rec["frozen_at_exit"] = data["frozen"]
    for part in ("start", "cycle"):
        for g in (0, 1, 2):
            ps = [p for p in data["passes"] if p[0] == part and p[1] == g]
            key = "fill" if part == "start" else "cycle"
            rec[f"{key}_gen{g}_n"] = len(ps)
            rec[f"{key}_gen{g}_max_ms"] = max((p[2] for p in ps), default=0) * 1000
            rec[f"{key}_gen{g}_max_cpu_ms"] = max((p[3] for p in ps), default=0) * 1000
            rec[f"{key}_gen{g}_top_cpu_ms"] = sorted(round(p[3] * 1000, 1) for p in ps)[-4:]
    return rec


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--jobs", type=int, default=1_000_000)
    ap.add_argument("--grow", type=int, default=250_000)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--policies", default="on,off")
    ap.add_argument("--log", action="store_true", help="with -b DIR -f 50")
    ap.add_argument("--quiet-wait", type=float, default=3)
    opts = ap.parse_args()
    build_gen()
    policies = opts.policies.split(",")
    recs = []
    print(f"gcpause: {opts.jobs:,} jobs, +{opts.grow:,} during a {opts.seconds:g} s cycle at "
          f"5,000 jobs/s{', -b -f 50' if opts.log else ''}; {opts.reps} reps", flush=True)
    for rep in range(opts.reps):
        for policy in policies:                 # interleaved
            busy = wait_quiet(opts.quiet_wait, 0.15)
            rec = one_run(policy, opts)
            rec["busy_before"] = busy
            recs.append(rec)
            print(json.dumps({k: (round(v, 2) if isinstance(v, float) else v)
                              for k, v in rec.items()}), flush=True)
    print()
    print("| policy | runs | cycle max µs | cycle p99 µs | longest pass in the cycle, ms (CPU ms) | "
          "full passes in the cycle | longest full pass in the fill, ms (CPU ms) | noise |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for policy in policies:
        rs = [r for r in recs if r["policy"] == policy and r.get("status") == "ok"]
        if not rs:
            print(f"| {policy} | 0 | error |||||")
            continue

        def span(key, f=".0f"):
            vals = [r[key] for r in rs]
            return f"{min(vals):{f}}-{max(vals):{f}}" if len(vals) > 1 else f"{vals[0]:{f}}"
        for r in rs:
            r["cycle_max_ms"] = max(r[f"cycle_gen{g}_max_ms"] for g in (0, 1, 2))
            r["cycle_max_cpu_ms"] = max(r[f"cycle_gen{g}_max_cpu_ms"] for g in (0, 1, 2))
        print(f"| {policy} | {len(rs)} | {span('max_us')} | {span('p99_us')} | "
              f"{span('cycle_max_ms', '.1f')} ({span('cycle_max_cpu_ms', '.1f')}) | "
              f"{span('cycle_gen2_n')} | {span('fill_gen2_max_ms', '.1f')} "
              f"({span('fill_gen2_max_cpu_ms', '.1f')}) | {span('noise', '.2f')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
