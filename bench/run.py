#!/usr/bin/env python3
"""Side-by-side benchmark of qserver and beanstalkd.

    python bench/run.py                      # full run, every workload, 3 repetitions
    python bench/run.py --quick              # smoke test: 1 repetition, short runs, 100k fills
    python bench/run.py --servers qserver --workloads put50,cycle
    python bench/run.py --calibrate          # bench/gen vs ../shared/loadgen against beanstalkd
    python bench/run.py --list               # the workloads
    python bench/run.py --store              # beanstalkd, memory, Redis 1 node, Redis 2 nodes
                                             # (bench/storebench.py, ../shared/loadgen)

Each run gets a fresh server (pinned with taskset to --server-cpu, default 0) driven by
bench/gen/bin/qgen (pinned to --gen-cpu, default 1; compiled from bench/gen/qgen.c on
demand). Runs are interleaved: repetition by repetition, workload by workload, one server
after the other, so slow drifts of a shared machine hit both servers alike. Each figure is
the median over the repetitions. Results: bench/results/latest.{md,json,png} and a
timestamped runs-*.jsonl with every raw run. See bench/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
GEN_SRC = HERE / "gen" / "qgen.c"
GEN_BIN = HERE / "gen" / "bin" / "qgen"
RESULTS = HERE / "results"
LOADGEN_DIR = Path(os.environ.get("LOADGEN_DIR", REPO.parent / "shared" / "loadgen"))

README_BEGIN = "<!-- bench:latest:begin -->"
README_END = "<!-- bench:latest:end -->"


# --------------------------------------------------------------------------- workloads
@dataclass
class Workload:
    key: str
    title: str
    kind: str                    # put | drain | cycle | rate | rate1m | rss | rss_drain | restart | startup
    gen_args: list = field(default_factory=list)
    log: str | None = None       # fsync ms for -f, None = no log
    headline: str = "ops_per_s"  # metric compared between servers
    higher_better: bool = True
    target: float | None = None  # issue 14's target for the qserver/beanstalkd ratio
    limit: float | None = None   # issue 14's bound on qserver's own headline figure
    seconds: float | None = None # measurement window instead of --seconds
    grow: float = 0.0            # rate1m: also put this share of --fill-jobs meanwhile


PUT = ["--size", "100"]
CYC = ["--producers", "10", "--workers", "10", "--depth", "1", "--wdepth", "1",
       "--size", "100", "--backlog", "100"]

WORKLOADS = [
    Workload("put1", "put, 1 conn", "put", ["--conns", "1", "--depth", "1"] + PUT),
    Workload("put50", "put, 50 conns", "put", ["--conns", "50", "--depth", "1"] + PUT, target=0.8),
    Workload("pipe100", "put, 1 conn pipelining 100", "put",
             ["--conns", "1", "--depth", "100"] + PUT, target=2.0),
    Workload("drain", "reserve+delete drain, 50 conns", "drain", target=0.8),
    Workload("cycle", "producers+workers 10+10, backlog<=100", "cycle", CYC, target=0.8),
    Workload("rate5k", "cycle at a fixed 5000 jobs/s (e2e latency)", "rate",
             CYC + ["--rate", "5000"], headline="p99_us", higher_better=False, target=1.5),
    Workload("rss", "RSS per job, 1M x 100 B jobs", "rss",
             headline="bytes_per_job", higher_better=False, target=1.2),
]
for _f in ("50", "0"):
    WORKLOADS += [
        Workload(f"put1_f{_f}", f"put, 1 conn, log -f {_f}", "put",
                 ["--conns", "1", "--depth", "1"] + PUT, log=_f),
        Workload(f"put50_f{_f}", f"put, 50 conns, log -f {_f}", "put",
                 ["--conns", "50", "--depth", "1"] + PUT, log=_f,
                 target=0.8 if _f == "50" else 5.0),
        Workload(f"pipe100_f{_f}", f"put, 1 conn pipelining 100, log -f {_f}", "put",
                 ["--conns", "1", "--depth", "100"] + PUT, log=_f),
        Workload(f"cycle_f{_f}", f"cycle 10+10, log -f {_f}", "cycle", CYC, log=_f),
    ]
WORKLOADS.append(Workload("restart", "restart with 1M jobs in the log (-f 50)", "restart",
                          log="50", headline="restart_s", higher_better=False,
                          target=1.0))
# Issue 14: no loop stall over 20 ms with a million jobs live. The 1M jobs wait in
# another tube; the cycle at 5,000 jobs/s runs 20 s and its largest end-to-end latency
# is the headline. In `_grow` a second generator (1 conn, 8 puts in flight) adds a
# quarter more jobs to the backlog meanwhile: the growth after which CPython's
# collector makes a full pass over every long-lived object.
WORKLOADS += [
    Workload("rate5k_1m", "cycle at 5000 jobs/s for 20 s, 1M jobs queued in another tube (max e2e latency)",
             "rate1m", CYC + ["--rate", "5000"], headline="max_us", higher_better=False, seconds=20,
             limit=20_000),
    Workload("rate5k_1m_grow", "the same while 250k more jobs are put into the backlog (1 conn, 8 puts in flight)",
             "rate1m", CYC + ["--rate", "5000"], headline="max_us", higher_better=False, seconds=20,
             grow=0.25, limit=20_000),
    Workload("rate5k_1m_f50", "rate5k_1m_grow with the log on (-b DIR -f 50)", "rate1m",
             CYC + ["--rate", "5000"], log="50", headline="max_us", higher_better=False, seconds=20,
             grow=0.25, limit=20_000),
    Workload("rss_drain", "RSS after 1M x 100 B jobs drained (50 conns) and 7 s idle / RSS empty",
             "rss_drain", headline="drained_ratio", higher_better=False, limit=2.0),
    Workload("startup", "spawn -> first reply to stats, median of 5 spawns", "startup",
             headline="startup_ms", higher_better=False, limit=100),
]
WL = {w.key: w for w in WORKLOADS}

HEADLINE_LABEL = {"ops_per_s": "jobs/s", "p99_us": "p99 µs", "bytes_per_job": "bytes/job",
                  "restart_s": "restart s", "max_us": "max µs", "startup_ms": "startup ms",
                  "drained_ratio": "RSS drained / empty"}


# --------------------------------------------------------------------------- helpers
def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build_gen(force: bool = False) -> None:
    if not force and GEN_BIN.exists() and GEN_BIN.stat().st_mtime >= GEN_SRC.stat().st_mtime:
        return
    GEN_BIN.parent.mkdir(parents=True, exist_ok=True)
    cc = os.environ.get("CC", "gcc")
    cmd = [cc, "-O2", "-std=gnu11", "-Wall", "-Wextra", "-o", str(GEN_BIN), str(GEN_SRC), "-lm"]
    log("building " + " ".join(cmd))
    subprocess.run(cmd, check=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out


def rss_tree_kb(pid: int) -> int:
    """VmRSS of pid and its descendants, KiB."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
        todo += proc_children(p)
    return total


def cpu_busy(interval: float = 0.3) -> float:
    """Fraction of all CPUs busy (steal counted as busy) over interval."""
    def snap():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + v[4]
        return sum(v[:8]), idle
    t0, i0 = snap()
    time.sleep(interval)
    t1, i1 = snap()
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


def wait_quiet(limit: float, max_busy: float) -> float:
    deadline = time.monotonic() + limit
    while True:
        b = cpu_busy()
        if b <= max_busy or time.monotonic() >= deadline:
            return b
        time.sleep(0.5)


def machine_info() -> dict:
    model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) // 1024} MiB"
                break
    except OSError:
        pass
    bver = ""
    bpath = shutil.which("beanstalkd")
    if bpath:
        try:
            bver = subprocess.run([bpath, "-v"], capture_output=True, text=True, timeout=5).stdout.strip()
        except Exception:
            pass
    try:
        import uvloop  # noqa: F401
        uv = uvloop.__version__
    except Exception:
        uv = "not installed"
    return {"nproc": os.cpu_count(), "cpu": model, "kernel": platform.release(), "mem": mem,
            "python": platform.python_version(), "uvloop": uv, "beanstalkd": bver}


# --------------------------------------------------------------------------- servers
class Server:
    def __init__(self, name: str, opts, log_fsync: str | None, logdir: str | None = None):
        self.name, self.opts = name, opts
        self.log_fsync = log_fsync
        self.logdir = logdir
        self.own_logdir = False
        if log_fsync is not None and logdir is None:
            self.logdir = tempfile.mkdtemp(prefix=f"bench-{name}-log-")
            self.own_logdir = True
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.errfile = tempfile.TemporaryFile()

    def cmd(self) -> list[str]:
        flags = []
        if self.log_fsync is not None:
            flags = ["-b", self.logdir, "-f", self.log_fsync]
        if self.name == "qserver":
            base = [sys.executable, "-m", "qserver"]
        else:
            base = [shutil.which("beanstalkd") or "beanstalkd"]
        return base + ["-l", "127.0.0.1", "-p", str(self.port)] + flags

    def start(self, wait: bool = True) -> float:
        """Starts the server pinned to the server CPU; returns the monotonic start time."""
        self.port = free_port()
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        cmd = self.cmd()
        if self.opts.pin:
            cmd = ["taskset", "-c", str(self.opts.server_cpu)] + cmd
        t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd, cwd=str(REPO), env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self.errfile)
        if wait:
            self.wait_listening(20)
        return t0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_listening(self, limit: float) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start: {self.stderr_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.01)
        raise RuntimeError(f"{self.name} not listening after {limit}s")

    def stderr_tail(self) -> str:
        self.errfile.seek(0)
        return self.errfile.read()[-600:].decode(errors="replace")

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def cleanup(self) -> None:
        self.stop()
        if self.own_logdir and self.logdir:
            shutil.rmtree(self.logdir, ignore_errors=True)


def stats_ready(sock: socket.socket) -> int:
    sock.sendall(b"stats\r\n")
    buf = b""
    while b"\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise OSError("closed")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n")
    if not head.startswith(b"OK "):
        raise OSError(f"stats: {head!r}")
    n = int(head.split()[1])
    while len(rest) < n + 2:
        chunk = sock.recv(65536)
        if not chunk:
            raise OSError("closed")
        rest += chunk
    for line in rest[:n].decode().splitlines():
        if line.startswith("current-jobs-ready:"):
            return int(line.split(":")[1])
    return -1


def wait_ready_jobs(port: int, want: int, limit: float, proc) -> tuple[float, int]:
    """Polls `stats` until current-jobs-ready == want; returns (monotonic time, ready)."""
    deadline = time.monotonic() + limit
    sock = None
    ready = -1
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("server exited during restart")
        try:
            if sock is None:
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            ready = stats_ready(sock)
            if ready == want:
                t = time.monotonic()
                sock.close()
                return t, ready
            time.sleep(0.005)
        except OSError:
            if sock:
                sock.close()
            sock = None
            time.sleep(0.005)
    raise RuntimeError(f"restart: ready={ready}, want {want}, after {limit}s")


# --------------------------------------------------------------------------- generator runs
def run_tool(argv: list[str], opts, limit: float) -> dict:
    if opts.pin:
        argv = ["taskset", "-c", str(opts.gen_cpu)] + argv
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=limit + 30)
    except subprocess.TimeoutExpired:
        return {"status": "error", "error": f"generator did not finish in {limit + 30}s"}
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                break
    return {"status": "error", "error": f"no JSON from generator (rc {p.returncode}): {p.stderr[-300:]}"}


def gen(mode: str, srv: Server, args: list[str], opts, limit: float = 120) -> dict:
    argv = [str(GEN_BIN), mode, "--port", str(srv.port), "--server-pid", str(srv.pid),
            "--tube", "bench", "--timeout", str(limit)] + args
    return run_tool(argv, opts, limit)


def loadgen(mode: str, srv: Server, args: list[str], opts, limit: float = 120) -> dict:
    argv = [str(LOADGEN_DIR / "bin" / "loadgen"), mode, "--port", str(srv.port),
            "--server-pid", str(srv.pid), "--tube", "bench", "--timeout", str(limit)] + args
    r = run_tool(argv, opts, limit)
    if "lg_cpu_s" in r and r.get("ops"):
        r["gen_cpu_us_per_op"] = r["lg_cpu_s"] * 1e6 / r["ops"]
        r["gen_cpu_util"] = r.get("lg_cpu_util")
        r["gen_runq_util"] = r.get("lg_runq_util", 0)
    return r


def timed(opts, seconds: float | None = None) -> list[str]:
    return ["--warmup", str(opts.warmup), "--seconds", str(seconds or opts.seconds)]


STARTUP_SPAWNS = 5


def startup_ms(srv: Server) -> dict:
    """Median of STARTUP_SPAWNS spawns of this server: Popen -> first bytes of the
    reply to `stats` (bench/startup.py's measurement, here for both servers)."""
    sys.path.insert(0, str(HERE))
    from startup import first_reply
    times = []
    for _ in range(STARTUP_SPAWNS):
        srv.port = free_port()
        argv = srv.cmd()
        if srv.opts.pin:
            argv = ["taskset", "-c", str(srv.opts.server_cpu)] + argv
        times.append(first_reply(argv, srv.port) * 1000)
    return {"status": "ok", "startup_ms": statistics.median(times),
            "startup_min_ms": min(times), "startup_max_ms": max(times)}


def run_workload(w: Workload, server_name: str, opts, tool: str = "qgen") -> dict:
    """One run of w on a fresh server; returns a flat record."""
    run = gen if tool == "qgen" else loadgen
    srv = Server(server_name, opts, w.log)
    rec: dict = {"workload": w.key, "server": server_name, "tool": tool}
    try:
        if w.kind != "startup":
            srv.start()
        tlimit = opts.warmup + opts.seconds + 60
        if w.kind == "startup":
            r = startup_ms(srv)
        elif w.kind in ("put", "cycle", "rate"):
            mode = "put" if w.kind == "put" else "cycle"
            r = run(mode, srv, w.gen_args + timed(opts), opts, tlimit)
        elif w.kind == "drain":
            f = run("fill", srv, ["--conns", "10", "--depth", "50", "--size", "100",
                                  "--jobs", str(opts.drain_jobs)], opts, opts.fill_timeout)
            if f.get("status") != "ok":
                r = f
            else:
                dmode = "drain" if tool == "qgen" else "reserve"
                r = run(dmode, srv, ["--conns", "50", "--depth", "1", "--size", "100",
                                     "--jobs", str(opts.drain_jobs)], opts, opts.fill_timeout)
                if r.get("status") == "ok" and r.get("tube_empty") is False:
                    r["status"], r["error"] = "error", "tube not empty after the drain"
        elif w.kind == "rate1m":
            backlog = ["--conns", "10", "--depth", "50", "--size", "100", "--tube", "backlog"]
            r = run("fill", srv, backlog + ["--jobs", str(opts.fill_jobs)], opts, opts.fill_timeout)
            if r.get("status") == "ok":
                rss_full = rss_tree_kb(srv.pid)
                grower = None
                if w.grow:
                    argv = [str(GEN_BIN), "fill", "--port", str(srv.port), "--tube", "backlog",
                            "--conns", "1", "--depth", "8", "--size", "100",
                            "--jobs", str(int(opts.fill_jobs * w.grow)), "--timeout", str(opts.fill_timeout)]
                    if opts.pin:
                        argv = ["taskset", "-c", str(opts.gen_cpu)] + argv
                    grower = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                seconds = w.seconds if not opts.quick else opts.seconds
                r = run("cycle", srv, w.gen_args + timed(opts, seconds), opts, opts.warmup + seconds + 60)
                if grower is not None:
                    out, _ = grower.communicate(timeout=opts.fill_timeout + 30)
                    g = next((json.loads(l) for l in reversed(out.splitlines()) if l.startswith("{")), {})
                    r["grow_jobs"] = g.get("ops")
                    if g.get("status") != "ok" and r.get("status") == "ok":
                        r["status"], r["error"] = "error", f"backlog growth: {g.get('error', 'failed')}"
                r["rss_full_kb"] = rss_full
        elif w.kind == "rss":
            time.sleep(0.3)
            rss0 = rss_tree_kb(srv.pid)
            r = run("fill", srv, ["--conns", "10", "--depth", "50", "--size", "100",
                                  "--jobs", str(opts.fill_jobs)], opts, opts.fill_timeout)
            time.sleep(0.5)
            rss1 = rss_tree_kb(srv.pid)
            r.update(rss_empty_kb=rss0, rss_full_kb=rss1,
                     bytes_per_job=(rss1 - rss0) * 1024 / opts.fill_jobs)
            r["srv_rss_kb"] = rss1
        elif w.kind == "rss_drain":
            time.sleep(0.3)
            rss0 = rss_tree_kb(srv.pid)
            r = run("fill", srv, ["--conns", "10", "--depth", "50", "--size", "100",
                                  "--jobs", str(opts.fill_jobs)], opts, opts.fill_timeout)
            if r.get("status") == "ok":
                rss1 = rss_tree_kb(srv.pid)
                dmode = "drain" if tool == "qgen" else "reserve"
                r = run(dmode, srv, ["--conns", "50", "--depth", "1", "--size", "100",
                                     "--jobs", str(opts.fill_jobs)], opts, opts.fill_timeout)
                time.sleep(7)           # qserver gives memory back every 5 s
                rss2 = rss_tree_kb(srv.pid)
                r.update(rss_empty_kb=rss0, rss_full_kb=rss1, srv_rss_kb=rss2,
                         drained_ratio=rss2 / rss0)
        elif w.kind == "restart":
            r = run("fill", srv, ["--conns", "10", "--depth", "50", "--size", "100",
                                  "--jobs", str(opts.fill_jobs)], opts, opts.fill_timeout)
            if r.get("status") == "ok":
                log_bytes = sum(p.stat().st_size for p in Path(srv.logdir).rglob("*") if p.is_file())
                srv.kill9()
                srv.errfile = tempfile.TemporaryFile()
                t0 = srv.start(wait=False)
                t1, ready = wait_ready_jobs(srv.port, opts.fill_jobs, opts.fill_timeout, srv.proc)
                r.update(restart_s=t1 - t0, ready=ready, log_bytes=log_bytes,
                         srv_rss_kb=rss_tree_kb(srv.pid))
        else:
            raise ValueError(w.kind)
        rec.update(r)
        if srv.proc is not None and srv.proc.poll() is not None:
            rec["status"], rec["error"] = "error", f"server died: {srv.stderr_tail()}"
    except Exception as e:  # a failed run is recorded, the benchmark goes on
        rec.update(status="error", error=f"{type(e).__name__}: {e} {srv.stderr_tail() if srv.proc else ''}")
    finally:
        srv.cleanup()
    rec["noise"] = (rec.get("gen_runq_util") or 0) + (rec.get("srv_runq_util") or 0) + (rec.get("steal_util") or 0)
    return rec


def run_with_retries(w: Workload, server: str, opts, tool: str = "qgen") -> dict:
    best = None
    for attempt in range(opts.noise_retries + 1):
        busy = wait_quiet(opts.quiet_wait, opts.quiet_busy) if opts.quiet_wait > 0 else 0
        rec = run_workload(w, server, opts, tool)
        rec["busy_before"] = round(busy, 3)
        rec["attempt"] = attempt
        if best is None or (rec.get("status") == "ok" and
                            (best.get("status") != "ok" or rec["noise"] < best["noise"])):
            best = rec
        if rec.get("status") == "ok" and rec["noise"] <= opts.max_noise:
            break
        why = rec.get("error") if rec.get("status") != "ok" else f"noisy ({rec['noise']:.2f})"
        if attempt < opts.noise_retries:
            log(f"    retry {w.key}/{server}: {why}")
    return best


def brief(rec: dict) -> str:
    if rec.get("status") != "ok":
        return f"ERROR {rec.get('error')}"
    parts = [f"{rec.get('ops_per_s', 0):,.0f}/s", f"p50 {rec.get('p50_us', 0):.0f}µs",
             f"p99 {rec.get('p99_us', 0):.0f}µs", f"srv {rec.get('srv_cpu_us_per_op', 0):.1f}µs/op"]
    if "bytes_per_job" in rec:
        parts.append(f"{rec['bytes_per_job']:.0f} B/job")
    if "restart_s" in rec:
        parts.append(f"restart {rec['restart_s']:.2f}s")
    if "max_us" in rec:
        parts.append(f"max {rec['max_us']:,.0f}µs")
    if "drained_ratio" in rec:
        parts.append(f"RSS empty/full/drained {rec['rss_empty_kb'] / 1024:.0f}/{rec['rss_full_kb'] / 1024:.0f}/"
                     f"{rec['srv_rss_kb'] / 1024:.0f} MiB ({rec['drained_ratio']:.2f}x empty)")
    if "startup_ms" in rec:
        parts.append(f"startup {rec['startup_ms']:.1f}ms ({rec['startup_min_ms']:.1f}-{rec['startup_max_ms']:.1f})")
    parts.append(f"noise {rec['noise']:.2f}")
    return " ".join(parts)


# --------------------------------------------------------------------------- summarising
METRICS = ["ops_per_s", "p50_us", "p99_us", "max_us", "srv_cpu_us_per_op", "srv_rss_kb", "bytes_per_job",
           "restart_s", "startup_ms", "drained_ratio", "gen_cpu_util", "gen_cpu_us_per_op", "noise", "log_bytes"]


def medians(recs: list[dict]) -> dict:
    ok = [r for r in recs if r.get("status") == "ok"]
    out = {"runs": len(recs), "ok": len(ok)}
    for m in METRICS:
        vals = [r[m] for r in ok if isinstance(r.get(m), (int, float)) and r.get(m) is not None]
        if vals:
            out[m] = statistics.median(vals)
    if not ok and recs:
        out["error"] = recs[-1].get("error")
    return out


def fmt(v, kind="int") -> str:
    if v is None:
        return "–"
    if kind == "int":
        return f"{v:,.0f}"
    if kind == "f1":
        return f"{v:,.1f}"
    if kind == "f2":
        return f"{v:,.2f}"
    return str(v)


def fmt_headline(metric: str, v) -> str:
    if v is None:
        return "–"
    return {"ops_per_s": fmt(v), "p99_us": fmt(v), "bytes_per_job": fmt(v), "max_us": fmt(v),
            "restart_s": fmt(v, "f2"), "startup_ms": fmt(v, "f1"),
            "drained_ratio": fmt(v, "f2")}.get(metric, fmt(v, "f2"))


def ratio_of(w: Workload, med: dict) -> float | None:
    q, b = med.get(("qserver", w.key), {}), med.get(("beanstalkd", w.key), {})
    if w.headline in q and w.headline in b and b[w.headline]:
        return q[w.headline] / b[w.headline]
    return None


def target_text(w: Workload) -> str:
    if w.limit is not None:
        return f"qserver ≤ {fmt_headline(w.headline, w.limit)}"
    if w.target is None:
        return ""
    return f"≥ {w.target:g}" if w.higher_better else f"≤ {w.target:g}"


def render_markdown(workloads, servers, med, info, opts, started, elapsed) -> str:
    L = []
    L.append(f"Run {started} · {elapsed / 60:.1f} min · reps {opts.reps} (medians) · "
             f"{'quick' if opts.quick else 'full'} · put/cycle window {opts.seconds:g} s after "
             f"{opts.warmup:g} s warmup · fills {opts.fill_jobs:,} · drain {opts.drain_jobs:,}")
    L.append("")
    L.append(f"Machine: {info['nproc']} CPUs, {info['cpu']}, kernel {info['kernel']}, {info['mem']}; "
             f"Python {info['python']}, uvloop {info['uvloop']}; {info['beanstalkd'] or 'beanstalkd not installed'}. "
             f"Server on CPU {opts.server_cpu}, generator on CPU {opts.gen_cpu}.")
    L.append("")
    both = "qserver" in servers and "beanstalkd" in servers
    L.append("### Summary (qserver / beanstalkd)")
    L.append("")
    # Server CPU per op beside every ratio: a ratio says how this host did, the CPU
    # figure what a slower host (or a busy one) will do.
    L.append("| workload | metric | " + " | ".join(servers) + " | server CPU µs/op ("
             + " / ".join(servers) + ")" + (" | ratio q/b | target | met |" if both else " |"))
    L.append("|---|---|" + "---:|" * (len(servers) + 1) + ("---:|---|---|" if both else ""))
    for w in workloads:
        row = [w.key, HEADLINE_LABEL[w.headline]]
        for s in servers:
            m = med.get((s, w.key), {})
            row.append(fmt_headline(w.headline, m.get(w.headline)) if m.get("ok") else "error")
        row.append(" / ".join(fmt(med.get((s, w.key), {}).get("srv_cpu_us_per_op"), "f2")
                              for s in servers))
        if both:
            r = ratio_of(w, med)
            row.append(f"{r:.2f}" if r is not None else "–")
            row.append(target_text(w))
            q = med.get(("qserver", w.key), {}).get(w.headline)
            if w.limit is not None and q is not None:
                row.append("yes" if q <= w.limit else "**no**")
            elif w.target is None or r is None:
                row.append("")
            else:
                met = r >= w.target if w.higher_better else r <= w.target
                row.append("yes" if met else "**no**")
        L.append("| " + " | ".join(row) + " |")
    L.append("")
    L.append("### Detail (medians)")
    L.append("")
    L.append("| workload | server | jobs/s | p50 µs | p99 µs | max µs | server CPU µs/op | server RSS MiB | "
             "bytes/job | restart s | startup ms | gen CPU | noise |")
    L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for w in workloads:
        for s in servers:
            m = med.get((s, w.key), {})
            if not m.get("ok"):
                L.append(f"| {w.key} | {s} | error: {str(m.get('error', 'no run'))[:80]} |||||||||||")
                continue
            rss = m.get("srv_rss_kb")
            L.append("| " + " | ".join([
                w.key, s, fmt(m.get("ops_per_s")), fmt(m.get("p50_us"), "f1"), fmt(m.get("p99_us"), "f1"),
                fmt(m.get("max_us")), fmt(m.get("srv_cpu_us_per_op"), "f2"), fmt(rss / 1024 if rss else None, "f1"),
                fmt(m.get("bytes_per_job")), fmt(m.get("restart_s"), "f2"), fmt(m.get("startup_ms"), "f1"),
                f"{m['gen_cpu_util'] * 100:.0f}%" if "gen_cpu_util" in m else "–",
                fmt(m.get("noise"), "f2")]) + " |")
    L.append("")
    L.append("Workloads: " + "; ".join(f"`{w.key}` {w.title}" for w in workloads) + ".")
    L.append("")
    return "\n".join(L)


def render_chart(workloads, servers, med, path: Path) -> str | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "chart skipped: matplotlib is not installed (pip install matplotlib)"
    both = "qserver" in servers and "beanstalkd" in servers
    thr = [w for w in workloads if w.headline == "ops_per_s"]
    fig, axes = plt.subplots(1, 2 if both else 1, figsize=(15 if both else 8, 0.42 * len(workloads) + 2))
    if not both:
        axes = [axes]
    ax = axes[0]
    ys = range(len(thr))
    h = 0.8 / max(1, len(servers))
    colors = {"qserver": "#3b75af", "beanstalkd": "#ef8636"}
    for i, s in enumerate(servers):
        vals = [med.get((s, w.key), {}).get("ops_per_s", 0) for w in thr]
        ax.barh([y + i * h for y in ys], vals, height=h, label=s, color=colors.get(s))
    ax.set_yticks([y + h * (len(servers) - 1) / 2 for y in ys])
    ax.set_yticklabels([w.key for w in thr])
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("jobs/s (log scale, median)")
    ax.set_title("Throughput")
    ax.legend(loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    if both:
        ax = axes[1]
        ws = [w for w in workloads if ratio_of(w, med) is not None]
        rs = [ratio_of(w, med) for w in ws]
        cols = []
        for w, r in zip(ws, rs):
            good = (r >= 1) if w.higher_better else (r <= 1)
            if w.target is not None:
                good = r >= w.target if w.higher_better else r <= w.target
            cols.append("#4c9a52" if good else "#c44e52")
        ax.barh(range(len(ws)), [r - 1 for r in rs], left=1, color=cols)
        ax.set_xscale("log")
        ax.set_yticks(range(len(ws)))
        ax.set_yticklabels([f"{w.key} ({HEADLINE_LABEL[w.headline]}"
                            f"{', lower better' if not w.higher_better else ''})" for w in ws])
        ax.invert_yaxis()
        ax.axvline(1.0, color="black", lw=1)
        for i, (w, r) in enumerate(zip(ws, rs)):
            ax.text(r, i, f" {r:.2f}", va="center", fontsize=8)
            if w.target is not None:
                ax.plot([w.target, w.target], [i - 0.4, i + 0.4], color="black", ls=":", lw=1.5)
        ax.set_xlabel("qserver / beanstalkd, log scale (dotted: issue-4 target; green: target met or better than 1)")
        ax.set_title("Ratio")
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def update_readme(md: str, chart_ok: bool) -> None:
    readme = HERE / "README.md"
    if not readme.exists():
        log("README.md missing; not updated")
        return
    text = readme.read_text()
    if README_BEGIN not in text or README_END not in text:
        log("README.md has no bench:latest markers; not updated")
        return
    body = md + ("\n![latest chart](results/latest.png)\n" if chart_ok else "")
    a = text.index(README_BEGIN) + len(README_BEGIN)
    b = text.index(README_END)
    readme.write_text(text[:a] + "\n" + body + "\n" + text[b:])
    log("README.md updated")


# --------------------------------------------------------------------------- modes
def do_bench(opts) -> int:
    servers = [s.strip() for s in opts.servers.split(",") if s.strip()]
    for s in servers:
        if s not in ("qserver", "beanstalkd"):
            sys.exit(f"unknown server {s}")
    if "beanstalkd" in servers and not shutil.which("beanstalkd"):
        log("beanstalkd is not installed (apt-get install -y beanstalkd): running qserver alone, no ratios")
        servers.remove("beanstalkd")
    if opts.workloads == "all":
        workloads = WORKLOADS
    else:
        keys = []
        for k in opts.workloads.split(","):
            k = k.strip()
            if k in ("log", "g"):
                keys += [w.key for w in WORKLOADS if w.log is not None and w.kind != "restart"]
            elif k in WL:
                keys.append(k)
            elif k:
                sys.exit(f"unknown workload {k}; --list shows them")
        workloads = [WL[k] for k in dict.fromkeys(keys)]
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    raw_path = RESULTS / f"runs-{stamp}.jsonl"
    started = time.strftime("%Y-%m-%d %H:%M")
    t_start = time.monotonic()
    recs: dict = {}
    with raw_path.open("w") as raw:
        for rep in range(opts.reps):
            for w in workloads:
                for s in servers:
                    log(f"[rep {rep + 1}/{opts.reps}] {w.key:<12} {s:<10} ...")
                    rec = run_with_retries(w, s, opts)
                    rec["rep"] = rep
                    raw.write(json.dumps(rec) + "\n")
                    raw.flush()
                    recs.setdefault((s, w.key), []).append(rec)
                    log(f"    {brief(rec)}")
    elapsed = time.monotonic() - t_start
    med = {k: medians(v) for k, v in recs.items()}
    info = machine_info()
    md = render_markdown(workloads, servers, med, info, opts, started, elapsed)
    (RESULTS / "latest.md").write_text(md)
    (RESULTS / "latest.json").write_text(json.dumps({
        "started": started, "elapsed_s": elapsed, "machine": info, "reps": opts.reps,
        "quick": opts.quick, "raw": raw_path.name,
        "medians": [{"server": s, "workload": k, **v} for (s, k), v in med.items()]}, indent=1))
    print(md)
    msg = render_chart(workloads, servers, med, RESULTS / "latest.png") if not opts.no_chart else "chart skipped (--no-chart)"
    if msg:
        log(msg)
    else:
        log(f"chart: {RESULTS / 'latest.png'}")
    log(f"table: {RESULTS / 'latest.md'}   raw runs: {raw_path}")
    if opts.update_readme:
        update_readme(md, msg is None)
    bad = sum(1 for v in med.values() if not v.get("ok"))
    return 1 if bad else 0


def do_calibrate(opts) -> int:
    if not shutil.which("beanstalkd"):
        sys.exit("calibration needs beanstalkd (apt-get install -y beanstalkd)")
    lg = LOADGEN_DIR / "bin" / "loadgen"
    if not lg.exists():
        log(f"building {lg}")
        subprocess.run(["bash", str(LOADGEN_DIR / "build.sh")], check=True)
    keys = [k for k in (opts.workloads.split(",") if opts.workloads != "all" else ["put50", "drain", "cycle"])]
    RESULTS.mkdir(parents=True, exist_ok=True)
    recs: dict = {}
    started = time.strftime("%Y-%m-%d %H:%M")
    with (RESULTS / f"calibration-{time.strftime('%Y%m%d-%H%M%S')}.jsonl").open("w") as raw:
        for rep in range(opts.reps):
            for k in keys:
                tools = ["qgen", "loadgen"] if rep % 2 == 0 else ["loadgen", "qgen"]
                for tool in tools:
                    log(f"[rep {rep + 1}/{opts.reps}] {k:<8} beanstalkd via {tool} ...")
                    rec = run_with_retries(WL[k], "beanstalkd", opts, tool)
                    rec["rep"] = rep
                    raw.write(json.dumps(rec) + "\n")
                    raw.flush()
                    recs.setdefault((tool, k), []).append(rec)
                    log(f"    {brief(rec)}")
    md, all_ok = render_calibration(keys, recs, started, opts.reps)
    (RESULTS / "calibration.md").write_text(md)
    print(md)
    return 0 if all_ok else 1


def render_calibration(keys, recs, started, reps):
    """Verdict on the ratio of medians; the best run of each tool is shown too (noise on a
    shared machine only ever lowers throughput, so one lucky quiet run moves the best)."""
    L = [f"Calibration {started}: beanstalkd driven by bench/gen (qgen) and ../shared/loadgen, "
         f"same workloads, a fresh server per run, {reps} interleaved repetitions per tool.", "",
         "| workload | qgen median | loadgen median | ratio of medians | qgen best | loadgen best | "
         "ratio of bests | within 10% | gen CPU µs/op qgen / loadgen | server busy+runq (qgen / loadgen) |",
         "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    all_ok = True
    for k in keys:
        ra = [x for x in recs.get(("qgen", k), []) if x.get("status") == "ok"]
        rb = [x for x in recs.get(("loadgen", k), []) if x.get("status") == "ok"]
        if not ra or not rb:
            L.append(f"| {k} | {len(ra)} ok runs | {len(rb)} ok runs | | | | | **no** | | |")
            all_ok = False
            continue
        ma = statistics.median(x["ops_per_s"] for x in ra)
        mb = statistics.median(x["ops_per_s"] for x in rb)
        ba = max(x["ops_per_s"] for x in ra)
        bb = max(x["ops_per_s"] for x in rb)
        ok = abs(ma / mb - 1) <= 0.10
        all_ok &= ok

        def busy(rs):
            return statistics.median((x.get("srv_cpu_util") or 0) + (x.get("srv_runq_util") or 0) for x in rs)

        def gcpu(rs):
            v = [x["gen_cpu_us_per_op"] for x in rs if x.get("gen_cpu_us_per_op")]
            return statistics.median(v) if v else None
        L.append(f"| {k} | {fmt(ma)} | {fmt(mb)} | {ma / mb:.2f} | {fmt(ba)} | {fmt(bb)} | {ba / bb:.2f} | "
                 f"{'yes' if ok else '**no**'} | {fmt(gcpu(ra), 'f2')} / {fmt(gcpu(rb), 'f2')} | "
                 f"{busy(ra) * 100:.0f}% / {busy(rb) * 100:.0f}% |")
    L.append("")
    return "\n".join(L), all_ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--servers", default="qserver,beanstalkd")
    ap.add_argument("--workloads", default="all", help="comma list of workload keys (see --list); 'log' = all log variants")
    ap.add_argument("--quick", action="store_true", help="1 rep, 1.5 s windows, 100k fills, 50k drain")
    ap.add_argument("--calibrate", action="store_true", help="compare bench/gen with ../shared/loadgen on beanstalkd")
    ap.add_argument("--reps", type=int)
    ap.add_argument("--seconds", type=float, help="measurement window of put/cycle runs (5)")
    ap.add_argument("--warmup", type=float, help="warmup before the window (1)")
    ap.add_argument("--fill-jobs", type=int, help="jobs for rss/restart (1000000)")
    ap.add_argument("--drain-jobs", type=int, help="backlog for the drain (200000)")
    ap.add_argument("--fill-timeout", type=float, default=180)
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--gen-cpu", type=int, default=1)
    ap.add_argument("--no-pin", action="store_true")
    ap.add_argument("--max-noise", type=float, default=0.15,
                    help="run-queue wait of server+generator plus steal, fraction of the window, above which a run is retried")
    ap.add_argument("--noise-retries", type=int, default=1)
    ap.add_argument("--quiet-wait", type=float, default=3, help="wait at most S s for the machine to be quiet before a run")
    ap.add_argument("--quiet-busy", type=float, default=0.15)
    ap.add_argument("--no-chart", action="store_true")
    ap.add_argument("--update-readme", action="store_true", help="put the table and chart into bench/README.md")
    ap.add_argument("--rebuild", action="store_true", help="recompile bench/gen")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--from-raw", metavar="FILE", help="re-render a calibration-*.jsonl without running anything")
    st = ap.add_argument_group("store matrix (--store, issue 12; see bench/storebench.py)")
    st.add_argument("--store", action="store_true",
                    help="run put50, drain, cycle and fixed-rate p99 against beanstalkd, qserver in memory and "
                         "qserver on a redis-server started here, with 1 and 2 nodes")
    st.add_argument("--systems", default="beanstalkd,memory,redis1,redis2",
                    help="store matrix systems: beanstalkd,memory,redis1,redis2,redis1-aof")
    st.add_argument("--scenarios", default="put50,drain,cycle,rate", help="store matrix scenarios")
    st.add_argument("--rate", type=int, default=1000, help="fixed rate of the 'rate' scenario, jobs/s (1000)")
    st.add_argument("--cycle-seconds", type=float, help="cycle/rate window in the store matrix (10)")
    st.add_argument("--aof-row", action="store_true",
                    help="also redis1-aof: one node on a redis-server with appendonly yes, appendfsync everysec")
    st.add_argument("--redis-cpu", type=int, help="pin redis-server to this CPU (default: not pinned)")
    st.add_argument("--tag", default="", help="suffix of the store matrix's result files")
    st.add_argument("--rechart", metavar="JSONL", help="re-draw the SVG of a store-matrix-*.jsonl")
    opts = ap.parse_args()
    if opts.list:
        for w in WORKLOADS:
            print(f"{w.key:<12} {w.title}")
        return 0
    if opts.from_raw:
        recs: dict = {}
        for line in open(opts.from_raw):
            r = json.loads(line)
            recs.setdefault((r["tool"], r["workload"]), []).append(r)
        keys = list(dict.fromkeys(k for _, k in recs))
        reps = max(len(v) for v in recs.values())
        md, ok = render_calibration(keys, recs, Path(opts.from_raw).stem, reps)
        print(md)
        return 0 if ok else 1
    q = opts.quick
    opts.reps = opts.reps or (1 if q else 3)
    opts.seconds = opts.seconds or (1.5 if q else 5)
    opts.warmup = opts.warmup if opts.warmup is not None else (0.5 if q else 1)
    opts.fill_jobs = opts.fill_jobs or (100_000 if q else 1_000_000)
    opts.drain_jobs = opts.drain_jobs or (50_000 if q else 200_000)
    ncpu = os.cpu_count() or 1
    opts.pin = not opts.no_pin and shutil.which("taskset") is not None and ncpu > max(opts.server_cpu, opts.gen_cpu)
    if not opts.pin:
        log("not pinning: taskset missing, --no-pin, or too few CPUs")
    if q:
        opts.quiet_wait = min(opts.quiet_wait, 2)
    if opts.store or opts.rechart:
        sys.path.insert(0, str(HERE))
        import storebench
        if opts.rechart:
            return storebench.rechart(opts.rechart, opts)
        opts.cycle_seconds = opts.cycle_seconds or (1.5 if q else 10)
        return storebench.main(opts)
    build_gen(opts.rebuild)
    return do_calibrate(opts) if opts.calibrate else do_bench(opts)


if __name__ == "__main__":
    sys.exit(main())
