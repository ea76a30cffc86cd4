"""The web UIs of the session's stack, as a user sees them, in a real headless Chromium.

Debian's `chromium` driven through its `chromedriver` by Selenium (no browser download).
Where no Chromium, chromedriver or selenium can be found, every test here is skipped with
a message saying so. The page elements used are the Airflow 3.3 React UI's own
`data-testid`s and the login form's field names, read from the real pages.

The run is triggered with the UI's trigger button and then watched through the REST API;
screenshots of the DAG list and of the finished run's grid go to tests/artifacts/screenshots/
(git-ignored, so a test run never dirties the checkout); with MLWF_UPDATE_SCREENSHOTS=1 they
replace the README's pictures in docs/screenshots/.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

import pytest

REPO = Path(__file__).resolve().parents[1]
SCREENSHOTS = REPO / ("docs" if os.environ.get("MLWF_UPDATE_SCREENSHOTS") == "1" else "tests/artifacts") / "screenshots"
PIPELINE = "ml_pipeline_dag"
DAGS = ("ml_pipeline_dag", "monitoring_dag")
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMEDRIVER_PATHS = ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
)
#: Pages on a 2-core machine shared with other stacks can take long: explicit waits, no sleeps.
UI_WAIT_S = 120
#: The whole pipeline on breast_cancer, possibly behind the scheduled run that unpausing creates.
RUN_TIMEOUT_S = 1800

pytestmark = [pytest.mark.stack, pytest.mark.slow, pytest.mark.usefixtures("chromium")]


@dataclass(frozen=True)
class Chromium:
    browser: str
    driver: str


@pytest.fixture(scope="session")
def chromium() -> Chromium:
    """Where Chromium and chromedriver are; the tests are skipped, saying why, when they are not.

    Requested before `stack`, so a machine without a browser does not start a stack for nothing.
    """
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("browser tests skipped: selenium is not installed (requirements/test.txt)")
    browser = next((path for path in map(shutil.which, CHROMIUM_NAMES) if path), None)
    driver = shutil.which("chromedriver") or next((p for p in CHROMEDRIVER_PATHS if os.access(p, os.X_OK)), None)
    if browser is None or driver is None:
        missing = [name for name, path in (("chromium", browser), ("chromedriver", driver)) if path is None]
        pytest.skip(
            f"browser tests skipped: no {' and no '.join(missing)} found "
            "(Debian: apt-get install chromium chromium-driver; scripts/setup.sh does it)"
        )
    return Chromium(browser, driver)


@pytest.fixture
def browser(chromium, tmp_path):
    """A fresh headless Chromium with its own profile (no cookies from another test)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium.browser
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    service = Service(chromium.driver, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(UI_WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def client(stack):
    from mlflowctl.api.airflow import AirflowClient

    with AirflowClient(stack.url, stack.user, lambda: stack.password, timeout=60) as api:
        yield api


# ----------------------------------------------------------------------------- helpers


def wait_for(driver, condition, what: str, timeout: float = UI_WAIT_S, poll: float = 0.5):
    """WebDriverWait on an explicit condition; on timeout, say what was awaited and what the page shows."""
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        # An element the page re-rendered between finding and reading it (a tooltip, a grid
        # cell) is read again at the next poll, within the same bound.
        return WebDriverWait(
            driver, timeout, poll_frequency=poll, ignored_exceptions=(StaleElementReferenceException,)
        ).until(condition)
    except TimeoutException:
        shot = Path(os.environ.get("TMPDIR", "/tmp")) / "mlwf-browser-failure.png"
        driver.save_screenshot(str(shot))
        raise AssertionError(
            f"waited {timeout:g} s for {what}; page {driver.current_url} shows:\n{page_text(driver)[:1500]}\n"
            f"(screenshot: {shot})"
        ) from None


def page_text(driver) -> str:
    from selenium.webdriver.common.by import By

    try:
        return driver.find_element(By.TAG_NAME, "body").text
    except Exception:  # a page between two loads
        return ""


def submit_login(driver, user: str, password: str) -> None:
    """Fill Airflow 3's SimpleAuthManager login form (fields `username`, `password`) and send it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC

    username = wait_for(driver, EC.element_to_be_clickable((By.NAME, "username")), "the login form")
    username.clear()
    username.send_keys(user)
    secret = driver.find_element(By.NAME, "password")
    secret.clear()
    secret.send_keys(password)
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()


def log_in(driver, stack, path: str = "/") -> None:
    """Open `path`, get sent to the login page, log in, and land back on `path`."""
    driver.get(stack.url + path)
    wait_for(driver, lambda d: "/auth/login" in d.current_url, "the redirect to the login page")
    submit_login(driver, stack.user, stack.password)
    wait_for(driver, lambda d: "/auth/login" not in d.current_url, "leaving the login page after a good password")
    assert driver.get_cookie("_token") is not None, "logged in but no _token cookie was set"


def screenshot(driver, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    assert driver.save_screenshot(str(path)), f"Chromium could not save {path}"
    assert path.stat().st_size < 500_000, f"{path} is {path.stat().st_size} bytes: keep screenshots small"
    return path


# ----------------------------------------------------------------------------- Airflow


def test_wrong_password_is_refused(browser, stack):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC

    browser.get(stack.url + "/")
    wait_for(browser, lambda d: "/auth/login" in d.current_url, "the redirect to the login page")
    submit_login(browser, stack.user, stack.password + "-wrong")
    wait_for(
        browser,
        EC.text_to_be_present_in_element((By.TAG_NAME, "body"), "Invalid credentials"),
        "the login page to refuse a wrong password",
    )
    assert "/auth/login" in browser.current_url
    assert browser.get_cookie("_token") is None
    # The API behind the page refused it too: nothing in the UI is reachable.
    browser.get(stack.url + "/dags")
    wait_for(browser, lambda d: "/auth/login" in d.current_url, "the DAG list to send a stranger to the login page")


def test_login_with_generated_password_shows_both_dags(browser, stack):
    from selenium.webdriver.common.by import By

    log_in(browser, stack, "/dags")

    def dag_ids(driver):
        found = {link.text for link in driver.find_elements(By.CSS_SELECTOR, "[data-testid=dag-id]")}
        return found if set(DAGS) <= found else False

    shown = wait_for(browser, dag_ids, f"the DAG list to show {', '.join(DAGS)}")
    assert set(DAGS) <= shown
    # Each card has its pause toggle and trigger button: the page is the working UI, not a shell.
    cards = browser.find_elements(By.CSS_SELECTOR, "[data-testid=dag-card]")
    assert len(cards) >= len(DAGS)
    for card in cards:
        assert card.find_elements(By.CSS_SELECTOR, "[data-testid=toggle-pause]")
        assert card.find_elements(By.CSS_SELECTOR, "[data-testid=trigger-dag-button]")
    screenshot(browser, "airflow-dags.png")


def test_trigger_from_the_ui_runs_and_the_grid_shows_it(browser, stack, client):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC

    from mlflowctl.runs import failures, watch_run

    was_paused = client.get_dag(PIPELINE).is_paused
    log_in(browser, stack, f"/dags/{PIPELINE}")
    try:
        wait_for(
            browser, EC.element_to_be_clickable((By.CSS_SELECTOR, "[data-testid=trigger-dag-button]")), "the trigger button"
        ).click()
        submit = wait_for(
            browser,
            EC.element_to_be_clickable((By.CSS_SELECTOR, "[data-testid=trigger-dag-submit]")),
            "the trigger dialog",
        )
        if was_paused:
            # A paused DAG's runs never start: the dialog offers to unpause it, checked by default.
            label = browser.find_element(By.XPATH, f"//label[contains(., 'Unpause {PIPELINE} on trigger')]")
            if not label.find_element(By.TAG_NAME, "input").is_selected():
                label.click()
        submit.click()
        # The UI goes to the new run's page; its id is in the address.
        wait_for(browser, EC.url_contains(f"/dags/{PIPELINE}/runs/"), "the UI to open the triggered run")
        run_id = unquote(browser.current_url.split("/runs/", 1)[1].split("/")[0].split("?")[0])
        run = client.get_run(PIPELINE, run_id)
        assert run.run_type == "manual"
        assert client.get_dag(PIPELINE).is_paused is False

        last = None
        for last in watch_run(client, PIPELINE, run_id, timeout=RUN_TIMEOUT_S, interval=5):
            pass
        if last.run.state != "success":
            details = "\n".join(
                f"{f.task.task_id} ({f.task.state}):\n  " + "\n  ".join(f.log_tail) for f in failures(client, last)
            )
            pytest.fail(f"run {run_id} ended {last.run.state}\n{details}")
        tasks = [t.task_id for t in last.tasks]
        assert tasks and all(t.state == "success" for t in last.tasks)
    finally:
        if was_paused:
            client.set_paused(PIPELINE, True)  # leave the shared stack's DAG as it was

    show_run_grid(browser, stack, run_id, tasks)


def show_run_grid(browser, stack, run_id: str, tasks: list[str]) -> None:
    """The finished run's page: every task's cell in the grid says success, and a screenshot of it."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC

    browser.get(f"{stack.url}/dags/{PIPELINE}/runs/{quote(run_id, safe='')}")
    cells = {
        task: wait_for(
            browser,
            EC.presence_of_element_located((By.CSS_SELECTOR, f'[data-testid="grid-{run_id}-{task}"]')),
            f"the grid cell of {task} in run {run_id}",
        )
        for task in tasks
    }
    header = browser.find_element(By.CSS_SELECTOR, "[data-testid=header-card]")
    wait_for(browser, lambda d: "Success" in header.text, "the run's header to say Success")
    wait_for(
        browser,
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "[data-testid=table-cell-state]")) >= len(tasks),
        "the task instance table",
    )
    # The grid scrolls sideways once there are several runs: bring this run's column into view.
    browser.execute_script("arguments[0].scrollIntoView({block: 'nearest', inline: 'center'})", cells[tasks[0]])
    screenshot(browser, "airflow-run-grid.png")
    # What a user sees hovering each cell: the task and its state.
    for task, cell in cells.items():
        browser.execute_script("arguments[0].scrollIntoView({block: 'nearest', inline: 'center'})", cell)
        ActionChains(browser).move_to_element(cell).perform()
        tip = wait_for(
            browser,
            lambda d: next(
                (t for t in d.find_elements(By.CSS_SELECTOR, "[role=tooltip]") if f"Task ID: {task}" in t.text), False
            ),
            f"the grid tooltip of {task}",
        )
        assert re.search(r"^State: Success$", tip.text, re.M), tip.text
        assert f"Run ID: {run_id}" in tip.text


# ----------------------------------------------------------------------------- Prometheus


def test_prometheus_targets_page_shows_the_exporter_up(browser, stack):
    import json

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC

    from mlflowctl.metrics.prometheus_config import EXPORTER_JOB

    services = {s["name"]: s for s in json.loads(stack.mlwf("status", "--json").stdout)["services"]}
    if services.get("prometheus", {}).get("state") != "healthy":
        state = services.get("prometheus", {}).get("state", "not part of the stack")
        pytest.skip(f"the session stack runs no Prometheus (prometheus: {state})")

    url = stack.mlwf("open", "prometheus", "--print", check=True).stdout.strip()
    assert url == f"http://127.0.0.1:{stack.ports['prometheus_port']}"
    browser.get(url)
    wait_for(browser, lambda d: "Prometheus" in page_text(d), "Prometheus's UI")
    # As a user gets there: the menu's Status -> Targets (the classic UI and the React UI have it).
    menu = browser.find_elements(By.LINK_TEXT, "Status")
    if menu:
        menu[0].click()
        wait_for(browser, EC.element_to_be_clickable((By.LINK_TEXT, "Targets")), "the Targets entry").click()
    else:
        browser.get(url + "/targets")
    wait_for(browser, lambda d: "targets" in d.current_url, "the targets page")

    up = re.compile(rf"^{re.escape(EXPORTER_JOB)} \((\d+)/\1 up\)", re.M)
    exporter = f"127.0.0.1:{stack.ports['exporter_port']}/metrics"

    def exporter_up(driver):
        text = page_text(driver)
        if up.search(text) and exporter in text:
            return True
        driver.refresh()  # the classic page is rendered by the server: reload until the scrape is in
        return False

    wait_for(browser, exporter_up, f"the {EXPORTER_JOB} job ({exporter}) to be up", poll=3)
