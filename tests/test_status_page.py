"""The status page at ``/``, in a real headless browser: Debian's chromium driven through
chromedriver (selenium), against ``exporter serve`` as its own process."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from exporter.core.model import ExportRequest
from tests.support import GatedDatabase, Gates, service
from tests.support.browser import text_of

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.slow]

# Where the gated database stops the export: reading 5,000 rows a batch, after 10,000 of
# its 30,000 rows.
GATE = 10_001


def test_start_watch_download_and_cancel_in_a_browser(
    browser: tuple[WebDriver, Path],
    gated_database: GatedDatabase,
    gates: Gates,
    tmp_path: Path,
) -> None:
    driver, downloads = browser
    # The export stops a third of the way through (at a row of the gated database) until
    # the page has shown it there: its progress is watched live whatever the machine's speed.
    with service(gated_database.url, export_dir=tmp_path / "exports", BATCH_ROWS="5000") as app:
        driver.get(f"{app.url}/")
        assert driver.title == "exporter"
        # The database may hold other tests' exports too: find the new row.
        listed = app.client.get("/exports?limit=100").json()["exports"]
        earlier = {doc["exportId"] for doc in listed}
        gates.hold(GATE)
        driver.find_element(By.ID, "columns").send_keys("id,name,email")
        driver.find_element(By.ID, "start").click()
        wait = WebDriverWait(driver, 60, poll_frequency=0.05)

        def new_row(d: WebDriver) -> str | None:
            for row in d.find_elements(By.CSS_SELECTOR, "#exports tr[data-id]"):
                if row.get_attribute("data-id") not in earlier:
                    return str(row.get_attribute("data-id"))
            return None

        export_id = wait.until(new_row)

        seen: list[int] = []  # the progress bar's values while the browser follows the stream

        def status_is(wanted: str) -> Callable[[WebDriver], bool]:
            def check(d: WebDriver) -> bool:
                # Both read in one script: the page cannot update between them.
                value, status = d.execute_script(
                    "const row = document.querySelector(`tr[data-id='${arguments[0]}']`);"
                    "return [row.querySelector('progress').value,"
                    " row.querySelector('[data-cell=status]').textContent];",
                    export_id,
                )
                seen.append(round(float(value)))
                return bool(status == wanted) and (wanted != "processing" or 0 < seen[-1] < 100)

            return check

        wait.until(status_is("processing"))  # held part-way, and shown so
        gates.release(GATE)
        wait.until(status_is("completed"))
        assert seen[-1] == 100 and text_of(driver, export_id, "pct") == "100%"
        assert any(0 < value < 100 for value in seen), seen  # it moved, live
        assert seen == sorted(seen)
        # The README's picture of the page is one of these (docs/status-page.png).
        assert driver.save_screenshot(str(tmp_path / "status-page.png"))

        link = f'tr[data-id="{export_id}"] [data-cell="download"]'
        driver.find_element(By.CSS_SELECTOR, link).click()
        target = downloads / f"export_{export_id}.csv"
        deadline = time.monotonic() + 30
        while not target.exists() or list(downloads.glob("*.crdownload")):
            assert time.monotonic() < deadline, list(downloads.iterdir())
            time.sleep(0.1)
        expected = gated_database.oracle(ExportRequest(columns=("id", "name", "email")))
        assert target.read_bytes() == expected

        # Cancel: the completed export's file is withdrawn.
        button = f'tr[data-id="{export_id}"] [data-cell="cancel"]'
        driver.find_element(By.CSS_SELECTOR, button).click()
        wait.until(lambda d: text_of(d, export_id, "status") == "cancelled")
        assert app.client.get(f"/exports/{export_id}/status").json()["status"] == "cancelled"

        # A bad parameter is shown, not lost.
        driver.find_element(By.ID, "country").send_keys("1x")
        driver.find_element(By.ID, "start").click()
        wait.until(lambda d: "country_code" in d.find_element(By.ID, "message").text)
