"""The lifecycle extensions' counters on /metrics (protocol.md, "stats-ext"): the
same figures as stats-ext, after real commands, in strict Prometheus text format."""

from test_metrics import get, parse_metrics, served  # noqa: F401 (a fixture)


def test_lifecycle_counters_after_commands(served):
    server, mport = served
    c = server.client()
    assert c.cmd(b"config-tube jobs max-attempts 2") == b"CONFIGURED\r\n"
    assert c.cmd(b"config-tube jobs retain 60") == b"CONFIGURED\r\n"
    assert c.cmd(b"use jobs") == b"USING jobs\r\n"
    assert c.cmd(b"watch jobs") == b"WATCHING 2\r\n"
    assert c.cmd(b"put 0 0 60 1\r\na") == b"INSERTED 1\r\n"
    assert c.cmd(b"put 0 0 60 1\r\nb") == b"INSERTED 2\r\n"
    for expected in (b"RETRYING 0\r\n", b"BURIED\r\n"):
        assert c.cmd(b"reserve-job 1") == b"RESERVED 1 1\r\na\r\n"
        assert c.cmd(b"fail 1 3\r\nbad") == expected
    assert c.cmd(b"reserve-job 2") == b"RESERVED 2 1\r\nb\r\n"
    assert c.cmd(b"complete 2 2\r\nok") == b"COMPLETED\r\n"
    ext = c.yaml(b"stats-ext")

    status, _, body = get(mport, "/metrics")
    assert status == 200
    samples, types = parse_metrics(body)
    expected = {
        "qserver_job_failures_total": 2, "qserver_job_retries_total": 1,
        "qserver_job_dead_letters_total": 1, "qserver_job_completions_total": 1,
        "qserver_current_retained": 1, "qserver_configured_tubes": 1,
        "qserver_cmd_fail_total": 2, "qserver_cmd_complete_total": 1,
        "qserver_cmd_config_tube_total": 2,
    }
    for name, value in expected.items():
        assert samples[(name, ())] == value, name
    assert types["qserver_current_retained"] == "gauge"
    assert types["qserver_job_failures_total"] == "counter"
    # the same figures as stats-ext
    assert ext["job-failures"] == "2" and ext["current-retained"] == "1"
    per_tube = {"failures": 2, "retries": 1, "dead_letters": 1, "completions": 1}
    for field, value in per_tube.items():
        assert samples[(f"qserver_tube_{field}_total", (("tube", "jobs"),))] == value


def test_held_and_cancelled_jobs_per_tube(served):
    server, mport = served
    c = server.client()
    assert c.cmd(b"use locks") == b"USING locks\r\n"
    assert c.cmd(b"watch locks") == b"WATCHING 2\r\n"
    for _ in range(3):
        assert c.cmd(b"put-ex 0 0 60 1 lock=k tag=t\r\nx").startswith(b"INSERTED")
    assert c.cmd(b"reserve-with-timeout 0") == b"RESERVED 1 1\r\nx\r\n"
    assert c.cmd(b"reserve-with-timeout 0") == b"TIMED_OUT\r\n"      # 2 and 3 held
    status, _, body = get(mport, "/metrics")
    samples, types = parse_metrics(body)
    assert samples[("qserver_tube_held", (("tube", "locks"),))] == 2
    assert types["qserver_tube_held"] == "gauge"
    assert c.cmd(b"cancel-tag t") == b"CANCELLED 2 1\r\n"
    samples, _ = parse_metrics(get(mport, "/metrics")[2])
    assert ("qserver_tube_held", (("tube", "locks"),)) not in samples
    assert samples[("qserver_tube_cancelled", (("tube", "locks"),))] == 1
    # The flag goes with the job: once it is deleted nothing is counted.
    assert c.cmd(b"delete 1") == b"DELETED\r\n"
    samples, _ = parse_metrics(get(mport, "/metrics")[2])
    assert ("qserver_tube_cancelled", (("tube", "locks"),)) not in samples
