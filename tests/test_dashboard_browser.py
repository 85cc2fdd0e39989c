"""The dashboard in a real browser: Debian's chromium, headless, driven by selenium
through chromedriver, against a real qserver started with --http.

What is proven: the overview shows the tubes and counts a client just created and
follows them live; a buried job is found by paging (Next page) and kicked from the
page, and the server state changes (checked over the wire); a cross-origin POST
(fetch and a form) is refused and changes nothing; every view runs without console
errors; a read-only dashboard shows no actions and its API refuses a POST from the
page; tube actions (kick N, pause, flush, policy) ask first where they destroy and
do nothing when dismissed; a job's page retries, kicks and deletes it.
The screenshots in tests/screenshots are taken here: with QSERVER_UPDATE_SCREENSHOTS=1
they are written there, after two minutes of traffic for the rate charts; otherwise
into tmp_path at once.

Every wait is bounded (WebDriverWait, UI_WAIT); nothing asserts a duration. Runs on
the store QSERVER_TEST_STORE names, like the rest of the suite. The module skips,
saying why, only when chromium, chromedriver or selenium is missing.
"""

import http.server
import json
import os
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from conftest import WAIT, free_port, start_qserver, wait_for_port

try:
    from selenium import webdriver
    from selenium.common.exceptions import (NoAlertPresentException, NoSuchElementException,
                                            StaleElementReferenceException)
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:                                  # pragma: no cover - depends on the host
    webdriver = None

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def _missing() -> str:
    missing = []
    if webdriver is None:
        missing.append("selenium (pip install selenium)")
    if CHROMIUM is None:
        missing.append("chromium (apt-get install -y chromium)")
    if CHROMEDRIVER is None:
        missing.append("chromedriver (apt-get install -y chromium-driver)")
    return ", ".join(missing)


pytestmark = pytest.mark.skipif(bool(_missing()),
                                reason=f"no browser to drive: missing {_missing()}")

UI_WAIT = 20.0          # bound of every wait on the page (it polls every 1.5 s)
SCREENSHOTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "screenshots")


# -- the server and the browser ------------------------------------------------------

class Dashboard:
    """A qserver with its HTTP listener; `url` is the dashboard's address."""

    def __init__(self, *extra):
        self.http_port = free_port()
        self.server = start_qserver("--http", f"127.0.0.1:{self.http_port}", *extra)
        try:
            wait_for_port(self.http_port, self.server.proc)
        except BaseException:
            self.server.stop()
            raise
        self.origin = f"http://127.0.0.1:{self.http_port}"
        self.url = self.origin + "/"
        self.clients = []

    def client(self):
        c = self.server.client()
        self.clients.append(c)
        return c

    def stop(self):
        for c in self.clients:
            c.close()
        self.server.stop()


@pytest.fixture
def dash():
    d = Dashboard()
    yield d
    d.stop()


@pytest.fixture
def readonly_dash():
    d = Dashboard("--http-read-only")
    yield d
    d.stop()


@pytest.fixture
def browser(tmp_path, monkeypatch):
    monkeypatch.setenv("SE_OFFLINE", "1")        # never Selenium Manager: no network
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                f"--user-data-dir={tmp_path / 'chromium-profile'}",
                "--window-size=1280,800", "--no-first-run", "--no-default-browser-check",
                "--disable-extensions", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--lang=en-US",
                "--force-device-scale-factor=1", "--hide-scrollbars"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_script_timeout(UI_WAIT)
    try:
        yield driver
    finally:
        driver.quit()


# -- small helpers -------------------------------------------------------------------

def wait(driver, condition, what: str):
    """Wait (bounded) until condition(driver) is truthy; elements that vanish or are
    replaced while the page refreshes only mean "not yet"."""
    return WebDriverWait(driver, UI_WAIT, poll_frequency=0.05,
                         ignored_exceptions=(NoSuchElementException,
                                             StaleElementReferenceException)
                         ).until(condition, message=f"waited {UI_WAIT}s for {what}")


def text(driver, css: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, css).text


def present(driver, css: str) -> bool:
    return bool(driver.find_elements(By.CSS_SELECTOR, css))


def click(driver, css: str, what: str):
    """Click the element css names once it is there and enabled (retried if a
    refresh replaced it between finding and clicking)."""
    def attempt(d):
        el = d.find_element(By.CSS_SELECTOR, css)
        if not (el.is_displayed() and el.is_enabled()):
            return False
        el.click()
        return True
    wait(driver, attempt, f"to click {what} ({css})")


def _confirm_opened(driver, expected: str = None):
    """The confirm() the click opened (bounded wait for it), its text checked."""
    alert = WebDriverWait(driver, UI_WAIT, ignored_exceptions=(NoAlertPresentException,)
                          ).until(lambda d: d.switch_to.alert, message="no confirm() opened")
    if expected is not None:
        assert expected in alert.text, alert.text
    return alert


def accept_confirm(driver, expected: str = None):
    _confirm_opened(driver, expected).accept()


def dismiss_confirm(driver, expected: str = None):
    _confirm_opened(driver, expected).dismiss()


def polls(driver) -> int:
    """How many refreshes of the page completed (body[data-loaded])."""
    return int(driver.execute_script("return Number(document.body.dataset.loaded || 0)"))


def wait_polls(driver, n: int = 2):
    """Wait until the page refreshed its view n more times."""
    start = polls(driver)
    wait(driver, lambda d: polls(d) >= start + n, f"{n} refreshes of the page")


def severe(driver) -> list:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def fetch_post(driver, url: str, body: dict = None, **init) -> dict:
    """A fetch() POST run by the page in the browser; its status and JSON body, or
    {"type": ...} for an opaque (no-cors) reply, or {"error": ...}."""
    return driver.execute_async_script("""
        const [url, body, init, done] = arguments;
        fetch(url, Object.assign({method: "POST", body: JSON.stringify(body),
                                  headers: {"Content-Type": "application/json"}}, init))
          .then(async (r) => {
            if (r.type === "opaque") return done({type: r.type});
            let json = null;
            try { json = await r.json(); } catch (e) {}
            done({type: r.type, status: r.status, json: json});
          }, (e) => done({error: String(e)}));
    """, url, body or {}, init)


def put(c, body: bytes, pri: int = 0, delay: int = 0, ttr: int = 60) -> int:
    reply = c.cmd(b"put %d %d %d %d\r\n%s" % (pri, delay, ttr, len(body), body))
    assert reply.startswith(b"INSERTED "), reply
    return int(reply.split()[1])


def put_ex(c, body: bytes, *options: str, pri: int = 0, delay: int = 0, ttr: int = 60) -> int:
    opts = "".join(" " + o for o in options).encode()
    reply = c.cmd(b"put-ex %d %d %d %d%s\r\n%s" % (pri, delay, ttr, len(body), opts, body))
    assert reply.startswith(b"INSERTED "), reply
    return int(reply.split()[1])


def with_body(c, line: bytes, body: bytes) -> bytes:
    """A command with a body (`fail`, `complete`, `progress`): its reply line."""
    return c.cmd(b"%s %d\r\n%s" % (line, len(body), body))


def use_and_watch(c, tube: str):
    assert c.cmd(b"use " + tube.encode()).startswith(b"USING")
    assert c.cmd(b"watch " + tube.encode()).startswith(b"WATCHING")
    c.cmd(b"ignore default")


def reserve(c) -> int:
    reply = c.cmd(b"reserve-with-timeout 0")
    assert reply.startswith(b"RESERVED "), reply
    return int(reply.split()[1])


def bury_next(c) -> int:
    job = reserve(c)
    assert c.cmd(b"bury %d 0" % job) == b"BURIED\r\n"
    return job


def job_state(c, job: int) -> str:
    return c.yaml(b"stats-job %d" % job)["state"]


def tube_count(c, tube: str, field: str) -> int:
    return int(c.yaml(b"stats-tube " + tube.encode())[field])


def wait_wire(what: str, probe, bound: float = UI_WAIT):
    """Poll the server over the protocol until probe() is truthy (bounded)."""
    deadline = time.monotonic() + bound
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {bound}s over the wire for {what}")
        time.sleep(0.02)


def row_cell(driver, tube: str, cls: str) -> str:
    return text(driver, f'tr[data-tube="{tube}"] td.{cls}')


def has_job(driver, job) -> bool:
    return present(driver, f'tr[data-job="{job}"]')


def info_field(driver, name: str) -> str:
    """A job-info field as the job page shows it."""
    return text(driver, f'#job-info tr[data-field="{name}"] td')


def page_no(driver) -> str:
    return text(driver, "#page-no")


# -- a. the overview -------------------------------------------------------------------

@pytest.mark.usefixtures("each_store")     # in memory, then on Redis
def test_overview_shows_the_tubes_and_counts_a_client_just_created(dash, browser):
    c = dash.client()
    use_and_watch(c, "emails")
    for i in range(3):
        put(c, b"mail %d" % i)
    buried = bury_next(c)

    browser.get(dash.url)
    row = 'tr[data-tube="emails"]'
    wait(browser, lambda d: row_cell(d, "emails", "ready") == "2"
         and row_cell(d, "emails", "buried") == "1", "emails: ready 2, buried 1")
    assert row_cell(browser, "emails", "name") == "emails"
    assert row_cell(browser, "emails", "reserved") == "0"
    assert row_cell(browser, "emails", "total") == "3"
    assert present(browser, 'tr[data-tube="default"]')
    link = browser.find_element(By.CSS_SELECTOR, f"{row} td.name a")
    assert link.get_attribute("href") == dash.url + "#/tube/emails"
    # the node line and the cards come from the same API
    pid = f"pid {dash.server.proc.pid}"
    wait(browser, lambda d: text(d, "#node .pid") == pid, "the node's pid")
    buried_card = '.card[data-stat="current-jobs-buried"] .card-value'
    wait(browser, lambda d: text(d, buried_card) == "1",
         "the buried card")
    assert not browser.find_element(By.ID, "ro-badge").is_displayed()

    # live: what a client does next shows up without reloading the page
    put(c, b"mail 3")
    assert c.cmd(b"kick-job %d" % buried) == b"KICKED\r\n"
    wait(browser, lambda d: row_cell(d, "emails", "ready") == "4"
         and row_cell(d, "emails", "buried") == "0",
         "emails: ready 4, buried 0 after the kick")
    c.cmd(b"use fresh-tube")
    wait(browser, lambda d: present(d, 'tr[data-tube="fresh-tube"]'), "the new tube's row")


# -- b. paging, then a kick from the page -----------------------------------------------

@pytest.mark.usefixtures("each_store")     # in memory, then on Redis
def test_a_buried_job_is_found_through_paging_and_kicked_from_the_page(dash, browser):
    c = dash.client()
    use_and_watch(c, "paging")
    for i in range(45):
        put(c, b"job %d" % i)
    order = [bury_next(c) for _ in range(45)]      # the order kick (and list-jobs) takes them
    wanted = order[43]                             # 44th: on page 3 of 20 per page

    browser.get(dash.url + "#/tube/paging?state=buried")
    wait(browser, lambda d: has_job(d, order[0]) and page_no(d) == "1",
         "page 1 of the buried jobs")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#jobs tbody tr")) == 20
    assert not has_job(browser, wanted)

    click(browser, "#next-page", "Next page")
    wait(browser, lambda d: page_no(d) == "2" and has_job(d, order[20]),
         "page 2")
    assert not has_job(browser, order[0])
    assert not has_job(browser, wanted)

    click(browser, "#next-page", "Next page")
    row = f'tr[data-job="{wanted}"]'
    wait(browser, lambda d: page_no(d) == "3" and present(d, row), "page 3 with the job")
    ids = [int(tr.get_attribute("data-job"))
           for tr in browser.find_elements(By.CSS_SELECTOR, "#jobs tbody tr")]
    assert ids == order[40:]
    assert text(browser, f"{row} td.state") == "buried"
    assert text(browser, f"{row} td.preview") == "job 43"
    wait(browser, lambda d: not d.find_element(By.ID, "next-page").is_enabled(),
         "Next page disabled on the last page")
    assert job_state(c, wanted) == "buried"

    click(browser, f"{row} button.kick", "the job's kick button")
    try:
        browser.switch_to.alert.accept()           # the page may ask first
    except NoAlertPresentException:
        pass
    wait_wire(f"job {wanted} ready", lambda: job_state(c, wanted) == "ready")
    wait(browser, lambda d: "KICKED" in text(d, "#status"), "the reply in the status bar")
    # the page follows: the job left the buried list, its neighbours stayed
    wait(browser, lambda d: not present(d, row) and has_job(d, order[44]),
         "the kicked job gone from the buried page")
    assert tube_count(c, "paging", "current-jobs-buried") == 44
    assert tube_count(c, "paging", "current-jobs-ready") == 1

    click(browser, "#first-page", "First page")
    wait(browser, lambda d: page_no(d) == "1" and has_job(d, order[0]),
         "back on page 1")


# -- c. cross-origin POSTs are refused ---------------------------------------------------

class _OtherSite(http.server.ThreadingHTTPServer):
    daemon_threads = True


def _other_site(page: bytes):
    """A tiny HTTP server on another port (another origin) serving `page` at /."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args):
            pass

    server = _OtherSite(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


def raw_post(url: str, headers: dict = None, body: bytes = b"{}"):
    """A POST by urllib with exactly these headers (no Origin unless given); the
    status and the decoded JSON reply."""
    headers = {"Content-Type": "application/json", **(headers or {})}
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=WAIT) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_a_cross_origin_post_is_refused_and_changes_nothing(dash, browser):
    c = dash.client()
    use_and_watch(c, "x")
    for i in range(3):
        put(c, b"keep %d" % i)
    buried = bury_next(c)
    flush = f"{dash.origin}/api/tubes/x/flush"
    kick = f"{dash.origin}/api/jobs/{buried}/kick"

    page = (b"<!doctype html><title>elsewhere</title>"
            b'<form id="f" method="post" enctype="text/plain" action="%s">' % flush.encode() +
            b'<input name="{&quot;a&quot;:&quot;" value="&quot;}"></form>')
    other, thread = _other_site(page)
    try:
        # another origin on the same host (another port: Sec-Fetch-Site same-site), and
        # another site (localhost: cross-site)
        for host in ("127.0.0.1", "localhost"):
            browser.get(f"http://{host}:{other.server_address[1]}/")
            # a script there: the request reaches the server (the opaque reply proves
            # it was answered) and changes nothing
            assert fetch_post(browser, flush, mode="no-cors") == {"type": "opaque"}, host
            assert fetch_post(browser, kick, mode="no-cors") == {"type": "opaque"}, host
            # with CORS the browser does not even let the page see a reply
            assert "error" in fetch_post(browser, flush), host
            # a classic form POST from there navigates to the refusal
            browser.execute_script("document.getElementById('f').submit()")
            wait(browser, lambda d: d.current_url == flush and "cross-origin request refused"
                 in d.find_element(By.TAG_NAME, "body").text, f"the refusal of {host}'s form")
    finally:
        other.shutdown()
        other.server_close()
        thread.join(WAIT)

    assert tube_count(c, "x", "current-jobs-ready") == 2
    assert job_state(c, buried) == "buried"

    # scripts outside a browser: no Origin and no Sec-Fetch-Site, a foreign Origin,
    # Sec-Fetch-Site other than same-origin: all refused the same way
    for headers in ({}, {"Origin": "http://evil.example"}, {"Origin": "null"},
                    {"Origin": f"http://127.0.0.1:{dash.http_port + 1}"},
                    {"Sec-Fetch-Site": "same-site"}, {"Sec-Fetch-Site": "cross-site"}):
        refused = (403, {"error": "cross-origin request refused"})
        assert raw_post(flush, headers) == refused, headers
        assert raw_post(kick, headers) == refused, headers
    # and never by GET
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(flush, timeout=WAIT)
    assert refused.value.code == 405
    assert tube_count(c, "x", "current-jobs-ready") == 2
    assert job_state(c, buried) == "buried"

    # the same POST from the dashboard's own origin acts: the refusals were the check
    browser.get(dash.url)
    wait(browser, lambda d: present(d, 'tr[data-tube="x"]'), "the overview")
    reply = fetch_post(browser, "api/tubes/x/flush")
    assert reply["status"] == 200 and reply["json"]["ok"] is True, reply
    assert reply["json"]["flushed"] == 3, reply
    assert tube_count(c, "x", "current-jobs-ready") == 0
    assert tube_count(c, "x", "current-jobs-buried") == 0


# -- d. no console errors, on every view --------------------------------------------------

def _fill_varied(c) -> dict:
    """Jobs in every state a page shows, odd bodies included; their ids by role."""
    jobs = {}
    assert c.cmd(b"config-tube emails retain 3600") == b"CONFIGURED\r\n"
    assert c.cmd(b"config-tube emails max-attempts 2") == b"CONFIGURED\r\n"
    assert c.cmd(b"config-tube emails backoff fixed:3600") == b"CONFIGURED\r\n"
    use_and_watch(c, "emails")
    jobs["ready"] = put_ex(c, b'{"to": "<b>ann</b>@example.com", "n": 1}', "key=welcome-ann",
                           "tag=batch-7", "tag=welcome", pri=100)
    jobs["binary"] = put(c, bytes(range(256)) * 2, pri=200)
    jobs["delayed"] = put(c, b"later", delay=3600)
    jobs["done"] = put(c, b"finish me", pri=1)
    jobs["failing"] = put(c, b"fail me", pri=2)
    jobs["bury"] = put(c, b"bury me", pri=3)
    jobs["reserved"] = put(c, b"hold me", pri=4)

    assert reserve(c) == jobs["done"]
    assert with_body(c, b"progress %d" % jobs["done"], b"half done") == b"TOUCHED\r\n"
    result = b"ok <script>alert(1)</script>"
    assert with_body(c, b"complete %d" % jobs["done"], result) == b"COMPLETED\r\n"
    assert reserve(c) == jobs["failing"]
    reason = b"smtp said \"no\" \xe9"
    assert with_body(c, b"fail %d" % jobs["failing"], reason).startswith(b"RETRYING")
    assert reserve(c) == jobs["bury"]
    assert c.cmd(b"bury %d 0" % jobs["bury"]) == b"BURIED\r\n"
    assert reserve(c) == jobs["reserved"]
    c.cmd(b"use odd(name)+$;_.-x")
    put(c, b"odd")
    c.cmd(b"use default")
    return jobs


@pytest.mark.usefixtures("each_store")     # in memory, then on Redis
def test_the_page_has_no_console_errors_on_any_view(dash, browser):
    c = dash.client()
    jobs = _fill_varied(c)

    def visit(fragment: str, ready, what: str):
        browser.get(dash.url + fragment)
        wait(browser, lambda d: d.execute_script("return document.body.dataset.hash") ==
             d.execute_script("return location.hash") and polls(d) >= 2 and ready(d),
             f"{what}, refreshed twice")
        errors = severe(browser)
        assert errors == [], f"console errors on {fragment or '/'}: {errors}"

    browser.get(dash.url)
    visit("", lambda d: row_cell(d, "emails", "buried") == "1", "the overview")
    visit("#/", lambda d: present(d, 'tr[data-tube="odd(name)+$;_.-x"]'), "the odd tube's row")
    click(browser, 'tr[data-tube="odd(name)+$;_.-x"] td.name a', "the odd tube's link")
    wait(browser, lambda d: text(d, "#tube-name") == "odd(name)+$;_.-x"
         and present(d, "#jobs tbody tr"), "the odd tube's page")
    assert severe(browser) == []
    for state in ("ready", "delayed", "reserved", "buried", "held", "completed", "dead",
                  "all"):
        visit(f"#/tube/emails?state={state}", lambda d: present(d, "#jobs tbody tr")
              or d.find_element(By.ID, "no-jobs").is_displayed(), f"the {state} tab")
    # the preview escapes: the tag-like body is text in the cell, not markup
    visit("#/tube/emails?state=ready", lambda d: has_job(d, jobs["ready"]), "ready")
    assert text(browser, f'tr[data-job="{jobs["ready"]}"] td.preview') == \
        '{"to": "<b>ann</b>@example.com", "n": 1}'
    assert not present(browser, "#jobs td.preview b")
    assert text(browser, f'tr[data-job="{jobs["ready"]}"] td.key') == "welcome-ann"
    assert text(browser, f'tr[data-job="{jobs["ready"]}"] td.tags') == "batch-7, welcome"
    binary = text(browser, f'tr[data-job="{jobs["binary"]}"] td.preview')
    assert binary.startswith("00 01 02 03") and binary.endswith("…"), binary   # cut, marked
    assert present(browser, f'tr[data-job="{jobs["binary"]}"] td.preview .hex')
    for role in ("ready", "binary", "delayed", "done", "failing", "bury", "reserved"):
        visit(f"#/job/{jobs[role]}", lambda d: info_field(d, "id") ==
              str(jobs[role]), f"the page of job {role}")
    # what the job pages showed
    visit(f"#/job/{jobs['done']}", lambda d: info_field(d, "state") ==
          "completed", "the completed job")
    assert text(browser, "#progress") == "half done"
    assert "<script>alert(1)</script>" in text(browser, "#result")
    visit(f"#/job/{jobs['failing']}", lambda d: present(d, "#failures .reason"),
          "the failures")
    assert text(browser, "#failures .reason") == 'smtp said "no" \u00e9'
    visit("#/dead", lambda d: present(d, f'.dead-section tr[data-job="{jobs["bury"]}"]')
          and present(d, f'.dead-section tr[data-job="{jobs["done"]}"]'),
          "the dead letters page")
    visit("#/server", lambda d: present(d, "#connections tbody tr")
          and present(d, '#server-stats tr[data-field="current-connections"]'),
          "the server page")


# -- e. read-only ----------------------------------------------------------------------

def test_a_read_only_dashboard_shows_no_actions_and_refuses_posts(readonly_dash, browser):
    dash = readonly_dash
    c = dash.client()
    use_and_watch(c, "emails")
    put(c, b"a")
    put(c, b"b")
    buried = bury_next(c)

    browser.get(dash.url)
    wait(browser, lambda d: row_cell(d, "emails", "buried") == "1", "the overview")
    assert browser.find_element(By.ID, "ro-badge").is_displayed()
    assert browser.find_elements(By.CSS_SELECTOR, "button") == []
    assert browser.find_elements(By.CSS_SELECTOR, "input") == []

    browser.get(dash.url + "#/tube/emails?state=buried")
    wait(browser, lambda d: has_job(d, buried), "the buried job's row")
    wait_polls(browser, 1)
    assert browser.find_elements(By.CSS_SELECTOR, "button[data-action], form, input") == []
    assert browser.find_elements(By.CSS_SELECTOR, "#jobs button, #tube-actions button") == []

    browser.get(dash.url + f"#/job/{buried}")
    wait(browser, lambda d: info_field(d, "state") == "buried", "the job page")
    assert browser.find_elements(By.CSS_SELECTOR, "button") == []

    # the page's own origin, yet refused: every action
    for path, body in ((f"jobs/{buried}/kick", {}), (f"jobs/{buried}/retry", {}),
                       (f"jobs/{buried}/delete", {}), ("tubes/emails/kick", {"bound": 5}),
                       ("tubes/emails/pause", {"delay": 60}), ("tubes/emails/flush", {}),
                       ("tubes/emails/policy", {"name": "retain", "value": "60"})):
        reply = fetch_post(browser, "api/" + path, body)
        assert (reply["status"], reply["json"]) == (403, {"error": "read-only dashboard"}), \
            path
    assert job_state(c, buried) == "buried"
    assert tube_count(c, "emails", "current-jobs-ready") == 1
    assert tube_count(c, "emails", "pause") == 0
    assert c.yaml(b"config-tube emails")["retain"] == "0"


# -- g. tube actions from the overview: confirm first ----------------------------------

def test_tube_actions_ask_first_and_act(dash, browser):
    c = dash.client()
    use_and_watch(c, "work")
    for i in range(6):
        put(c, b"w %d" % i)
    for _ in range(6):
        bury_next(c)

    browser.get(dash.url)
    row = 'tr[data-tube="work"]'
    wait(browser, lambda d: row_cell(d, "work", "buried") == "6", "work: buried 6")
    box = browser.find_element(By.CSS_SELECTOR, f"{row} input.kick-n")
    box.clear()
    box.send_keys("4")
    click(browser, f"{row} button.kick", "kick N")
    dismiss_confirm(browser, "Kick up to 4")
    wait_polls(browser, 1)
    assert tube_count(c, "work", "current-jobs-buried") == 6       # dismissed: nothing
    click(browser, f"{row} button.kick", "kick N")
    accept_confirm(browser, "Kick up to 4")
    wait_wire("4 kicked", lambda: tube_count(c, "work", "current-jobs-buried") == 2)
    wait(browser, lambda d: row_cell(d, "work", "ready") == "4"
         and "KICKED 4" in text(d, "#status"),
         "the row and the status after the kick")
    # the input kept its value through the refreshes
    kick_n = browser.find_element(By.CSS_SELECTOR, f"{row} input.kick-n")
    assert kick_n.get_attribute("value") == "4"

    click(browser, f'{row} button[data-action="pause"]', "pause")
    prompt = WebDriverWait(browser, UI_WAIT, ignored_exceptions=(NoAlertPresentException,)
                           ).until(lambda d: d.switch_to.alert, message="no prompt()")
    prompt.send_keys("600")
    prompt.accept()
    wait_wire("paused", lambda: tube_count(c, "work", "pause") == 600)
    wait(browser, lambda d: row_cell(d, "work", "paused").endswith("left"), "the paused cell")
    click(browser, f'{row} button[data-action="unpause"]', "unpause")
    wait_wire("unpaused", lambda: tube_count(c, "work", "pause") == 0)

    click(browser, f'{row} button[data-action="flush"]', "flush")
    dismiss_confirm(browser, "Flush tube work")
    wait_polls(browser, 1)
    assert tube_count(c, "work", "current-jobs-ready") == 4
    click(browser, f'{row} button[data-action="flush"]', "flush")
    accept_confirm(browser, "Flush tube work")
    wait_wire("flushed", lambda: tube_count(c, "work", "current-jobs-ready") == 0
              and tube_count(c, "work", "current-jobs-buried") == 0)
    wait(browser, lambda d: "FLUSHED 6" in text(d, "#status"), "the flush reply")

    # a policy from the tube page
    browser.get(dash.url + "#/tube/work")
    wait(browser, lambda d: present(d, '#tube-policy tr[data-field="max-attempts"]'),
         "the policy")
    browser.find_element(By.ID, "policy-value").send_keys("3")
    browser.find_element(By.CSS_SELECTOR, '#policy-name option[value="max-attempts"]').click()
    click(browser, '#policy-form button[type="submit"]', "set policy")
    wait_wire("max-attempts 3", lambda: c.yaml(b"config-tube work")["max-attempts"] == "3")
    wait(browser, lambda d: text(d, '#tube-policy tr[data-field="max-attempts"] td') == "3",
         "the policy table")


# -- h. a job's page: retry, kick, delete -------------------------------------------

def test_job_page_actions(dash, browser):
    c = dash.client()
    use_and_watch(c, "jobs")
    dead = put(c, b"dead letter")
    doomed = put(c, b"delete me", pri=5)
    later = put(c, b"later", delay=3600)
    assert bury_next(c) == dead
    assert bury_next(c) == doomed
    assert c.cmd(b"kick-job %d" % doomed) == b"KICKED\r\n"

    browser.get(dash.url + f"#/job/{dead}")
    wait(browser, lambda d: info_field(d, "state") == "buried", "the buried job")
    assert text(browser, "#body pre") == "dead letter"
    click(browser, '#job-actions button[data-action="retry"]', "retry")
    wait_wire("the dead letter ready", lambda: job_state(c, dead) == "ready")
    wait(browser, lambda d: info_field(d, "state") == "ready"
         and not present(d, '#job-actions button[data-action="retry"]'), "the page following")

    browser.get(dash.url + f"#/job/{later}")
    wait(browser, lambda d: info_field(d, "state") == "delayed", "the delayed job")
    click(browser, '#job-actions button[data-action="kick"]', "kick")
    wait_wire("the delayed job ready", lambda: job_state(c, later) == "ready")

    browser.get(dash.url + f"#/job/{doomed}")
    wait(browser, lambda d: info_field(d, "kicks") == "1", "the kicked job")
    click(browser, '#job-actions button[data-action="delete"]', "delete")
    dismiss_confirm(browser, f"Delete job {doomed}")
    wait_polls(browser, 1)
    assert job_state(c, doomed) == "ready"
    click(browser, '#job-actions button[data-action="delete"]', "delete")
    accept_confirm(browser, f"Delete job {doomed}")
    wait_wire("the job gone", lambda: c.cmd(b"stats-job %d" % doomed) == b"NOT_FOUND\r\n")
    # the page goes back to the job's tube rather than showing a job that is gone
    wait(browser, lambda d: d.execute_script("return location.hash") == "#/tube/jobs"
         and has_job(d, dead) and not has_job(d, doomed),
         "the tube page without the deleted job")
    assert severe(browser) == []


# -- f. screenshots --------------------------------------------------------------------

def _traffic(port: int, stop: threading.Event):
    """Producers and workers at a pace that swings slowly (a sine over a minute),
    with an occasional failure, so the rate charts have a shape."""
    import math
    from conftest import Client
    c = Client(socket.create_connection(("127.0.0.1", port)))
    use_and_watch(c, "images")
    start, owed, failing, step = time.monotonic(), 0.0, 0.0, 0
    try:
        while not stop.is_set():
            step += 1
            elapsed = time.monotonic() - start
            owed += (22 + 16 * math.sin(elapsed * 2 * math.pi / 60)) * 0.2
            failing += (1.2 + math.sin(elapsed * 2 * math.pi / 45)) * 0.2
            for i in range(int(owed)):
                put(c, b"resize img_%06d.jpg" % (step * 100 + i), pri=2048)
            owed -= int(owed)
            while True:
                reply = c.cmd(b"reserve-with-timeout 0")
                if not reply.startswith(b"RESERVED"):
                    break
                job = int(reply.split()[1])
                if failing >= 1:
                    failing -= 1
                    with_body(c, b"fail %d" % job, b"decoder crashed")
                else:
                    c.cmd(b"delete %d" % job)
            stop.wait(0.2)
    finally:
        c.close()


def test_screenshots_of_the_overview_and_a_tube_page(dash, browser, tmp_path):
    update = os.environ.get("QSERVER_UPDATE_SCREENSHOTS") == "1"
    out = SCREENSHOTS if update else str(tmp_path)
    c = dash.client()
    c.cmd(b"config-tube emails retain 3600")
    c.cmd(b"config-tube emails max-attempts 5")
    c.cmd(b"config-tube emails backoff exp:30:600")
    c.cmd(b"config-tube images max-attempts 3")
    c.cmd(b"config-tube images backoff exp:5:300")
    use_and_watch(c, "emails")
    for i, who in enumerate(("ann", "bob", "cy", "dee", "eve", "fay", "gus", "hal", "ivy")):
        put_ex(c, json.dumps({"template": "welcome", "to": f"{who}@example.com",
                              "locale": "en"}).encode(), f"key=welcome-{who}", "tag=signup",
               pri=100 + i, ttr=3600)
    for _ in range(2):
        bury_next(c)                               # ann, bob: dead letters to look at
    job = reserve(c)                               # cy: sent, its result kept
    with_body(c, b"complete %d" % job, b"250 2.0.0 Ok: queued")
    job = reserve(c)                               # dee: failed once, retried later
    with_body(c, b"fail %d" % job, b"SMTP 421 try again later")
    reserve(c)                                     # eve: being sent now
    put_ex(c, b"\x1f\x8b\x08\x00" + bytes(range(60)), "tag=digest", pri=1024, delay=1800,
           ttr=3600)
    use_and_watch(c, "reports")
    for i in range(5):
        put(c, b"report q%d" % i, delay=60 * (i + 1))
    put(c, b"report daily")
    c.cmd(b"pause-tube reports 900")
    use_and_watch(c, "webhooks")
    for i in range(8):
        put(c, b'{"url": "https://example.net/hook", "event": "order.paid", "id": %d}'
            % (7000 + i))
    bury_next(c)
    c.cmd(b"use images")
    for i in range(25):
        put(c, b"resize img_%04d.jpg" % i, pri=2048)
    c.cmd(b"use default")

    stop = threading.Event()
    worker = threading.Thread(target=_traffic, args=(dash.server.port, stop), daemon=True)
    worker.start()
    try:
        # the viewport itself 1280x800 (a window that size has a smaller viewport)
        browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False})
        browser.get(dash.url)
        wait(browser, lambda d: row_cell(d, "emails", "buried") == "2"
             and present(d, 'tr[data-tube="webhooks"]'), "the overview")
        if update:
            # only when making the committed pictures: let the server sample two
            # minutes of traffic so the rate charts have a shape (not a wait for a state)
            time.sleep(120)
        else:
            wait_polls(browser, 1)
        browser.save_screenshot(os.path.join(out, "overview.png"))

        browser.get(dash.url + "#/tube/emails?state=all")
        wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#jobs tbody tr")) == 10,
             "the tube page")
        wait_polls(browser, 1)
        browser.save_screenshot(os.path.join(out, "tube.png"))
    finally:
        stop.set()
        worker.join(WAIT)
    assert severe(browser) == []
    for name in ("overview.png", "tube.png"):
        with open(os.path.join(out, name), "rb") as f:
            head = f.read(24)
        assert head[:8] == b"\x89PNG\r\n\x1a\n"
        size = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
        assert size == (1280, 800), (name, size)
