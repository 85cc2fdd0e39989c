"""How busy the machine is, for the bench scripts: they wait for quiet CPUs before
measuring and report how busy the CPUs were while they did."""

import time


def cpu_times() -> tuple:
    """(total, idle) jiffies of all CPUs; steal counts as busy."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v[:8]), v[3] + v[4]


def busy_since(before: tuple) -> float:
    """The busy fraction of all CPUs since `before` (a cpu_times() reading)."""
    total, idle = cpu_times()
    return 1.0 - (idle - before[1]) / max(1, total - before[0])


def wait_quiet(limit: float, max_busy: float = 0.15) -> float:
    """Wait (at most `limit` seconds) until the CPUs are at most `max_busy` busy;
    returns the last reading."""
    deadline = time.monotonic() + limit
    busy = 1.0
    while time.monotonic() < deadline:
        before = cpu_times()
        time.sleep(0.3)
        busy = busy_since(before)
        if busy <= max_busy:
            break
    return busy
