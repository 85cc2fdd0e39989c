"""qctl against live servers: every subcommand against qserver, and the read-only
ones (plus put and peek) against beanstalkd too, since qctl must work with both.
Most calls run qctl's main() in-process (fast); one runs it as `python -m`.
"""

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from conftest import (ServerProcess, free_port, qserver_argv, start_beanstalkd,
                      start_qserver)

from qserver import qctl

TUBE_KEYS = ["tube", "ready", "reserved", "delayed", "buried", "urgent", "waiting",
             "paused"]


@pytest.fixture(params=["qserver", "beanstalkd"])
def any_server(request):
    server = start_qserver() if request.param == "qserver" else start_beanstalkd()
    yield server
    server.stop()


def run(capsys, server, *args, stdin: bytes = b"") -> tuple:
    """(exit status, stdout, stderr) of `qctl --port P ARGS`."""
    where = (["--socket", server.unix_path] if server.unix_path
             else ["--port", str(server.port)])
    old = sys.stdin
    sys.stdin = io.TextIOWrapper(io.BytesIO(stdin))
    try:
        rc = qctl.main([*where, *args])
    finally:
        sys.stdin = old
    out, err = capsys.readouterr()
    return rc, out, err


def run_json(capsys, server, *args, stdin: bytes = b""):
    rc, out, err = run(capsys, server, *args, "--json", stdin=stdin)
    assert rc == 0, err
    return json.loads(out)


def test_stats_and_tubes(capsys, any_server):
    s = any_server
    assert run_json(capsys, s, "put", "--tube", "jobs", "--pri", "5", stdin=b"a")["id"] == 1
    run_json(capsys, s, "put", "--tube", "jobs", "--delay", "60", stdin=b"b")
    stats = run_json(capsys, s, "stats")
    assert stats["current-jobs-ready"] == 1 and stats["current-jobs-delayed"] == 1
    assert isinstance(stats["version"], str) and isinstance(stats["id"], str)
    assert isinstance(stats["draining"], bool)
    tubes = {row["tube"]: row for row in run_json(capsys, s, "tubes")}
    assert list(tubes) == ["default", "jobs"]
    assert list(tubes["jobs"]) == TUBE_KEYS
    assert tubes["jobs"] == {"tube": "jobs", "ready": 1, "reserved": 0, "delayed": 1,
                             "buried": 0, "urgent": 1, "waiting": 0, "paused": 0}
    # --json may also come before the command
    rc, out, _ = run(capsys, s, "--json", "tubes")
    assert rc == 0 and json.loads(out)[1]["tube"] == "jobs"
    rc, out, _ = run(capsys, s, "tubes")
    lines = out.splitlines()
    assert lines[0].split() == [k.upper() for k in TUBE_KEYS]
    assert lines[2].split() == ["jobs", "1", "0", "1", "0", "1", "0", "-"]
    rc, out, _ = run(capsys, s, "stats")
    assert rc == 0 and any(line.split() == ["current-jobs-ready", "1"]
                           for line in out.splitlines())


def test_peek_by_id_and_state(capsys, any_server):
    s = any_server
    run_json(capsys, s, "put", "--tube", "t", stdin=b"first")
    run_json(capsys, s, "put", "--tube", "t", "--delay", "60", stdin=b"later")
    job = run_json(capsys, s, "peek", "1")
    assert job["id"] == 1 and job["body"] == "first"
    assert job["stats"]["tube"] == "t" and job["stats"]["state"] == "ready"
    assert run_json(capsys, s, "peek", "--state", "ready", "--tube", "t")["id"] == 1
    assert run_json(capsys, s, "peek", "--state", "delayed", "--tube", "t")["id"] == 2
    rc, _, err = run(capsys, s, "peek", "--state", "buried", "--tube", "t")
    assert rc == 1 and "NOT_FOUND" in err
    rc, out, _ = run(capsys, s, "peek", "2")
    assert rc == 0 and out.rstrip().endswith("later") and "delayed" in out
    raw = run_json(capsys, s, "put", stdin=b"\xff\x00")
    assert run_json(capsys, s, "peek", str(raw["id"]))["body_base64"] == "/wA="


def test_kick_delete_pause(capsys):
    s = start_qserver()
    try:
        c = s.client()
        assert c.cmd(b"use t") == b"USING t\r\n"
        for _ in range(3):
            assert c.cmd(b"put 0 0 60 1\r\nx").startswith(b"INSERTED")
        assert c.cmd(b"watch t").startswith(b"WATCHING")
        for i in (1, 2, 3):
            assert c.cmd(b"reserve-with-timeout 0").startswith(b"RESERVED")
            assert c.cmd(b"bury %d 0" % i) == b"BURIED\r\n"
        assert run_json(capsys, s, "kick", "--tube", "t", "2") == {"tube": "t", "kicked": 2}
        rc, out, _ = run(capsys, s, "kick", "--tube", "t", "5")
        assert rc == 0 and out.strip() == "kicked 1 job(s) in t"
        assert run_json(capsys, s, "delete", "1") == {"deleted": 1}
        rc, _, err = run(capsys, s, "delete", "1")
        assert rc == 1 and "NOT_FOUND" in err
        assert run_json(capsys, s, "pause", "t", "30") == {"tube": "t", "paused": 30}
        row = [r for r in run_json(capsys, s, "tubes") if r["tube"] == "t"][0]
        assert 28 <= row["paused"] <= 30 and row["ready"] == 2
        c.close()
    finally:
        s.stop()


def test_top_is_bounded(capsys):
    s = start_qserver()
    try:
        rc, out, _ = run(capsys, s, "top", "--iterations", "2", "--interval", "0.05",
                         "--json")
        frames = [json.loads(line) for line in out.splitlines()]
        assert rc == 0 and len(frames) == 2
        assert frames[0]["rates"] == {} and "cmd-put" in frames[1]["rates"]
        assert frames[1]["tubes"][0]["tube"] == "default"
        rc, out, _ = run(capsys, s, "top", "--iterations", "1", "--interval", "0.05")
        assert rc == 0 and "jobs: ready 0" in out and "TUBE" in out
    finally:
        s.stop()


def test_unix_socket(capsys):
    directory = tempfile.mkdtemp(prefix="qctl", dir="/tmp")
    path = os.path.join(directory, "q.sock")
    s = ServerProcess(qserver_argv("-l", "unix:" + path), unix_path=path)
    try:
        assert run_json(capsys, s, "put", stdin=b"hi")["id"] == 1
        assert run_json(capsys, s, "stats")["current-jobs-ready"] == 1
    finally:
        s.stop()
        shutil.rmtree(directory, ignore_errors=True)


def test_errors_have_distinct_exit_status(capsys):
    assert qctl.main(["--port", str(free_port()), "stats"]) == 3
    assert "cannot connect" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        qctl.main(["peek"])
    assert exit_info.value.code == 2


def test_job_config_and_stats_ext(capsys):
    s = start_qserver()
    try:
        c = s.client()
        assert c.cmd(b"watch emails").startswith(b"WATCHING")
        assert c.cmd(b"use emails") == b"USING emails\r\n"
        policy = run_json(capsys, s, "config", "emails", "max-attempts", "2")
        keys = ["name", "configured", "max-attempts", "backoff", "dead-letter", "retain"]
        assert list(policy)[:len(keys)] == keys     # later extensions add values
        assert {key: policy[key] for key in keys} == {
            "name": "emails", "configured": True, "max-attempts": 2, "backoff": "none",
            "dead-letter": "bury", "retain": 0}
        assert run_json(capsys, s, "config", "emails", "retain", "60")["retain"] == 60
        rc, out, _ = run(capsys, s, "config", "emails")
        assert rc == 0 and ["backoff", "none"] in [ln.split() for ln in out.splitlines()]
        assert c.cmd(b"put 0 0 60 1\r\nx") == b"INSERTED 1\r\n"
        assert c.cmd(b"reserve-with-timeout 0").startswith(b"RESERVED 1 ")
        assert c.cmd(b"progress 1 4\r\nhalf") == b"TOUCHED\r\n"
        assert c.cmd(b"fail 1 12\r\nboom\n  line2") == b"RETRYING 0\r\n"
        assert c.cmd(b"reserve-with-timeout 0").startswith(b"RESERVED 1 ")
        assert c.cmd(b"fail 1 1\r\n\xff") == b"BURIED\r\n"
        job = run_json(capsys, s, "job", "1")
        assert (job["id"], job["state"], job["attempts"], job["max-attempts"]) == (
            1, "buried", 2, 2)
        assert job["progress"] == "half" and job["result-bytes"] == 0
        assert [f.get("reason", f.get("reason_base64")) for f in job["failures"]] == [
            "boom\n  line2", "/w=="]
        assert all(isinstance(f["time"], int) for f in job["failures"])
        rc, out, _ = run(capsys, s, "job", "1")
        lines = out.splitlines()
        assert rc == 0 and ["attempts", "2"] in [line.split() for line in lines]
        assert "    boom" in lines and "      line2" in lines
        assert "    <1 bytes, not UTF-8>" in lines
        assert c.cmd(b"put 0 0 60 1\r\ny") == b"INSERTED 2\r\n"
        assert c.cmd(b"reserve-with-timeout 0").startswith(b"RESERVED 2 ")
        assert c.cmd(b"complete 2 4\r\ndone") == b"COMPLETED\r\n"
        job = run_json(capsys, s, "job", "2")
        assert (job["state"], job["result"], job["progress"]) == ("completed", "done", None)
        rc, out, _ = run(capsys, s, "job", "2")
        assert rc == 0 and out.rstrip().endswith("result:\ndone")
        rc, _, err = run(capsys, s, "job", "3")
        assert rc == 1 and "job-info: NOT_FOUND" in err and "beanstalkd" not in err
        rc, _, err = run(capsys, s, "config", "emails", "colour", "red")
        assert rc == 1 and "config-tube: BAD_FORMAT" in err and "beanstalkd" not in err
        ext = run_json(capsys, s, "stats-ext")
        assert (ext["job-failures"], ext["job-retries"], ext["job-dead-letters"],
                ext["job-completions"], ext["configured-tubes"]) == (2, 1, 1, 1, 1)
        frame = run_json(capsys, s, "top", "--iterations", "1", "--interval", "0.05")
        assert frame["ext"]["job-completions"] == 1
        rc, out, _ = run(capsys, s, "top", "--iterations", "1", "--interval", "0.05")
        assert "lifecycle: failures 2  retries 1  dead-letters 1  completions 1" in out
        c.close()
    finally:
        s.stop()
    with pytest.raises(SystemExit) as exit_info:
        qctl.main(["config", "emails", "retain"])
    assert exit_info.value.code == 2


def test_extensions_against_beanstalkd(capsys, beanstalkd):
    for args in (("job", "1"), ("config", "emails"), ("stats-ext",)):
        rc, _, err = run(capsys, beanstalkd, *args)
        assert rc == 1 and "is this beanstalkd?" in err, args
    frame = run_json(capsys, beanstalkd, "top", "--iterations", "1", "--interval", "0.05")
    assert frame["ext"] is None and frame["tubes"][0]["tube"] == "default"


def test_as_a_module_with_stdin():
    s = start_qserver()
    try:
        argv = [sys.executable, "-m", "qserver.qctl", "--port", str(s.port)]
        put = subprocess.run([*argv, "put", "--tube", "x", "--json"], input=b"body",
                             capture_output=True, timeout=10)
        assert put.returncode == 0 and json.loads(put.stdout) == {"id": 1, "tube": "x"}
        tubes = subprocess.run([*argv, "tubes", "--json"], capture_output=True,
                               timeout=10)
        assert [row["tube"] for row in json.loads(tubes.stdout)] == ["default", "x"]
    finally:
        s.stop()
