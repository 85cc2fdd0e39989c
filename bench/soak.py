#!/usr/bin/env python3
"""Soak test for qserver with a write-ahead log: a mixed workload, SIGKILL restarts,
and invariant checks after every restart. Not part of CI (see bench/README.md).

Each cycle: start `qserver -b DIR -f MS`, check the invariants against what the
clients saw acknowledged, run producers, workers (reserve then delete / release /
bury / touch) and a kicker on several tubes for a while, then SIGKILL the server in
the middle of it all. Invariants checked after each restart:

* no acknowledged job is lost: every job whose put was answered INSERTED and whose
  delete was never answered DELETED exists, in its tube, with its body;
* no acknowledged delete is undone (sampled);
* no id is reused: every INSERTED id is new, and the first id after a restart is
  above every id acknowledged before;
* nothing is reserved after a restart, and the counts in `stats` and `stats-tube`
  (current-jobs-urgent/ready/reserved/delayed/buried) agree with `stats-job` of
  every job;
* every RESERVED body during the run matches the body that was put.

Usage: python bench/soak.py --minutes 30 [--kill-every 8] [--fsync-ms 0] [--dir DIR]
Exit status 0 when no invariant was violated, 1 otherwise.
"""

import argparse
import asyncio
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

TUBES = [b"soak-a", b"soak-b", b"soak-c", b"soak-d"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Ledger:
    """What the clients saw acknowledged."""

    def __init__(self):
        self.live = {}              # id -> (tube, body): put acked, delete not acked
        self.deleted = set()        # delete acked
        self.seen = set()           # every id ever acked by INSERTED (or adopted)
        self.delete_in_flight = set()
        self.violations = []
        self.counts = dict.fromkeys(
            ["put", "delete", "release", "bury", "touch", "kick", "reserve",
             "timed_out", "not_found", "adopted", "maybe_deleted_gone"], 0)

    def violation(self, text: str) -> None:
        self.violations.append(text)
        print("VIOLATION:", text, flush=True)

    def inserted(self, job_id: int, tube: bytes, body: bytes) -> None:
        if job_id in self.seen:
            self.violation(f"id {job_id} reused by a put")
        self.seen.add(job_id)
        self.live[job_id] = (tube, body)
        self.counts["put"] += 1

    def was_deleted(self, job_id: int) -> None:
        self.live.pop(job_id, None)
        self.deleted.add(job_id)
        self.counts["delete"] += 1


class Conn:
    """A minimal raw-protocol client over asyncio streams."""

    def __init__(self, reader, writer):
        self.r, self.w = reader, writer

    @classmethod
    async def open(cls, port):
        r, w = await asyncio.open_connection("127.0.0.1", port, limit=1 << 22)
        return cls(r, w)

    async def cmd(self, line: bytes, body: bytes | None = None) -> tuple:
        data = line + b"\r\n" + (body + b"\r\n" if body is not None else b"")
        self.w.write(data)
        return await self.reply()

    async def reply(self) -> tuple:
        """(first line without CRLF, payload or None)."""
        line = (await self.r.readuntil(b"\r\n"))[:-2]
        parts = line.split()
        if parts and parts[0] in (b"RESERVED", b"FOUND") and len(parts) == 3:
            return line, (await self.r.readexactly(int(parts[2]) + 2))[:-2]
        if parts and parts[0] == b"OK" and len(parts) == 2:
            return line, (await self.r.readexactly(int(parts[1]) + 2))[:-2]
        return line, None

    def close(self):
        self.w.close()


def yaml(payload: bytes) -> dict:
    out = {}
    for line in payload.decode().splitlines()[1:]:
        key, _, value = line.partition(": ")
        out[key] = value.strip('"')
    return out


# --------------------------------------------------------------------------- workload


async def producer(port, ledger, rng, stop):
    c = await Conn.open(port)
    n = 0
    while not stop.is_set():
        tube = rng.choice(TUBES)
        n += 1
        body = b"%s:%d:%d:" % (tube, os.getpid(), rng.getrandbits(48))
        body += bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64))) * \
            rng.choice([1, 1, 1, 30])
        pri = rng.choice([0, 100, 1023, 1024, 5000])
        delay = rng.choice([0, 0, 0, 0, 1, 2, 5])
        ttr = rng.choice([1, 2, 30, 60])
        line, _ = await c.cmd(b"use " + tube)
        assert line == b"USING " + tube, line
        line, _ = await c.cmd(b"put %d %d %d %d" % (pri, delay, ttr, len(body)), body)
        if not line.startswith(b"INSERTED "):
            ledger.violation(f"put answered {line!r}")
            continue
        ledger.inserted(int(line.split()[1]), tube, body)
        await asyncio.sleep(rng.random() * 0.02)


async def worker(port, ledger, rng, stop):
    c = await Conn.open(port)
    for tube in TUBES:
        await c.cmd(b"watch " + tube)
    await c.cmd(b"ignore default")
    while not stop.is_set():
        line, body = await c.cmd(b"reserve-with-timeout 1")
        if line in (b"TIMED_OUT", b"DEADLINE_SOON"):
            ledger.counts["timed_out"] += 1
            continue
        if not line.startswith(b"RESERVED "):
            ledger.violation(f"reserve answered {line!r}")
            continue
        ledger.counts["reserve"] += 1
        job_id = int(line.split()[1])
        known = ledger.live.get(job_id)
        if known is not None and known[1] != body:
            ledger.violation(f"job {job_id}: reserved body differs from the put")
        action = rng.random()
        if action < 0.55:
            await delete(c, ledger, job_id)
        elif action < 0.70:
            line, _ = await c.cmd(b"release %d %d %d" % (
                job_id, rng.choice([0, 2000]), rng.choice([0, 0, 1, 3])))
            count(ledger, line, b"RELEASED", "release")
        elif action < 0.82:
            line, _ = await c.cmd(b"bury %d %d" % (job_id, rng.choice([0, 10])))
            count(ledger, line, b"BURIED", "bury")
        elif action < 0.95:
            line, _ = await c.cmd(b"touch %d" % job_id)
            count(ledger, line, b"TOUCHED", "touch")
            await delete(c, ledger, job_id)
        else:
            await asyncio.sleep(rng.choice([0.1, 2.5]))   # may outlive a 1-2 s TTR
            await delete(c, ledger, job_id)


def count(ledger, line, ok, name):
    if line == ok:
        ledger.counts[name] += 1
    elif line == b"NOT_FOUND":               # the TTR ran out meanwhile
        ledger.counts["not_found"] += 1
    else:
        ledger.violation(f"{name} answered {line!r}")


async def delete(c, ledger, job_id):
    ledger.delete_in_flight.add(job_id)
    line, _ = await c.cmd(b"delete %d" % job_id)
    ledger.delete_in_flight.discard(job_id)
    if line == b"DELETED":
        ledger.was_deleted(job_id)
    elif line == b"NOT_FOUND":
        ledger.counts["not_found"] += 1
    else:
        ledger.violation(f"delete answered {line!r}")


async def kicker(port, ledger, rng, stop):
    c = await Conn.open(port)
    while not stop.is_set():
        tube = rng.choice(TUBES)
        await c.cmd(b"use " + tube)
        line, _ = await c.cmd(b"kick %d" % rng.randint(1, 20))
        if not line.startswith(b"KICKED "):
            ledger.violation(f"kick answered {line!r}")
        ledger.counts["kick"] += 1
        await asyncio.sleep(0.3)


async def run_workload(port, ledger, rng, seconds, args):
    """Run every client until the server is killed after `seconds`."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(producer(port, ledger, random.Random(rng.random()), stop))
             for _ in range(args.producers)]
    tasks += [asyncio.create_task(worker(port, ledger, random.Random(rng.random()), stop))
              for _ in range(args.workers)]
    tasks.append(asyncio.create_task(kicker(port, ledger, random.Random(rng.random()),
                                            stop)))
    await asyncio.sleep(seconds)
    return tasks


async def reap(tasks, ledger):
    """After the kill: every client ends with a connection error, nothing else."""
    done, pending = await asyncio.wait(tasks, timeout=10)
    for t in pending:
        t.cancel()
        ledger.violation("a client did not notice the server's death within 10 s")
    for t in done:
        exc = t.exception()
        if exc is not None and not isinstance(
                exc, (ConnectionError, asyncio.IncompleteReadError, OSError)):
            ledger.violation(f"client failed: {exc!r}")


# --------------------------------------------------------------------------- checks


async def check(port, ledger, rng) -> dict:
    """The invariants after a restart; returns facts for the report."""
    c = await Conn.open(port)
    t0 = time.monotonic()
    line, stats = await c.cmd(b"stats")
    first_reply = time.monotonic() - t0
    # The next id is above every id ever acknowledged.
    await c.cmd(b"use soak-probe")
    line, _ = await c.cmd(b"put 0 0 10 5", b"probe")
    probe = int(line.split()[1])
    if ledger.seen and probe <= max(ledger.seen):
        ledger.violation(f"id {probe} after restart is not above {max(ledger.seen)}")
    await c.cmd(b"delete %d" % probe)
    await c.cmd(b"use default")
    ledger.deleted.add(probe)
    ledger.seen.add(probe)

    # Every id that may exist: acknowledged live jobs, and ids we never saw answered
    # (puts in flight at the kill). Deleted ones are only sampled.
    unseen = [i for i in range(1, probe) if i not in ledger.seen]
    sample = rng.sample(sorted(ledger.deleted), min(2000, len(ledger.deleted)))
    candidates = sorted(set(ledger.live) | set(unseen) | set(sample))
    # No client runs now, so the only change possible during the check is a
    # delayed job becoming ready: the stats-job view must lie between the counts
    # taken just before and just after it.
    before = await snapshot(c)
    jobs = await stats_jobs(c, candidates)
    after = await snapshot(c)
    mismatch = compare(jobs, before, after)
    if mismatch:
        ledger.violation(f"stats disagree with stats-job: {mismatch}")
    server = after["*"]

    for job_id in list(ledger.live):
        if job_id not in jobs:
            if job_id in ledger.delete_in_flight:
                ledger.was_deleted(job_id)
                ledger.counts["maybe_deleted_gone"] += 1
            else:
                ledger.violation(f"acknowledged job {job_id} lost")
                ledger.live.pop(job_id)
        elif jobs[job_id]["tube"].encode() != ledger.live[job_id][0]:
            ledger.violation(f"job {job_id} moved to tube {jobs[job_id]['tube']}")
    for job_id in sample:
        if job_id in jobs:
            ledger.violation(f"deleted job {job_id} came back")
    for job_id in unseen:           # puts that were logged but never answered
        if job_id in jobs:
            line, body = await c.cmd(b"peek %d" % job_id)
            ledger.live[job_id] = (jobs[job_id]["tube"].encode(), body)
            ledger.counts["adopted"] += 1
        ledger.seen.add(job_id)     # gone for good otherwise: ids only go up
    # Bodies of a sample of live jobs are intact.
    for job_id in rng.sample(sorted(ledger.live), min(500, len(ledger.live))):
        line, body = await c.cmd(b"peek %d" % job_id)
        if body != ledger.live[job_id][1]:
            ledger.violation(f"job {job_id}: body differs after restart ({line!r})")
    ledger.delete_in_flight.clear()
    reserved = sum(1 for j in jobs.values() if j["state"] == "reserved")
    if reserved:
        ledger.violation(f"{reserved} jobs reserved right after a restart")
    c.close()
    return {"first_reply_s": first_reply, "jobs": len(jobs), "checked": len(candidates),
            "binlog": server.get("binlog-current-index")}


async def stats_jobs(c, ids) -> dict:
    out = {}
    for start in range(0, len(ids), 500):
        batch = ids[start:start + 500]
        c.w.write(b"".join(b"stats-job %d\r\n" % i for i in batch))
        for job_id in batch:
            line, payload = await c.reply()
            if line.startswith(b"OK"):
                out[job_id] = yaml(payload)
    return out


KEYS = ["urgent", "ready", "reserved", "delayed", "buried"]


async def snapshot(c) -> dict:
    """tube -> stats-tube fields, and "*" -> the server's stats."""
    line, tube_list = await c.cmd(b"list-tubes")
    out = {}
    for t in (t[2:] for t in tube_list.decode().splitlines()[1:]):
        line, payload = await c.cmd(b"stats-tube " + t.encode())
        if line.startswith(b"OK"):
            out[t] = yaml(payload)
    line, payload = await c.cmd(b"stats")
    out["*"] = yaml(payload)
    return out


def compare(jobs, before, after) -> list:
    """stats-job counts per tube and overall against the stats taken before and
    after them: buried, reserved and ready+delayed exactly; ready, urgent and
    delayed within the range that delayed jobs maturing meanwhile allows."""
    want = {"*": dict.fromkeys(KEYS, 0)}
    for j in jobs.values():
        for name in (j["tube"], "*"):
            per = want.setdefault(name, dict.fromkeys(KEYS, 0))
            per[j["state"]] += 1
            if j["state"] == "ready" and int(j["pri"]) < 1024:
                per["urgent"] += 1
    problems = []
    for name in set(want) | set(before) | set(after):
        w = want.get(name, dict.fromkeys(KEYS, 0))
        b = {k: int(before.get(name, {}).get(f"current-jobs-{k}", 0)) for k in KEYS}
        a = {k: int(after.get(name, {}).get(f"current-jobs-{k}", 0)) for k in KEYS}
        ok = (b["buried"] == w["buried"] == a["buried"]
              and b["reserved"] == w["reserved"] == a["reserved"] == 0
              and b["ready"] + b["delayed"] == w["ready"] + w["delayed"]
              == a["ready"] + a["delayed"]
              and b["ready"] <= w["ready"] <= a["ready"]
              and b["urgent"] <= w["urgent"] <= a["urgent"])
        if not ok:
            problems.append(f"{name}: before {b}, stats-job {w}, after {a}")
    return problems


# --------------------------------------------------------------------------- driver


def start_server(args, port, log_file):
    argv = args.qserver + ["-l", "127.0.0.1", "-p", str(port), "-b", args.dir,
                           "-f", str(args.fsync_ms), *args.extra]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log_file)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"qserver exited with {proc.returncode} at start; see "
                             f"{log_file.name}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.02)
    proc.kill()
    raise SystemExit("qserver did not listen within 60 s")


def rss_mib(pid) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def dir_mib(path) -> float:
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)) / 2**20


async def soak(args) -> int:
    rng = random.Random(args.seed)
    ledger = Ledger()
    port = free_port()
    log_path = os.path.join(tempfile.gettempdir(), f"qserver-soak-{os.getpid()}.log")
    log_file = open(log_path, "wb")
    end = time.monotonic() + args.minutes * 60
    restarts, facts, peak_rss = 0, [], 0.0
    started = time.monotonic()
    proc = start_server(args, port, log_file)
    try:
        while True:
            facts.append(await check(port, ledger, rng))
            if time.monotonic() >= end:
                break
            seconds = min(args.kill_every * rng.uniform(0.5, 1.5),
                          max(end - time.monotonic(), 0.5))
            tasks = await run_workload(port, ledger, rng, seconds, args)
            peak_rss = max(peak_rss, rss_mib(proc.pid))
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            await reap(tasks, ledger)
            restarts += 1
            proc = start_server(args, port, log_file)
            print(f"[{time.monotonic() - started:7.1f}s] restart {restarts}: "
                  f"live {len(ledger.live)}, puts {ledger.counts['put']}, "
                  f"deletes {ledger.counts['delete']}, "
                  f"violations {len(ledger.violations)}", flush=True)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        log_file.close()

    elapsed = time.monotonic() - started
    firsts = [f["first_reply_s"] for f in facts]
    print("\n=== qserver soak report ===")
    print(f"duration            {elapsed / 60:.1f} min, fsync-ms {args.fsync_ms}, "
          f"seed {args.seed}")
    print(f"SIGKILL restarts    {restarts}")
    print("acknowledged        " + ", ".join(f"{k} {v}" for k, v in ledger.counts.items()))
    print(f"live jobs at end    {len(ledger.live)} (ids seen {len(ledger.seen)})")
    print(f"jobs checked        {sum(f['checked'] for f in facts)} stats-job lookups "
          f"over {len(facts)} checks; largest job set {max(f['jobs'] for f in facts)}")
    print(f"first reply after restart: max {max(firsts) * 1000:.0f} ms, "
          f"mean {sum(firsts) / len(firsts) * 1000:.0f} ms")
    print(f"peak server RSS     {peak_rss:.1f} MiB; log dir {dir_mib(args.dir):.1f} MiB")
    print(f"server log          {log_path}")
    print(f"violations          {len(ledger.violations)}")
    for v in ledger.violations[:20]:
        print("  -", v)
    return 1 if ledger.violations else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=2.0, help="how long to run (2)")
    p.add_argument("--kill-every", type=float, default=8.0,
                   help="mean seconds between SIGKILLs (8; each is 0.5x to 1.5x)")
    p.add_argument("--fsync-ms", type=int, default=0, help="-f for qserver (0)")
    p.add_argument("--dir", help="log directory (default: a new temporary one, "
                                 "removed at the end unless --keep)")
    p.add_argument("--keep", action="store_true", help="keep the log directory")
    p.add_argument("--producers", type=int, default=2)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--qserver", default=f"{sys.executable} -m qserver",
                   help="command that starts the server (default: this python -m "
                        "qserver)")
    p.add_argument("extra", nargs="*", help="more qserver flags, after --")
    args = p.parse_args(argv)
    args.qserver = args.qserver.split()
    if args.seed is None:
        args.seed = random.randrange(1 << 30)
    made_dir = args.dir is None
    if made_dir:
        args.dir = tempfile.mkdtemp(prefix="qserver-soak-")
    try:
        return asyncio.run(soak(args))
    finally:
        if made_dir and not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
