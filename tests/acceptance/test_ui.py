"""``pg-durable ui`` end to end: the command in a subprocess, driven by headless Chromium
through its chromedriver (selenium), against the test database with a worker running.

A person's session: list the instances, filter them, open one and read its graph, watch the
list and an instance change without reloading, send a signal and cancel from the page; and
what must not happen in a browser: a label that is a script runs nothing, a form posted from
another site changes nothing, a read-only dashboard offers no action.

Skipped, with the reason, where selenium or Chromium and chromedriver are missing (Debian:
``apt-get install chromium chromium-driver``; ``PG_DURABLE_CHROMIUM`` and
``PG_DURABLE_CHROMEDRIVER`` name other binaries).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import psycopg
import pytest

from tests.acceptance.test_cli import cli, cli_env
from tests.fixtures.engine import WorkerThread, wait_for
from tests.fixtures.roles import Roles
from tests.fixtures.sql import one

webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')"
)
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.select import Select  # noqa: E402
from selenium.webdriver.support.wait import WebDriverWait  # noqa: E402

Conn = psycopg.Connection[Any]
XSS_LABEL = "<script>window.__xss = 1</script><img src=x onerror='window.__xss = 2'>"


def _binary(variable: str, *names: str) -> str | None:
    explicit = os.environ.get(variable)
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    """One headless Chromium for the module's tests."""
    chromium = _binary(
        "PG_DURABLE_CHROMIUM", "chromium", "chromium-browser", "google-chrome", "chrome"
    )
    driver = _binary("PG_DURABLE_CHROMEDRIVER", "chromedriver")
    if chromium is None or driver is None:
        pytest.skip(
            "no Chromium and chromedriver found (Debian: apt-get install chromium "
            "chromium-driver; or set PG_DURABLE_CHROMIUM and PG_DURABLE_CHROMEDRIVER)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1000",
    ):
        options.add_argument(argument)
    chrome = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    chrome.set_page_load_timeout(30)
    try:
        yield chrome
    finally:
        chrome.quit()


@pytest.fixture
def dashboard() -> Iterator[Callable[..., str]]:
    """Start ``pg-durable ui --port 0`` as the role of a DSN; its URL (from its first line)."""
    started: list[subprocess.Popen[str]] = []

    def start(dsn: str, *options: str) -> str:
        proc = subprocess.Popen(
            [*cli(), "ui", "--dsn", dsn, "--port", "0", "--refresh", "0.5", *options],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=cli_env(),
        )
        started.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        found = re.search(r"serving (http://127\.0\.0\.1:\d+/) as role ", line)
        if found is None:
            proc.kill()
            _, err = proc.communicate(timeout=10)
            pytest.fail(f"pg-durable ui did not start: {line!r} {err!r}")
        return found.group(1)

    yield start
    for proc in started:
        proc.terminate()
        proc.communicate(timeout=10)


def start(conn: Conn, dsl: str, label: str | None = None) -> str:
    return str(one(conn, f"SELECT df.start({dsl}, %s)", (label,)))


def wait_until(
    browser: WebDriver, condition: Callable[[WebDriver], Any], seconds: float = 20
) -> Any:
    return WebDriverWait(browser, seconds, poll_frequency=0.1).until(condition)


def texts(browser: WebDriver, selector: str) -> list[str]:
    """The text of every element ``selector`` finds, read at once in the page: the live
    refresh replaces elements, so references held across it would go stale."""
    found = browser.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]), e => e.textContent)",
        selector,
    )
    return [str(t) for t in found]


def row_ids(browser: WebDriver) -> list[str]:
    found = browser.execute_script(
        "return Array.from(document.querySelectorAll('tr[data-instance]'), r => r.dataset.instance)"
    )
    return [str(i) for i in found]


def status_badge(browser: WebDriver) -> str:
    """The instance's status, as the page's facts show it."""
    return "".join(texts(browser, "dl.facts .badge"))


def click(browser: WebDriver, selector: str) -> None:
    """Click what ``selector`` finds, again if a refresh replaced it meanwhile."""
    for _ in range(20):
        try:
            browser.find_element(By.CSS_SELECTOR, selector).click()
            return
        except StaleElementReferenceException:
            continue
    pytest.fail(f"{selector} kept going stale")


# -------------------------------------------------------------------------------------------


def test_browse_filter_and_read_a_graph(
    roles: Roles,
    conn: Conn,
    worker: WorkerThread,
    browser: WebDriver,
    dashboard: Callable[..., str],
) -> None:
    alice, bob = roles.create("alice", grant=True), roles.create("bob", grant=True)
    mine = roles.connect(alice)
    done = start(mine, "('SELECT 1 AS a' & 'SELECT 2 AS b') ~> 'SELECT 3 AS c'", "nightly")
    failed = start(mine, "df.retry('SELECT 1 / 0', 2, 0) ~> 'SELECT 2'", "flaky")
    hostile = start(mine, "df.wait_for_signal('go')", XSS_LABEL)
    theirs = start(roles.connect(bob), "'SELECT 1'", "bob's")
    assert wait_for(conn, done) == "completed"
    assert wait_for(conn, failed) == "failed"
    url = dashboard(roles.dsn(alice))

    browser.get(url)
    assert browser.title == "Instances · pg-durable"
    assert sorted(row_ids(browser)) == sorted([done, failed, hostile])  # not bob's
    # The hostile label is text on the page, and ran nothing.
    assert XSS_LABEL in texts(browser, "td.label")
    assert browser.execute_script("return window.__xss === undefined") is True

    Select(browser.find_element(By.NAME, "status")).select_by_value("failed")
    click(browser, "form.filters button[type=submit]")
    wait_until(browser, lambda b: row_ids(b) == [failed])
    assert "status=failed" in browser.current_url

    click(browser, f'tr[data-instance="{failed}"] a')
    wait_until(browser, lambda b: b.title == f"Instance {failed} · pg-durable")
    assert status_badge(browser) == "failed"
    retry = browser.find_element(By.CSS_SELECTOR, '.node[data-type="RETRY"]')
    assert retry.get_attribute("data-status") == "failed"
    assert "attempt 2 of 2" in retry.text
    assert "division by zero" in retry.find_element(By.CSS_SELECTOR, ".error").text
    skipped = browser.find_elements(By.CSS_SELECTOR, '.node[data-status="skipped"]')
    assert [s.find_element(By.CSS_SELECTOR, "pre.sql").text for s in skipped] == ["SELECT 2"]

    browser.get(f"{url}instances/{done}")
    branches = browser.find_elements(By.CSS_SELECTOR, '.node[data-type="JOIN"] > .section')
    assert [b.find_element(By.CSS_SELECTOR, ".section-title").text for b in branches] == [
        "BRANCH 1",  # (text-transform: uppercase)
        "BRANCH 2",
    ]
    statuses = browser.find_elements(By.CSS_SELECTOR, ".node[data-status]")
    assert {s.get_attribute("data-status") for s in statuses} == {"completed"}
    result = browser.find_element(By.CSS_SELECTOR, "details.result")
    result.find_element(By.TAG_NAME, "summary").click()
    assert '"row_count": 1' in result.find_element(By.TAG_NAME, "pre").text

    browser.get(f"{url}instances/{theirs}")
    assert "not found (no such id, or another role's instance)" in browser.page_source
    browser.get(f"{url}instances/{hostile}")
    assert browser.find_element(By.CSS_SELECTOR, "h1 .label").text == XSS_LABEL
    assert browser.execute_script("return window.__xss === undefined") is True
    assert "Read-only" in browser.find_element(By.CSS_SELECTOR, ".read-only").text
    assert browser.find_elements(By.CSS_SELECTOR, "form[method=post]") == []


def test_live_refresh_signal_and_cancel(
    roles: Roles,
    conn: Conn,
    worker: WorkerThread,
    browser: WebDriver,
    dashboard: Callable[..., str],
) -> None:
    alice = roles.create("alice", grant=True)
    mine = roles.connect(alice)
    first = start(mine, "'SELECT 1'", "first")
    url = dashboard(roles.dsn(alice), "--allow-actions")

    # The list follows new instances without a reload.
    browser.get(url)
    wait_until(browser, lambda b: row_ids(b) == [first])
    browser.execute_script("window.__same_page = true")
    waiting = start(
        mine, "'SELECT 1' ~> df.wait_for_signal('approve') |=> 'ok' ~> 'SELECT 2'", "approval"
    )
    wait_until(browser, lambda b: row_ids(b) == [waiting, first])
    assert browser.execute_script("return window.__same_page") is True
    assert browser.find_element(By.ID, "live-state").text.startswith("updated")

    # The instance page: it waits for the signal; the form offers it; sending it finishes the
    # workflow, which the page shows by itself, and the actions go away.
    click(browser, f'tr[data-instance="{waiting}"] a')
    wait_until(
        browser,
        lambda b: b.find_elements(
            By.CSS_SELECTOR, '.node[data-type="SIGNAL"][data-status="running"]'
        ),
    )
    assert browser.find_element(By.NAME, "name").get_attribute("value") == "approve"
    data = browser.find_element(By.NAME, "data")
    data.clear()
    data.send_keys('{"by": "the browser"}')
    browser.find_element(By.CSS_SELECTOR, "form.signal button[type=submit]").click()
    wait_until(browser, lambda b: "notice=signalled" in b.current_url)
    assert "Signal sent." in browser.find_element(By.CSS_SELECTOR, ".notice").text
    wait_until(browser, lambda b: status_badge(b) == "completed")
    wait_until(browser, lambda b: b.find_elements(By.CSS_SELECTOR, ".actions") == [])
    signal_node = browser.find_element(By.CSS_SELECTOR, '.node[data-type="SIGNAL"]')
    signal_node.find_element(By.CSS_SELECTOR, "details.result summary").click()
    assert "the browser" in signal_node.find_element(By.CSS_SELECTOR, "details.result pre").text

    # Cancel: two clicks (open, confirm); the page says so.
    sleeper = start(mine, "df.sleep(600)", "long")
    browser.get(f"{url}instances/{sleeper}")
    browser.find_element(By.CSS_SELECTOR, "details.cancel summary").click()
    browser.find_element(By.CSS_SELECTOR, "details.cancel button.danger").click()
    wait_until(browser, lambda b: "notice=cancelled" in b.current_url)
    assert status_badge(browser) == "cancelled"
    assert one(conn, "SELECT df.status(%s)", (sleeper,)) == "cancelled"


def test_a_form_posted_from_another_site_changes_nothing(
    roles: Roles, conn: Conn, browser: WebDriver, dashboard: Callable[..., str]
) -> None:
    alice = roles.create("alice", grant=True)
    iid = start(roles.connect(alice), "df.wait_for_signal('go')")
    url = dashboard(roles.dsn(alice), "--allow-actions")
    for token in ("", "guessed"):
        attack = (
            f'<form method="post" action="{url}instances/{iid}/cancel">'
            f'<input name="csrf" value="{token}"></form>'
            "<script>document.forms[0].submit()</script>"
        )
        browser.get("data:text/html," + quote(attack))
        wait_until(browser, lambda b: b.current_url.startswith(url))
        assert "refused" in browser.find_element(By.CSS_SELECTOR, ".problem").text
    assert one(conn, "SELECT df.status(%s)", (iid,)) == "pending"


def test_the_workers_page(
    dsn: str, worker: WorkerThread, browser: WebDriver, dashboard: Callable[..., str]
) -> None:
    url = dashboard(dsn)
    browser.get(url)
    browser.find_element(By.LINK_TEXT, "Workers").click()
    wait_until(browser, lambda b: b.title == "Workers · pg-durable")
    assert texts(browser, ".summary") == ["1 alive of 1 registered"]
    assert texts(browser, 'tr[data-alive="true"] .badge') == ["alive"]
    # A worker that stops is shown stopped at the next refresh.
    worker.stop()
    wait_until(browser, lambda b: texts(b, ".summary") == ["0 alive of 1 registered"])
    assert texts(browser, "tr[data-worker] .badge") == ["stopped"]
