"""The review page in a real browser: Debian's headless Chromium, driven by Selenium through
Debian's chromium-driver, against the app served by uvicorn over the real Neo4j. The queue loads,
a click accepts and a key rejects (Neo4j changes), the log shows both, and undo restores.
Screenshots are kept under `test-artifacts/edge_review/` (or $DATACREEK_TEST_ARTIFACTS)."""

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from datacreek_assets.curation.repair_log import RepairLog
from datacreek_assets.curation.review_store import ReviewStore
from datacreek_assets.curation.web import curation_app
from tests.integration.edge_review_fixtures import ADMIN, seed

pytestmark = pytest.mark.integration
TENANTS = ("rev-ui", "rev-other")
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("DATACREEK_TEST_ARTIFACTS", REPO / "test-artifacts")) / "edge_review"
CHROMIUM, DRIVER = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver") or "/usr/bin/chromedriver"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def served(local_resources, tmp_path):
    import uvicorn

    url = f"sqlite:///{tmp_path / 'curation.db'}"
    store, log = ReviewStore(url), RepairLog(url)
    with local_resources["graph_store"].admin() as admin:
        graphs = seed(admin, store, TENANTS)
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(curation_app(admin, store, log, ADMIN), host="127.0.0.1", port=port,
                                               log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline, "the curation app did not start"
            time.sleep(0.05)
        try:
            yield f"http://127.0.0.1:{port}", store, graphs
        finally:
            server.should_exit = True
            thread.join(10)
            for graph in graphs.values():
                graph.delete_everything()


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert os.path.exists(CHROMIUM) and os.path.exists(DRIVER), "Debian's chromium and chromium-driver (make prereqs)"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # the machine's network is closed: Chromium's own background connections are turned off
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1600,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(60)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(predicate, timeout: float = 20, what: str = "the page"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} did not change within {timeout} s"
        time.sleep(0.1)


def test_a_curator_accepts_rejects_and_undoes_in_the_browser(served, browser):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    base, store, graphs = served
    graph = graphs["rev-ui"]
    _, key = store.issue_key("rev-ui", "ada")
    browser.get(f"{base}/ui/edge_review")
    assert browser.current_url.endswith("/ui/login")  # not signed in: the sign-in form
    browser.find_element(By.ID, "key").send_keys(key)
    browser.find_element(By.ID, "sign-in").click()
    wait_for(lambda: browser.current_url.endswith("/ui/edge_review"), what="the sign-in")
    rows = browser.find_elements(By.CSS_SELECTOR, "#queue tr.edge")
    assert len(rows) == 11 and browser.find_element(By.ID, "curator").text == "ada"
    assert "<script>" in browser.find_element(By.CSS_SELECTOR, "#edge-0 .sentence").text or \
        any("<script>" in r.find_element(By.CSS_SELECTOR, ".sentence").text for r in rows)  # shown as text
    with pytest.raises(NoAlertPresentException):  # the evidence's script never ran
        browser.switch_to.alert.text
    deltas = [float(r.find_element(By.CSS_SELECTOR, ".delta").text.split()[0]) for r in rows]
    assert deltas == sorted(deltas, reverse=True)  # strongest first
    assert rows[0].find_elements(By.CSS_SELECTOR, "svg line.this")  # the neighbourhood picture
    browser.save_screenshot(str(ARTIFACTS / "1-queue.png"))

    first, second = rows[0].get_attribute("data-id"), rows[1].get_attribute("data-id")
    rows[0].find_element(By.CSS_SELECTOR, "button.accept").click()  # a click
    wait_for(lambda: rows[0].find_element(By.CSS_SELECTOR, ".outcome").text == "accept", what="the accept")
    assert graph.fact_state(first)["confirmed_by"] == "ada"
    # the selection moved to the next row; "r" rejects it
    assert "selected" in rows[1].get_attribute("class")
    browser.find_element(By.TAG_NAME, "body").send_keys("r")
    wait_for(lambda: rows[1].find_element(By.CSS_SELECTOR, ".outcome").text == "reject", what="the reject")
    assert graph.fact_state(second)["rejected_by"] == "ada"
    assert second not in {f["fact_id"] for f in graph.live_facts()}
    browser.save_screenshot(str(ARTIFACTS / "2-decided.png"))

    browser.find_element(By.ID, "log-link").click()
    wait_for(lambda: browser.current_url.endswith("/ui/edge_review/log"), what="the log link")
    entries = browser.find_elements(By.CSS_SELECTOR, "#log tr.entry")
    assert [(e.find_element(By.CSS_SELECTOR, ".edge-id").text, e.find_element(By.CSS_SELECTOR, ".decision").text)
            for e in entries] == [(second, "reject"), (first, "accept")]
    browser.save_screenshot(str(ARTIFACTS / "3-log.png"))
    entries[0].find_element(By.CSS_SELECTOR, "button.undo").click()
    wait_for(lambda: "undid" in browser.find_element(By.ID, "status-line").text, what="the undo")
    state = graph.fact_state(second)
    assert state["rejected_at"] is None and state["version"] == 2
    assert second in {f["fact_id"] for f in graph.live_facts()}
    browser.refresh()
    assert [e.find_element(By.CSS_SELECTOR, ".decision").text
            for e in browser.find_elements(By.CSS_SELECTOR, "#log tr.entry")][0].startswith("undo")
    browser.save_screenshot(str(ARTIFACTS / "4-undone.png"))

    # the other tenant's edges were never on these pages
    browser.get(f"{base}/ui/edge_review?status=all&per_page=100")
    assert "rev-other-" not in browser.page_source
    assert graphs["rev-other"].fact_state("rev-other-f0")["version"] == 0


def test_pages_and_filters_follow_the_keyboard(served, browser):
    from selenium.webdriver.common.by import By

    base, store, _ = served
    _, key = store.issue_key("rev-ui", "bob")
    browser.get(f"{base}/ui/login")
    browser.find_element(By.ID, "key").send_keys(key)
    browser.find_element(By.ID, "sign-in").click()
    wait_for(lambda: browser.current_url.endswith("/ui/edge_review"), what="the sign-in")
    browser.get(f"{base}/ui/edge_review?per_page=10")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#queue tr.edge")) == 10
    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys("n")  # the next page
    wait_for(lambda: "page=2" in browser.current_url, what="the next page")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#queue tr.edge")) == 1
    browser.find_element(By.TAG_NAME, "body").send_keys("/")  # search
    search = browser.switch_to.active_element
    assert search.get_attribute("id") == "q"
    search.send_keys("budapest\n")
    wait_for(lambda: "q=budapest" in browser.current_url, what="the search")
    subjects = {(r.find_element(By.CSS_SELECTOR, ".subject").text, r.find_element(By.CSS_SELECTOR, ".object").text)
                for r in browser.find_elements(By.CSS_SELECTOR, "#queue tr.edge")}
    assert subjects and all("Budapest" in pair for pair in subjects)
    browser.save_screenshot(str(ARTIFACTS / "5-search.png"))
