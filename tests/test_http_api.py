"""The dashboard's JSON API (`--http`, protocol.md "The dashboard"): exact JSON for
what clients just did, on both stores; every action POST-only, same-origin-checked,
refused in read-only mode and behind --http-auth; bad requests answered, never
buffered without bound."""

import base64
import http.client
import json
import os
import socket
import subprocess
import time

import pytest

from conftest import free_port, qserver_argv, start_qserver, wait_for_port
from qserver.cli import EXIT_USAGE

WAIT = 10.0


class Dashboard:
    """A qserver with --http, and plain HTTP requests to it."""

    def __init__(self, *extra):
        self.http_port = free_port()
        self.server = start_qserver("--http", f"127.0.0.1:{self.http_port}", *extra)
        wait_for_port(self.http_port, self.server.proc)
        self.origin = f"http://127.0.0.1:{self.http_port}"

    def request(self, method: str, path: str, body: bytes = b"", headers=None):
        connection = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=WAIT)
        try:
            connection.request(method, path, body=body or None, headers=headers or {})
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()

    def get(self, path: str, headers=None):
        status, _, body = self.request("GET", path, headers=headers)
        return status, json.loads(body)

    def post(self, path: str, value=None, origin: str = "same", headers=None):
        headers = dict(headers or {})
        if origin == "same":
            headers["Origin"] = self.origin
        elif origin is not None:
            headers["Origin"] = origin
        body = b"" if value is None else json.dumps(value).encode()
        if body:
            headers["Content-Type"] = "application/json"
        status, _, data = self.request("POST", path, body, headers)
        return status, json.loads(data)

    def stop(self):
        self.server.stop()


@pytest.fixture
def dashboard():
    board = Dashboard()
    yield board
    board.stop()


def tube_row(name, ready=0, urgent=0, reserved=0, delayed=0, buried=0, total=0,
             using=0, watching=0, pause=0, pause_left=0, cmd_delete=0, cmd_pause=0,
             held=0, head_age=None):
    return {"name": name, "current-jobs-urgent": urgent, "current-jobs-ready": ready,
            "current-jobs-reserved": reserved, "current-jobs-delayed": delayed,
            "current-jobs-buried": buried, "total-jobs": total, "current-using": using,
            "current-watching": watching, "current-waiting": 0, "cmd-delete": cmd_delete,
            "cmd-pause-tube": cmd_pause, "pause": pause, "pause-time-left": pause_left,
            "held": held, "head-age": head_age}


def fill_emails(client, buried: int = 1, ready: int = 2) -> list:
    """Puts ready+buried jobs in `emails` (bodies job-N) and buries the first
    `buried` (the client then watches only emails); returns the ids in put order."""
    assert client.cmd(b"use emails") == b"USING emails\r\n"
    ids = []
    for n in range(ready + buried):
        body = b"job-%d" % n
        reply = client.cmd(b"put 10 0 60 %d\r\n%s" % (len(body), body))
        ids.append(int(reply.split()[1]))
    client.cmd(b"watch emails")
    client.cmd(b"ignore default")
    for job_id in ids[:buried]:
        assert client.cmd(b"reserve-job %d" % job_id).startswith(b"RESERVED")
        assert client.cmd(b"bury %d 10" % job_id) == b"BURIED\r\n"
    return ids


# -- reads, on both stores -----------------------------------------------------------

@pytest.mark.usefixtures("each_store")
def test_overview_shows_the_tubes_and_counts_a_client_just_made(dashboard):
    client = dashboard.server.client()
    fill_emails(client)
    status, page = dashboard.get("/api/overview")
    assert status == 200
    ages = [tube.pop("head-age") for tube in page["tubes"]]
    assert ages[0] is None and 0 <= ages[1] <= WAIT
    expected = [tube_row("default"), tube_row("emails", ready=2, urgent=2, buried=1,
                                              total=3, using=1, watching=1)]
    for tube in expected:
        del tube["head-age"]
    assert page["tubes"] == expected
    assert page["stats"]["current-jobs-ready"] == 2
    assert page["stats"]["current-jobs-buried"] == 1
    assert page["stats"]["current-connections"] == 1
    assert page["ext"]["job-failures"] == 0
    node = page["node"]
    assert node["store"] == ("memory" if dashboard.server.argv.count("--store") == 0
                             else "redis")
    assert node["read_only"] is False and node["pid"] == dashboard.server.proc.pid
    assert set(page["rates"]) == {"interval", "put", "reserve", "delete", "fail"}
    client.close()


@pytest.mark.usefixtures("each_store")
def test_held_jobs_show_on_the_overview(dashboard):
    client = dashboard.server.client()
    client.cmd(b"use locked")
    client.cmd(b"watch locked")
    client.cmd(b"ignore default")
    for _ in range(2):
        assert client.cmd(b"put-ex 0 0 60 1 lock=a\r\nx").startswith(b"INSERTED")
    assert client.cmd(b"reserve-with-timeout 0").startswith(b"RESERVED")
    assert client.cmd(b"reserve-with-timeout 0") == b"TIMED_OUT\r\n"   # the other is held
    (tube,) = [tube for tube in dashboard.get("/api/overview")[1]["tubes"]
               if tube["name"] == "locked"]
    assert (tube["held"], tube["head-age"], tube["current-jobs-ready"]) == (1, None, 0)
    assert dashboard.get("/api/tubes/locked")[1]["stats"]["held"] == 1
    client.close()


@pytest.mark.usefixtures("each_store")
def test_the_dashboard_is_not_a_client_of_any_tube(dashboard):
    """Its reads and actions leave stats and stats-tube as the real clients make
    them: no connection, no use, no watch."""
    client = dashboard.server.client()
    fill_emails(client)
    before = {**client.yaml(b"stats"), **client.yaml(b"stats-ext")}
    for path in ("/api/overview", "/api/tubes/emails", "/api/server",
                 "/api/tubes/emails/jobs?state=all", "/api/jobs/1", "/metrics"):
        assert dashboard.request("GET", path)[0] == 200
    assert dashboard.post("/api/tubes/emails/kick", {"bound": 1})[0] == 200
    stats = client.yaml(b"stats")
    after = {**stats, **client.yaml(b"stats-ext")}
    # Its reads are not counted, its actions are (and the client's own stats).
    changed = {key: int(after[key]) - int(before[key]) for key in before
               if key.startswith("cmd-") and after[key] != before[key]}
    assert changed == {"cmd-stats": 1, "cmd-stats-ext": 1, "cmd-kick": 1}
    assert (stats["current-connections"], stats["total-connections"]) == (
        "1", before["total-connections"])
    default = client.yaml(b"stats-tube default")
    assert (default["current-using"], default["current-watching"]) == ("0", "0")
    emails = client.yaml(b"stats-tube emails")
    assert (emails["current-using"], emails["current-watching"]) == ("1", "1")
    client.close()


@pytest.mark.usefixtures("each_store")
def test_a_tube_page_and_paging_through_its_buried_jobs(dashboard):
    client = dashboard.server.client()
    ids = fill_emails(client, buried=45, ready=0)
    status, tube = dashboard.get("/api/tubes/emails")
    assert status == 200 and tube["name"] == "emails"
    assert tube["stats"]["current-jobs-buried"] == 45
    assert tube["policy"] == {"name": "emails", "configured": False, "max-attempts": 0,
                              "backoff": "none", "dead-letter": "bury", "retain": 0,
                              "lock-limit": 1}
    seen, cursor, pages = [], "0", 0
    while cursor is not None:
        pages += 1
        assert pages <= 3
        status, page = dashboard.get(f"/api/tubes/emails/jobs?state=buried&cursor={cursor}"
                                     "&limit=20")
        assert status == 200 and (page["tube"], page["state"]) == ("emails", "buried")
        for row in page["jobs"]:
            assert 0 <= row.pop("age") <= WAIT
        seen += page["jobs"]
        cursor = page["next"]
    assert pages == 3
    assert seen == [{"id": job_id, "state": "buried", "pri": 10, "delay": 0,
                     "time-left": 0, "attempts": 0, "key": None, "tags": [],
                     "size": len(b"job-%d" % n), "preview": {"text": "job-%d" % n},
                     "truncated": False} for n, job_id in enumerate(ids)]
    client.close()


@pytest.mark.usefixtures("each_store")
def test_a_job_page_with_a_binary_body_failures_and_tags(dashboard):
    client = dashboard.server.client()
    body = bytes(range(256)) * 20                   # 5120 bytes, not text
    assert client.cmd(b"use work") == b"USING work\r\n"
    reply = client.cmd(b"put-ex 5 0 60 %d key=k1 tag=red tag=blue\r\n%s"
                       % (len(body), body))
    job_id = int(reply.split()[1])
    client.cmd(b"watch work")
    assert client.cmd(b"reserve-job %d" % job_id).startswith(b"RESERVED")
    assert client.cmd(b"fail %d 10\r\nboom \xff \"x\"" % job_id) == b"BURIED\r\n"
    status, page = dashboard.get(f"/api/jobs/{job_id}")
    assert status == 200
    info = page["info"]
    assert 0 <= info.pop("age") <= WAIT
    failures = info.pop("failures")
    assert [failure["reason"] for failure in failures] == ['boom \xff "x"']
    assert abs(failures[0]["time"] - time.time()) <= WAIT
    assert info == {"id": job_id, "tube": "work", "state": "buried", "pri": 5, "delay": 0,
                    "ttr": 60, "time-left": 0, "file": 0, "reserves": 1, "timeouts": 0,
                    "releases": 0, "buries": 1, "kicks": 0, "attempts": 1,
                    "max-attempts": 0, "progress": None, "result-bytes": 0, "key": "k1",
                    "tags": ["red", "blue"], "cancelled": False}
    assert page["body"] == {"hex": body[:4096].hex(), "size": 5120, "truncated": True}
    assert page["result"] is None
    assert dashboard.get("/api/jobs/999999") == (404, {"error": "NOT_FOUND"})
    client.close()


@pytest.mark.usefixtures("each_store")
def test_a_completed_jobs_result_while_it_is_retained(dashboard):
    client = dashboard.server.client()
    assert client.cmd(b"config-tube done retain 600") == b"CONFIGURED\r\n"
    client.cmd(b"use done")
    job_id = int(client.cmd(b"put 0 0 60 4\r\nwork").split()[1])
    client.cmd(b"watch done")
    assert client.cmd(b"reserve-job %d" % job_id).startswith(b"RESERVED")
    assert client.cmd(b"complete %d 7\r\nresult!" % job_id) == b"COMPLETED\r\n"
    status, page = dashboard.get(f"/api/jobs/{job_id}")
    assert status == 200 and page["info"]["state"] == "completed"
    assert page["body"] is None
    assert page["result"] == {"text": "result!", "size": 7, "truncated": False}
    status, listed = dashboard.get("/api/tubes/done/jobs?state=completed")
    assert [(row["id"], row["preview"], row["size"]) for row in listed["jobs"]] == [
        (job_id, None, 0)]
    client.close()


def test_the_server_page_lists_the_connections(dashboard):
    client = dashboard.server.client()
    fill_emails(client)
    status, page = dashboard.get("/api/server")
    assert status == 200
    (row,) = page["connections"]
    assert row["peer"] == "127.0.0.1:%d" % client.sock.getsockname()[1]
    assert 0 <= row.pop("age") <= WAIT
    del row["peer"]
    assert row == {"use": "emails", "watch": ["emails"], "reserved": 0, "waiting": False,
                   "producer": True, "worker": True}
    client.close()


@pytest.mark.usefixtures("each_store")
def test_metrics_show_the_stores_figures(dashboard):
    from test_metrics import scrape
    client = dashboard.server.client()
    fill_emails(client)
    samples, _ = scrape(dashboard.http_port)
    assert samples[("current_jobs_ready", ())] == 2
    assert samples[("current_jobs_buried", ())] == 1
    assert samples[("tube_current_jobs_ready", (("tube", "emails"),))] == 2
    assert samples[("tube_current_jobs_buried", (("tube", "emails"),))] == 1
    assert samples[("qserver_tube_paused", (("tube", "emails"),))] == 0
    client.close()


# -- actions, on both stores ---------------------------------------------------------

@pytest.mark.usefixtures("each_store")
def test_each_action_changes_the_server_as_its_command_does(dashboard):
    client = dashboard.server.client()
    ids = fill_emails(client, buried=3, ready=1)
    assert dashboard.post(f"/api/jobs/{ids[0]}/kick") == (200, {"ok": True,
                                                                "reply": "KICKED"})
    assert client.yaml(b"stats-job %d" % ids[0])["state"] == "ready"
    assert dashboard.post(f"/api/jobs/{ids[1]}/retry") == (200, {"ok": True,
                                                                 "reply": "KICKED"})
    assert dashboard.post("/api/tubes/emails/kick", {"bound": 5}) == (
        200, {"ok": True, "reply": "KICKED 1", "kicked": 1})
    assert dashboard.post(f"/api/jobs/{ids[3]}/delete") == (200, {"ok": True,
                                                                  "reply": "DELETED"})
    assert client.cmd(b"peek %d" % ids[3]) == b"NOT_FOUND\r\n"
    assert dashboard.post(f"/api/jobs/{ids[3]}/delete") == (404, {"error": "NOT_FOUND"})
    assert dashboard.post("/api/tubes/emails/pause", {"delay": 100}) == (
        200, {"ok": True, "reply": "PAUSED"})
    assert client.yaml(b"stats-tube emails")["pause"] == "100"
    assert dashboard.post("/api/tubes/emails/pause", {"delay": 0})[0] == 200
    assert client.yaml(b"stats-tube emails")["pause"] == "0"
    assert dashboard.post("/api/tubes/emails/policy",
                          {"name": "max-attempts", "value": 3}) == (
        200, {"ok": True, "reply": "CONFIGURED"})
    assert dashboard.get("/api/tubes/emails")[1]["policy"]["max-attempts"] == 3
    assert dashboard.post("/api/tubes/emails/policy", {"name": "nope", "value": "1"}) == (
        400, {"error": "BAD_FORMAT"})
    assert dashboard.post("/api/tubes/emails/flush") == (
        200, {"ok": True, "reply": "FLUSHED 3", "flushed": 3})
    assert client.yaml(b"stats-tube emails")["current-jobs-ready"] == "0"
    assert dashboard.post("/api/tubes/nosuch/pause", {"delay": 1}) == (
        404, {"error": "NOT_FOUND"})
    client.close()


# -- guards --------------------------------------------------------------------------

ACTIONS = ("/api/jobs/1/kick", "/api/jobs/1/retry", "/api/jobs/1/delete",
           "/api/tubes/emails/kick", "/api/tubes/emails/pause", "/api/tubes/emails/flush",
           "/api/tubes/emails/policy")


def test_actions_are_post_only(dashboard):
    client = dashboard.server.client()
    fill_emails(client)
    for path in ACTIONS:
        status, headers, body = dashboard.request("GET", path)
        assert (status, json.loads(body), headers["Allow"]) == (
            405, {"error": "use POST"}, "POST"), path
    assert client.yaml(b"stats-job 1")["state"] == "buried"
    assert client.yaml(b"stats-tube emails")["current-jobs-ready"] == "2"
    client.close()


def test_cross_origin_actions_are_refused_and_change_nothing(dashboard):
    client = dashboard.server.client()
    fill_emails(client)
    refused = (403, {"error": "cross-origin request refused"})
    for path in ACTIONS:
        assert dashboard.post(path, origin="http://evil.example") == refused, path
        assert dashboard.post(path, origin=None) == refused, path
        assert dashboard.post(path, origin="null") == refused, path
        assert dashboard.post(path, headers={"Sec-Fetch-Site": "cross-site"}) == refused
        assert dashboard.post(path, origin=None,
                              headers={"Sec-Fetch-Site": "same-site"}) == refused
    assert client.yaml(b"stats-job 1")["state"] == "buried"
    assert client.yaml(b"stats-tube emails")["current-jobs-ready"] == "2"
    # Sec-Fetch-Site alone is enough (a browser that sends no Origin).
    assert dashboard.post("/api/jobs/1/kick", origin=None,
                          headers={"Sec-Fetch-Site": "same-origin"})[0] == 200
    client.close()


def test_read_only_refuses_every_action():
    board = Dashboard("--http-read-only")
    try:
        client = board.server.client()
        fill_emails(client)
        assert board.get("/api/overview")[1]["node"]["read_only"] is True
        for path in ACTIONS:
            assert board.post(path, {"bound": 1, "delay": 1}) == (
                403, {"error": "read-only dashboard"}), path
        assert client.yaml(b"stats-job 1")["state"] == "buried"
        assert client.yaml(b"stats-tube emails")["current-jobs-ready"] == "2"
        client.close()
    finally:
        board.stop()


def test_auth_file_basic_and_bearer(tmp_path):
    from qserver.http.auth import hash_password, hash_token
    auth = tmp_path / "auth"
    auth.write_text(f"# dashboard users\nuser admin {hash_password('s3cret', 1000)}\n"
                    f"token {hash_token('tok-123')}\n")
    board = Dashboard("--http-auth", str(auth))
    try:
        status, headers, _ = board.request("GET", "/api/overview")
        assert status == 401 and headers["WWW-Authenticate"].startswith("Basic ")
        assert board.request("GET", "/metrics")[0] == 401
        assert board.request("GET", "/health")[:3:2] == (200, b"ok\n")
        basic = "Basic " + base64.b64encode(b"admin:s3cret").decode()
        assert board.get("/api/overview", {"Authorization": basic})[0] == 200
        assert board.get("/api/overview", {"Authorization": basic})[0] == 200   # remembered
        wrong = "Basic " + base64.b64encode(b"admin:nope").decode()
        assert board.request("GET", "/api/overview", headers={"Authorization": wrong})[0] \
            == 401
        assert board.get("/api/overview", {"Authorization": "Bearer tok-123"})[0] == 200
        assert board.request("GET", "/", headers={"Authorization": "Bearer bad"})[0] == 401
        assert board.post("/api/tubes/x/flush", headers={"Authorization": "Bearer tok-123"}
                          ) == (200, {"ok": True, "reply": "FLUSHED 0", "flushed": 0})
        assert board.request("POST", "/api/tubes/x/flush",
                             headers={"Origin": board.origin})[0] == 401
    finally:
        board.stop()


@pytest.mark.parametrize("content", ["", "user admin plaintext\n", "token abc\n"])
def test_a_bad_auth_file_is_a_usage_error(tmp_path, content):
    auth = tmp_path / "auth"
    auth.write_text(content)
    result = subprocess.run(qserver_argv("-p", str(free_port()), "--http",
                                         f"127.0.0.1:{free_port()}", "--http-auth",
                                         str(auth)), capture_output=True, text=True,
                            timeout=WAIT)
    assert result.returncode == EXIT_USAGE and "--http-auth" in result.stderr


def test_http_flags_without_a_listener_are_a_usage_error():
    result = subprocess.run(qserver_argv("--http-read-only"), capture_output=True,
                            text=True, timeout=WAIT)
    assert result.returncode == EXIT_USAGE and "need --http" in result.stderr


# -- bad requests --------------------------------------------------------------------

def test_bad_requests_get_clear_errors(dashboard):
    assert dashboard.get("/api/tubes/bad%20name") == (400, {"error": "bad tube name"})
    assert dashboard.get("/api/tubes/-x/jobs") == (400, {"error": "bad tube name"})
    assert dashboard.get("/api/jobs/abc") == (400, {"error": "bad job id"})
    assert dashboard.get("/api/jobs/0") == (400, {"error": "bad job id"})
    assert dashboard.get("/api/nope") == (404, {"error": "no such API path"})
    assert dashboard.get("/api/tubes/x/jobs?state=gone") == (
        400, {"error": "bad state or cursor"})
    assert dashboard.get("/api/tubes/x/jobs?limit=0") == (
        400, {"error": "limit must be a whole number from 1 to 100"})
    assert dashboard.get("/api/tubes/x/jobs?cursor=zz") == (400, {"error": "BAD_FORMAT"})
    assert dashboard.post("/api/tubes/x/kick", {"bound": 0}) == (
        400, {"error": "bound must be a whole number from 1 to 1000000"})
    assert dashboard.post("/api/tubes/x/pause", {"delay": "soon"})[0] == 400
    status, _, body = dashboard.request("POST", "/api/tubes/x/flush", b"{not json",
                                        {"Origin": dashboard.origin})
    assert (status, json.loads(body)) == (400, {"error": "the body is not JSON"})
    # injected lines cannot reach the protocol
    assert dashboard.post("/api/tubes/x/policy",
                          {"name": "retain", "value": "1\r\nflush-tube x"})[0] == 400
    assert dashboard.request("GET", "/static/../api.py")[0] == 404
    assert dashboard.request("GET", "/static/nope.js")[0] == 404
    assert dashboard.request("DELETE", "/")[0] == 405


def test_oversized_and_malformed_requests_are_refused_and_the_server_lives_on(dashboard):
    port = dashboard.http_port
    cases = [
        (b"POST /api/tubes/x/flush HTTP/1.1\r\nContent-Length: 999999\r\n\r\n", b" 413 "),
        (b"GET /" + b"a" * 20000, b" 400 "),
        (b"garbage\r\n\r\n", b" 400 "),
        (b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", b" 400 "),
        (b"POST /api/tubes/x/flush HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
         b" 411 "),
    ]
    for request, status in cases:
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
            sock.sendall(request)
            assert status in sock.recv(200).split(b"\r\n")[0] + b" ", request[:40]
    client = dashboard.server.client()
    assert client.cmd(b"list-tube-used") == b"USING default\r\n"
    assert dashboard.get("/api/overview")[0] == 200
    client.close()
