"""systemd integration for real: socket activation through systemd's own
`systemd-socket-activate`, sd_notify messages through a notify socket this test binds,
the watchdog, and the shipped unit files through `systemd-analyze verify`.

Needs the Debian package `systemd` (the tools only; systemd need not be running).
Every wait is bounded.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import (EARLY, LATE, WAIT, Client, ServerProcess, free_port, qserver_argv,
                      start_qserver, wait_for_port)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNIT_DIR = os.path.join(ROOT, "systemd")
IGNORED_WARNING = "-l/-p ignored"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing (apt-get install -y systemd)")
    return path


@pytest.fixture
def short_tmp():
    """A short directory: unix socket paths are limited to 107 bytes."""
    path = tempfile.mkdtemp(prefix="qsd", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def finish(server: ServerProcess) -> int:
    """SIGTERM and the exit status (bounded)."""
    server.signal(signal.SIGTERM)
    try:
        return server.proc.wait(5)
    finally:
        server.stop()


# -- socket activation ------------------------------------------------------------

def activate(listen: list, *flags) -> list:
    argv = [tool("systemd-socket-activate")]
    for address in listen:
        argv += ["-l", address]
    return argv + ["--", *qserver_argv(*flags)]


def test_socket_activation_tcp_ignores_l_and_p_with_one_warning():
    port = free_port()
    unused = free_port()
    # systemd-socket-activate binds the port, and execs qserver (same pid) at the
    # first connection, which ServerProcess makes while waiting for the port.
    server = ServerProcess(activate([f"127.0.0.1:{port}"], "-l", "127.0.0.1",
                                    "-p", str(unused)), port)
    try:
        c = server.client()
        assert c.cmd(b"put 0 0 10 2\r\nhi") == b"INSERTED 1\r\n"
        assert c.yaml(b"stats")["pid"] == str(server.proc.pid)
        c.close()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", unused), timeout=1).close()
        assert finish(server) == 0
        assert server.stderr_text().count(IGNORED_WARNING) == 1, server.stderr_text()
    finally:
        server.stop()


def connect_unix(path: str) -> socket.socket:
    """Connect, retrying (bounded) while nothing listens at `path` yet:
    systemd-socket-activate sets its sockets up one after the other, so the TCP one
    may accept before the unix one listens, and a busy host can connect in between."""
    deadline = time.monotonic() + WAIT
    while True:
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(5)
        try:
            sock.connect(path)
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def test_socket_activation_tcp_and_unix_together(short_tmp):
    port = free_port()
    path = os.path.join(short_tmp, "q.sock")
    server = ServerProcess(activate([f"127.0.0.1:{port}", path]), port)
    try:
        tcp = server.client()
        unix = connect_unix(path)
        assert tcp.cmd(b"put 0 0 10 3\r\ntcp") == b"INSERTED 1\r\n"
        unix.sendall(b"reserve-with-timeout 0\r\n")
        reply = b""
        while not reply.endswith(b"tcp\r\n"):
            chunk = unix.recv(100)
            assert chunk, reply
            reply += chunk
        assert reply == b"RESERVED 1 3\r\ntcp\r\n"
        unix.close()
        tcp.close()
        assert finish(server) == 0
        # -l/-p were not given, so nothing to warn about
        assert IGNORED_WARNING not in server.stderr_text()
    finally:
        server.stop()


def test_sockets_meant_for_another_process_are_left_alone():
    """LISTEN_PID names another process: qserver binds -l/-p itself."""
    port = free_port()
    env = dict(os.environ, LISTEN_FDS="1", LISTEN_PID="1")
    argv = qserver_argv("-l", "127.0.0.1", "-p", str(port))
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        wait_for_port(port, proc, timeout=5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
        assert IGNORED_WARNING not in proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


# -- sd_notify --------------------------------------------------------------------

class NotifySocket:
    """The AF_UNIX datagram socket a service manager would read NOTIFY_SOCKET on."""

    def __init__(self, directory: str):
        self.path = os.path.join(directory, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)

    def next(self, timeout: float = 5.0) -> dict:
        """The next message as {KEY: VALUE}; fails after `timeout` seconds."""
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.split("\n") if line)

    def wait_for(self, key: str, timeout: float = 5.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            message = self.next(max(deadline - time.monotonic(), 0.01))
            if key in message:
                return message

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify(short_tmp):
    n = NotifySocket(short_tmp)
    yield n
    n.close()


def spawn(port: int, env: dict, *flags) -> subprocess.Popen:
    argv = qserver_argv("-l", "127.0.0.1", "-p", str(port), *flags)
    return subprocess.Popen(argv, env=dict(os.environ, **env), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(5)


def test_ready_after_replay_then_stopping_on_sigterm(notify, short_tmp):
    logdir = os.path.join(short_tmp, "log")
    os.mkdir(logdir)
    first = start_qserver("-b", logdir)
    c = first.client()
    for i in range(3):
        assert c.cmd(b"put 0 0 10 1\r\nx").startswith(b"INSERTED")
    c.close()
    assert finish(first) == 0

    port = free_port()
    proc = spawn(port, {"NOTIFY_SOCKET": notify.path}, "-b", logdir)
    try:
        ready = notify.wait_for("READY")
        assert ready["READY"] == "1"
        assert f"127.0.0.1:{port}" in ready["STATUS"] and "jobs 3" in ready["STATUS"]
        # READY means listening and replayed: no retry needed, the jobs are back.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"stats-tube default\r\n")
            reply = b""
            while b"current-jobs-ready" not in reply:
                chunk = s.recv(4096)
                assert chunk
                reply += chunk
            assert b"current-jobs-ready: 3\n" in reply
        proc.send_signal(signal.SIGTERM)
        assert notify.wait_for("STOPPING")["STOPPING"] == "1"
        assert proc.wait(5) == 0
    finally:
        stop(proc)


def test_drain_updates_status(notify):
    port = free_port()
    proc = spawn(port, {"NOTIFY_SOCKET": notify.path})
    try:
        notify.wait_for("READY")
        proc.send_signal(signal.SIGUSR1)
        assert "draining" in notify.wait_for("STATUS")["STATUS"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0


def test_watchdog_pings_at_half_the_interval(notify):
    """WATCHDOG_USEC=1 s: a ping right after READY, then one every 0.5 s."""
    port = free_port()
    spawned = time.monotonic()
    proc = spawn(port, {"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "1000000"})
    try:
        notify.wait_for("READY")
        ready = time.monotonic()
        for _ in range(4):
            notify.wait_for("WATCHDOG")
        fourth = time.monotonic()
        print(f"fourth ping {fourth - ready:.3f} s after READY (due 1.5 s)")
        # Never early: the pings are sent after the spawn, 0.5 s apart at least.
        assert fourth - spawned >= 3 * 0.5 - EARLY, fourth - spawned
        # Not at the full interval (that would be 3 s): room of LATE for the timers.
        assert fourth - ready <= 1.5 + LATE, fourth - ready
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0


def test_watchdog_for_another_pid_is_ignored(notify):
    port = free_port()
    proc = spawn(port, {"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "100000",
                        "WATCHDOG_PID": "1"})
    try:
        notify.wait_for("READY")
        with pytest.raises(socket.timeout):
            notify.wait_for("WATCHDOG", timeout=0.3)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0


def test_sigterm_closes_a_parked_reserve_cleanly(notify):
    port = free_port()
    proc = spawn(port, {"NOTIFY_SOCKET": notify.path}, "-b", tempfile.mkdtemp(
        dir=os.path.dirname(notify.path)), "-f", "0")
    try:
        notify.wait_for("READY")
        parked = socket.create_connection(("127.0.0.1", port), timeout=5)
        parked.sendall(b"watch other\r\nreserve\r\n")
        assert parked.recv(100) == b"WATCHING 2\r\n"
        other = Client(socket.create_connection(("127.0.0.1", port)))
        try:
            deadline = time.monotonic() + WAIT       # until the reserve is parked
            while other.yaml(b"stats")["current-waiting"] != "1":
                assert time.monotonic() < deadline, "the reserve never parked"
                time.sleep(0.01)
        finally:
            other.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
        # an orderly close (EOF), not a reset, and no stray reply
        assert parked.recv(100) == b""
        parked.close()
    finally:
        stop(proc)


# -- unit files -------------------------------------------------------------------

def analyze_or_skip() -> str:
    """systemd-analyze, after checking it can verify anything at all here."""
    analyze = tool("systemd-analyze")
    with tempfile.TemporaryDirectory() as d:
        unit = os.path.join(d, "probe.service")
        with open(unit, "w") as f:
            f.write(f"[Service]\nExecStart={sys.executable} -V\n")
        probe = subprocess.run([analyze, "verify", unit], capture_output=True, text=True,
                               timeout=30)
    if probe.returncode != 0 or probe.stderr.strip():
        pytest.skip(f"systemd-analyze verify cannot run in this container: "
                    f"{probe.stderr.strip()[:300]}")
    return analyze


def test_unit_files_verify(tmp_path):
    analyze = analyze_or_skip()
    for name in ("qserver.service", "qserver.socket"):
        text = open(os.path.join(UNIT_DIR, name)).read()
        # verify checks that ExecStart's binary exists; point it at this interpreter.
        text = text.replace("/opt/qserver/bin/qserver", f"{sys.executable} -m qserver")
        (tmp_path / name).write_text(text)
    result = subprocess.run([analyze, "verify", str(tmp_path / "qserver.service"),
                             str(tmp_path / "qserver.socket")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    # unknown keys and bad values are only warnings: there must be none
    assert result.stderr.strip() == "", result.stderr


def unit_settings(name: str) -> dict:
    settings = {}
    for line in open(os.path.join(UNIT_DIR, name)):
        if "=" in line and not line.startswith("#"):
            key, _, value = line.strip().partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_unit_files_say_what_the_docs_promise():
    service = unit_settings("qserver.service")
    assert service["Type"] == ["notify"]
    assert service["StateDirectory"] == ["qserver"]
    assert "-b /var/lib/qserver $QSERVER_OPTS" in service["ExecStart"][0]
    assert service["Restart"] == ["on-failure"]
    for key in ("WatchdogSec", "EnvironmentFile", "NoNewPrivileges", "ProtectSystem",
                "ProtectHome", "PrivateTmp", "PrivateDevices", "DynamicUser"):
        assert key in service, key
    assert service["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"]
    assert unit_settings("qserver.socket")["ListenStream"] == ["127.0.0.1:11300"]
    env = unit_settings("qserver.env")
    assert env["QSERVER_OPTS"][0].startswith('"')


# -- logging to the journal ---------------------------------------------------------

def run_logged(journal_stream, *flags) -> str:
    """Start qserver -V with stderr in a file, stop it, return what it logged."""
    with tempfile.TemporaryFile() as err:
        st = os.fstat(err.fileno())
        env = dict(os.environ)
        env.pop("JOURNAL_STREAM", None)
        if journal_stream:
            env["JOURNAL_STREAM"] = journal_stream(st)
        port = free_port()
        argv = qserver_argv("-V", "-l", "127.0.0.1", "-p", str(port), *flags)
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=err)
        try:
            wait_for_port(port, proc, timeout=5)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(5) == 0
        finally:
            stop(proc)
        err.seek(0)
        return err.read().decode()


def test_journal_priority_prefixes_and_startup_lines(short_tmp):
    text = run_logged(lambda st: f"{st.st_dev}:{st.st_ino}", "-b", short_tmp)
    lines = text.splitlines()
    assert lines and all(line[:3] in ("<6>", "<4>", "<3>") for line in lines), text
    assert any(line.startswith("<6>listening on 127.0.0.1:") for line in lines), text
    assert any(line.startswith(f"<6>log {short_tmp}: 0 records replayed")
               for line in lines), text
    assert "<6>ready" in lines and "<6>shutting down" in lines


def test_inherited_journal_stream_of_another_file_is_ignored():
    text = run_logged(lambda st: f"{st.st_dev}:{st.st_ino + 1}")
    assert "<6>" not in text and " INFO listening on 127.0.0.1:" in text, text
