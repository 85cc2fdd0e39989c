"""The durable log (-b): crash safety under load in every fsync mode, bounded disk use,
torn tails, corruption, the directory lock, and a full disk.

Durability is proven the hard way: SIGKILL the server while 20 producers and 20
workers are busy, restart it on the same directory, and check that every change the
clients saw acknowledged is there.
"""

import os
import re
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import WAIT, Client, ServerProcess, free_port, qserver_argv, start_qserver

PRODUCERS = 20
WORKERS = 20
LOAD_SECONDS = 1.5


class Ledger:
    """What the clients sent and what the server acknowledged, per job id."""

    def __init__(self):
        self.lock = threading.Lock()
        self.bodies = {}            # acknowledged put: id -> body
        self.deleted = set()        # acknowledged deletes
        self.delete_sent = set()
        self.buried = {}            # acknowledged bury: id -> pri
        self.errors = []            # unexpected replies


def _producer(port, ledger, stop, n):
    try:
        c = _connect(port)
        i = 0
        while not stop.is_set():
            body = b"p%d-%d" % (n, i)
            c.send(b"put 100 0 60 %d\r\n%s\r\n" % (len(body), body))
            reply = c.read_line()
            m = re.fullmatch(rb"INSERTED (\d+)\r\n", reply)
            if m is None:
                ledger.errors.append(reply)
                return
            with ledger.lock:
                ledger.bodies[int(m[1])] = body
            i += 1
    except (OSError, ConnectionError):
        pass


def _worker(port, ledger, stop):
    try:
        c = _connect(port)
        while not stop.is_set():
            c.send(b"reserve-with-timeout 1\r\n")
            reply = c.read_line()
            if not reply.startswith(b"RESERVED"):
                continue
            job_id, size = map(int, reply.split()[1:3])
            c.read_exact(size + 2)
            if job_id % 5 == 0:
                c.send(b"bury %d 7\r\n" % job_id)
                if c.read_line() == b"BURIED\r\n":
                    with ledger.lock:
                        ledger.buried[job_id] = 7
                continue
            with ledger.lock:
                ledger.delete_sent.add(job_id)
            c.send(b"delete %d\r\n" % job_id)
            if c.read_line() == b"DELETED\r\n":
                with ledger.lock:
                    ledger.deleted.add(job_id)
    except (OSError, ConnectionError):
        pass


def _connect(port) -> Client:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return Client(sock)


def _run_load_then_kill(server) -> Ledger:
    ledger = Ledger()
    stop = threading.Event()
    threads = [threading.Thread(target=_producer, args=(server.port, ledger, stop, n))
               for n in range(PRODUCERS)]
    threads += [threading.Thread(target=_worker, args=(server.port, ledger, stop))
                for _ in range(WORKERS)]
    for t in threads:
        t.start()
    time.sleep(LOAD_SECONDS)        # the load runs; the kill comes in the middle of it
    # A slow host may need longer before the first delete is acknowledged, and the
    # checks need one; wait for it (bounded) rather than for a fixed time.
    deadline = time.monotonic() + WAIT
    while not ledger.deleted and not ledger.errors and time.monotonic() < deadline:
        time.sleep(0.05)
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(5)
    stop.set()
    for t in threads:
        t.join(10)
    return ledger


def _check_ledger(client, ledger):
    assert not ledger.errors, ledger.errors[:5]
    assert ledger.bodies, "the load produced no acknowledged puts"
    assert ledger.deleted, "the load produced no acknowledged deletes"
    for job_id in ledger.deleted:
        assert client.cmd(b"peek %d" % job_id) == b"NOT_FOUND\r\n", job_id
    for job_id, body in ledger.bodies.items():
        if job_id in ledger.delete_sent:
            continue
        reply = client.cmd(b"peek %d" % job_id)
        assert reply == b"FOUND %d %d\r\n%s\r\n" % (job_id, len(body), body), job_id
    for job_id, pri in ledger.buried.items():
        stats = client.yaml(b"stats-job %d" % job_id)
        assert (stats["state"], stats["pri"], stats["buries"]) == ("buried", str(pri), "1")
    highest = max(ledger.bodies)
    reply = client.cmd(b"put 0 0 1 1\r\nx")
    assert int(reply.split()[1]) > highest, "a job id was reused after restart"


@pytest.mark.parametrize("mode", [["-f", "0"], ["-f", "50"], ["-F"]],
                         ids=["fsync-always", "fsync-50ms", "no-fsync"])
def test_sigkill_under_load_loses_nothing_acknowledged(tmp_path, mode):
    server = start_qserver("-b", str(tmp_path), *mode)
    try:
        ledger = _run_load_then_kill(server)
    finally:
        server.stop()
    restarted = start_qserver("-b", str(tmp_path), *mode)
    try:
        c = restarted.client()
        _check_ledger(c, ledger)
        stats = c.yaml(b"stats")
        assert stats["current-jobs-reserved"] == "0"
    finally:
        restarted.stop()


def _dir_bytes(path) -> int:
    total = 0
    for name in os.listdir(path):
        if name.startswith("qlog."):
            try:
                total += os.path.getsize(os.path.join(path, name))
            except FileNotFoundError:
                pass                # removed by compaction while we looked
    return total


def test_one_buried_job_does_not_pin_the_log(tmp_path):
    """Heavy churn next to one job buried forever: the log stays a few segments."""
    segment = 64 * 1024
    server = start_qserver("-b", str(tmp_path), "-s", str(segment), "-F")
    try:
        c = server.client()
        assert c.cmd(b"put 0 0 60 6\r\nburied") == b"INSERTED 1\r\n"
        assert c.cmd(b"reserve").startswith(b"RESERVED 1 6")
        assert c.cmd(b"bury 1 0") == b"BURIED\r\n"
        body = b"x" * 200
        largest = 0
        rounds = 200
        for r in range(rounds):
            batch = b"".join(b"put 0 0 60 200\r\n%s\r\n" % body for _ in range(100))
            c.send(batch)
            ids = [int(c.read_line().split()[1]) for _ in range(100)]
            c.send(b"".join(b"delete %d\r\n" % i for i in ids))
            for _ in ids:
                assert c.read_line() == b"DELETED\r\n"
            largest = max(largest, _dir_bytes(tmp_path))
        written = rounds * 100 * (200 + 60)
        # Each round's jobs are gone, so live data is one job: the log must stay
        # within a handful of segments (two plus the sweep, each preallocated)
        # although eighty segments worth was written.
        assert written > 50 * segment
        assert largest <= 6 * segment, (largest, written)
        stats = c.yaml(b"stats")
        assert int(stats["binlog-records-migrated"]) >= 1
        assert int(stats["binlog-oldest-index"]) > 1
        print(f"\nbounded log: {written} bytes written, largest {largest} bytes on disk, "
              f"final {_dir_bytes(tmp_path)} bytes, segment {segment}")
    finally:
        server.stop()
    restarted = start_qserver("-b", str(tmp_path), "-s", str(segment), "-F")
    try:
        stats = restarted.client().yaml(b"stats-job 1")
        assert (stats["state"], stats["buries"]) == ("buried", "1")
    finally:
        restarted.stop()


def _valid_end(path) -> int:
    with open(path, "rb") as f:
        return len(f.read().rstrip(b"\0"))


def _newest_segment(directory) -> str:
    names = sorted((f for f in os.listdir(directory) if f.startswith("qlog.")),
                   key=lambda f: int(f.split(".")[1]))
    return os.path.join(directory, names[-1])


def _killed_server_with_jobs(directory, count=5) -> None:
    server = start_qserver("-b", str(directory), "-F")
    c = server.client()
    for i in range(count):
        assert c.cmd(b"put 0 0 60 5\r\njob-%d" % i) == b"INSERTED %d\r\n" % (i + 1)
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(5)
    server.stop()


def test_torn_tail_is_cut_off_with_a_warning_naming_file_and_offset(tmp_path):
    _killed_server_with_jobs(tmp_path)
    segment = _newest_segment(tmp_path)
    end = _valid_end(segment)
    with open(segment, "r+b") as f:           # half a record, as a crash mid-write
        f.seek(end)
        f.write(b"\x40\x00\x00\x00\x12\x34\x56\x78\x01\x09\x00")
    server = _serve(["-b", str(tmp_path), "-F"])
    try:
        c = server.client()
        for i in range(5):
            assert c.cmd(b"peek %d" % (i + 1)).startswith(b"FOUND %d 5" % (i + 1))
        assert c.cmd(b"put 0 0 60 1\r\nz") == b"INSERTED 6\r\n"
    finally:
        stderr = _stop(server)
    assert f"{segment}: torn record at offset {end} cut off" in stderr


def _serve(flags) -> ServerProcess:
    port = free_port()
    return ServerProcess(qserver_argv("-l", "127.0.0.1", "-p", str(port), *flags), port)


def _stop(server) -> str:
    """Stop a server started by _serve and return what it wrote to stderr."""
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(5)
    return server.stderr_text()


def _corrupt_first_record(directory) -> tuple:
    segment = _newest_segment(directory)
    offset = 16                                   # the first record, after the header
    with open(segment, "r+b") as f:
        f.seek(offset + 20)
        byte = f.read(1)
        f.seek(offset + 20)
        f.write(bytes([byte[0] ^ 0xFF]))
    return segment, offset


def test_corruption_in_the_middle_stops_startup(tmp_path):
    _killed_server_with_jobs(tmp_path)
    segment, offset = _corrupt_first_record(tmp_path)
    port = free_port()
    proc = subprocess.run(qserver_argv("-l", "127.0.0.1", "-p", str(port),
                                       "-b", str(tmp_path)),
                          capture_output=True, timeout=20)
    assert proc.returncode == 1
    assert f"{segment}: corrupt record at offset {offset}" in proc.stderr.decode()


def test_salvage_flag_starts_and_reports_what_was_dropped(tmp_path):
    _killed_server_with_jobs(tmp_path)
    segment, offset = _corrupt_first_record(tmp_path)
    server = _serve(["-b", str(tmp_path), "--salvage-log"])
    try:
        c = server.client()
        assert c.cmd(b"peek 1") == b"NOT_FOUND\r\n"        # the damaged record
        for i in range(2, 6):
            assert c.cmd(b"peek %d" % i).startswith(b"FOUND %d 5" % i)
    finally:
        stderr = _stop(server)
    assert re.search(rf"{re.escape(segment)}: dropped bytes {offset}\.\.\d+ \(\d+ bytes\)",
                     stderr), stderr


def test_second_server_on_the_same_directory_is_refused(tmp_path):
    server = start_qserver("-b", str(tmp_path))
    try:
        proc = subprocess.run(qserver_argv("-l", "127.0.0.1", "-p", str(free_port()),
                                           "-b", str(tmp_path)),
                              capture_output=True, timeout=20)
        assert proc.returncode == 10
        assert b"in use by another qserver" in proc.stderr
    finally:
        server.stop()


def test_missing_directory_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope"
    proc = subprocess.run(qserver_argv("-l", "127.0.0.1", "-p", str(free_port()),
                                       "-b", str(missing)),
                          capture_output=True, timeout=20)
    assert proc.returncode == 10
    assert f"log directory {missing} does not exist".encode() in proc.stderr


def test_restart_keeps_state_the_way_beanstalkd_forgets(tmp_path):
    """Release without delay (new priority), bury order and counters survive; buries
    is not bumped by the restart; a delayed job keeps its due time."""
    server = start_qserver("-b", str(tmp_path), "-f", "0")
    c = server.client()
    for i in range(4):
        c.cmd(b"put 50 0 60 1\r\n%d" % i)
    assert c.cmd(b"put 1 30 60 1\r\nd") == b"INSERTED 5\r\n"
    reserved = [c.cmd(b"reserve").split()[1] for _ in range(4)]
    assert reserved == [b"1", b"2", b"3", b"4"]
    assert c.cmd(b"release 1 9 0") == b"RELEASED\r\n"
    assert c.cmd(b"bury 3 5") == b"BURIED\r\n"
    assert c.cmd(b"bury 2 5") == b"BURIED\r\n"
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(5)
    server.stop()
    restarted = start_qserver("-b", str(tmp_path), "-f", "0")
    try:
        c = restarted.client()
        job1 = c.yaml(b"stats-job 1")
        assert (job1["state"], job1["pri"], job1["releases"], job1["reserves"]) == \
            ("ready", "9", "1", "1")
        assert c.yaml(b"stats-job 4")["state"] == "ready"     # was reserved
        assert c.cmd(b"peek-buried") == b"FOUND 3 1\r\n2\r\n"  # bury order kept
        assert c.yaml(b"stats-job 3")["buries"] == "1"
        delayed = c.yaml(b"stats-job 5")
        assert delayed["state"] == "delayed"
        assert 27 <= int(delayed["time-left"]) <= 30
        assert c.cmd(b"kick 1") == b"KICKED 1\r\n"
        assert c.cmd(b"peek-buried") == b"FOUND 2 1\r\n1\r\n"
    finally:
        restarted.stop()


def _mount_tmpfs(path, size) -> bool:
    if os.geteuid() != 0:
        return False
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                             str(path)], capture_output=True)
    return result.returncode == 0


def test_full_disk_refuses_puts_keeps_deletes_and_recovers(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    if not _mount_tmpfs(mount, "512k"):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        logdir = mount / "log"
        logdir.mkdir()
        filler = mount / "filler"
        filler.write_bytes(b"\0" * (300 * 1024))
        server = start_qserver("-b", str(logdir), "-s", str(64 * 1024), "-f", "0")
        try:
            c = server.client()
            body = b"y" * 1000
            inserted = []
            reply = b""
            for _ in range(400):
                reply = c.cmd(b"put 0 0 60 1000\r\n" + body)
                if not reply.startswith(b"INSERTED"):
                    break
                inserted.append(int(reply.split()[1]))
            assert reply == b"OUT_OF_MEMORY\r\n", reply
            assert inserted
            # Reads and deletes keep working on a full disk.
            assert c.cmd(b"peek %d" % inserted[0]).startswith(b"FOUND")
            assert c.yaml(b"stats")["current-jobs-ready"] == str(len(inserted))
            for job_id in inserted[:3]:
                assert c.cmd(b"delete %d" % job_id) == b"DELETED\r\n"
            # Space comes back: writes resume by themselves.
            filler.unlink()
            reply = c.cmd(b"put 0 0 60 1000\r\n" + body)
            assert reply.startswith(b"INSERTED"), reply
            last = int(reply.split()[1])
            server.proc.send_signal(signal.SIGKILL)
            server.proc.wait(5)
        finally:
            server.stop()
        restarted = start_qserver("-b", str(logdir), "-s", str(64 * 1024), "-f", "0")
        try:
            c = restarted.client()
            for job_id in inserted[3:] + [last]:
                assert c.cmd(b"peek %d" % job_id).startswith(b"FOUND %d" % job_id)
            for job_id in inserted[:3]:
                assert c.cmd(b"peek %d" % job_id) == b"NOT_FOUND\r\n"
        finally:
            restarted.stop()
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)

