"""The --metrics listener: /metrics scraped and parsed strictly as Prometheus text
format (0.0.4), values checked after real commands, /health, and that nothing
listens (or is even imported) without --metrics.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from conftest import (WAIT, ServerProcess, free_port, qserver_argv, start_qserver,
                      wait_for_port)

from qserver.http.metrics import escape_label

NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')
TYPES = {"counter", "gauge", "untyped", "summary", "histogram"}


def unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def parse_labels(text: str) -> tuple:
    """`{a="1",b="2"}` to (("a", "1"), ("b", "2")), refusing anything malformed."""
    assert text.startswith("{") and text.endswith("}"), text
    inner, labels, pos = text[1:-1], [], 0
    while pos < len(inner):
        m = LABEL.match(inner, pos)
        assert m, f"bad label at {inner[pos:]!r}"
        labels.append((m.group(1), unescape(m.group(2))))
        pos = m.end()
        if pos < len(inner):
            assert inner[pos] == ",", inner
            pos += 1
    names = [k for k, _ in labels]
    assert len(names) == len(set(names)), f"repeated label in {text}"
    return tuple(labels)


def parse_sample(line: str) -> tuple:
    m = NAME.match(line)
    assert m, line
    name, rest = m.group(0), line[m.end():]
    labels = ()
    if rest.startswith("{"):
        end = rest.index("} ") + 1 if "} " in rest else len(rest)
        labels, rest = parse_labels(rest[:end]), rest[end:]
    assert rest.startswith(" ") and " " not in rest[1:], f"bad sample: {line!r}"
    return name, labels, float(rest[1:])       # no timestamps are expected


def parse_metrics(text: str) -> tuple:
    """Strict parse: returns ({(name, labels): value}, {name: type}).

    HELP and TYPE come once per family, before its samples; a family's samples are
    contiguous; no series repeats; the page ends with a newline.
    """
    assert text.endswith("\n")
    samples, types, helps, finished = {}, {}, set(), set()
    current = None
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            assert NAME.fullmatch(name) and help_text and name not in helps, line
            helps.add(name)
            if current is not None:
                finished.add(current)
            current = name
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert name == current and kind in TYPES and name not in types, line
            types[name] = kind
        else:
            assert line and not line.startswith("#"), f"unexpected line {line!r}"
            name, labels, value = parse_sample(line)
            assert name == current and name in types, f"{name} outside its family"
            assert name not in finished
            assert (name, labels) not in samples, f"repeated series {line}"
            samples[(name, labels)] = value
    return samples, types


def get(port: int, path: str, method: str = "GET") -> tuple:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read().decode()


def scrape(port: int) -> tuple:
    status, headers, body = get(port, "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return parse_metrics(body)


@pytest.fixture
def served():
    mport = free_port()
    server = start_qserver("--metrics", f"127.0.0.1:{mport}")
    # start_qserver waits for the queue port; the metrics socket is opened just after
    # it, and a busy host can run a test in between.
    wait_for_port(mport, server.proc)
    yield server, mport
    server.stop()


def tube(name: str) -> tuple:
    return (("tube", name),)


def test_values_after_commands(served):
    server, mport = served
    c = server.client()
    odd = "a-b+c/d;e.f$g_h(i)"        # every kind of character a tube name may have
    assert c.cmd(b"use " + odd.encode()) == f"USING {odd}\r\n".encode()
    for pri in (5, 2000, 3000):
        assert c.cmd(b"put %d 0 60 1\r\nx" % pri).startswith(b"INSERTED")
    assert c.cmd(b"put 0 100 60 1\r\nd").startswith(b"INSERTED")
    assert c.cmd(b"watch " + odd.encode()).startswith(b"WATCHING")
    assert c.cmd(b"reserve-with-timeout 0").startswith(b"RESERVED 1 ")
    assert c.cmd(b"bury 1 0") == b"BURIED\r\n"
    assert c.cmd(b"pause-tube " + odd.encode() + b" 60") == b"PAUSED\r\n"

    samples, types = scrape(mport)
    assert samples[("cmd_put", ())] == 4 and types["cmd_put"] == "counter"
    assert samples[("current_jobs_ready", ())] == 2
    assert samples[("current_jobs_delayed", ())] == 1
    assert samples[("current_jobs_buried", ())] == 1
    assert samples[("total_jobs", ())] == 4 and types["total_jobs"] == "counter"
    assert samples[("current_connections", ())] >= 1
    assert samples[("current_producers", ())] == 1
    assert samples[("current_tubes", ())] == 2
    assert samples[("draining", ())] == 0
    assert samples[("uptime", ())] >= 0 and types["uptime"] == "gauge"
    assert ("binlog_records_written", ()) in samples
    assert samples[("tube_current_jobs_ready", tube(odd))] == 2
    assert samples[("tube_current_jobs_urgent", tube(odd))] == 0
    assert samples[("tube_current_jobs_buried", tube(odd))] == 1
    assert samples[("tube_current_jobs_delayed", tube(odd))] == 1
    assert samples[("tube_total_jobs", tube(odd))] == 4
    assert samples[("tube_current_using", tube(odd))] == 1
    assert samples[("tube_current_watching", tube(odd))] == 1
    assert samples[("tube_cmd_pause_tube", tube(odd))] == 1
    assert samples[("tube_pause", tube(odd))] == 60
    assert samples[("qserver_tube_paused", tube(odd))] == 1
    assert samples[("qserver_tube_paused", tube("default"))] == 0
    assert samples[("tube_current_watching", tube("default"))] == 1
    # fields that are not numbers are not series
    assert not any(name in ("pid", "version", "hostname", "id") for name, _ in samples)
    c.close()


def test_counters_follow_the_stats_reply(served):
    server, mport = served
    c = server.client()
    c.cmd(b"put 0 0 60 1\r\nx")
    stats = c.yaml(b"stats")
    samples, _ = scrape(mport)
    for key in ("cmd-put", "cmd-stats", "total-jobs", "current-jobs-ready",
                "total-connections", "max-job-size"):
        assert samples[(key.replace("-", "_"), ())] == int(stats[key]), key
    c.close()


def test_health_and_http_errors(served):
    server, mport = served
    assert get(mport, "/health")[::2] == (200, "ok\n")
    assert get(mport, "/health", "HEAD")[::2] == (200, "")
    assert get(mport, "/nope")[0] == 404
    assert get(mport, "/metrics", "POST")[0] == 405
    with socket.create_connection(("127.0.0.1", mport), timeout=5) as s:
        s.sendall(b"garbage\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 400 ")
    server.signal(signal.SIGUSR1)
    deadline = time.monotonic() + WAIT
    while get(mport, "/health")[0] != 503:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert get(mport, "/health")[2] == "draining\n"
    assert scrape(mport)[0][("draining", ())] == 1
    # the command side is unaffected by scrapes
    c = server.client()
    assert c.cmd(b"list-tube-used") == b"USING default\r\n"
    c.close()


def test_label_escaping():
    assert escape_label('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    labels = parse_labels('{tube="%s"}' % escape_label('a"b\\c\nd'))
    assert labels == (("tube", 'a"b\\c\nd'),)


def listening_inodes(pid: int) -> set:
    """Inodes of TCP sockets in LISTEN state held by process `pid`."""
    held = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            held.add(target[8:-1])
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if os.path.exists(table):
            for line in open(table).readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A":
                    listening.add(fields[9])
    return held & listening


def test_off_by_default_nothing_listens_nothing_imported():
    server = start_qserver()
    try:
        assert len(listening_inodes(server.proc.pid)) == 1
    finally:
        server.stop()
    mport = free_port()
    with_metrics = start_qserver("--metrics", f"127.0.0.1:{mport}")
    try:
        wait_for_port(mport, with_metrics.proc)     # opened just after the queue port
        assert len(listening_inodes(with_metrics.proc.pid)) == 2
    finally:
        with_metrics.stop()
    # and the module is not even loaded without the flag
    port = free_port()
    argv = [sys.executable, "-X", "importtime", *qserver_argv("-p", str(port))[1:]]
    plain = ServerProcess(argv, port)
    try:
        plain.client().cmd(b"stats")
    finally:
        plain.stop()
    imports = plain.stderr_text()
    assert "qserver.server" in imports and "qserver.http" not in imports


def test_bad_metrics_address_is_a_usage_error():
    result = subprocess.run(qserver_argv("--metrics", "nope"), capture_output=True,
                            text=True, timeout=10)
    assert result.returncode == 5 and "ADDR:PORT" in result.stderr


def test_metrics_port_taken_exits_111():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(qserver_argv("-p", str(free_port()), "--metrics",
                                             f"127.0.0.1:{port}"),
                                capture_output=True, text=True, timeout=10)
    assert result.returncode == 111 and "--http" in result.stderr
