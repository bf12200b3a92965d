"""The status page's datasets, in a real headless browser (Debian's chromium through
chromedriver): a dataset picked from ``GET /datasets``, its columns
and a filter chosen, the export started, followed and downloaded byte-identical to
PostgreSQL's COPY; a value the server rejects shown beside its field."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait

from exporter.core.datasets import load_datasets_file
from exporter.core.request import parse_dataset_request
from exporter.export.catalog import resolve_datasets
from tests.support import copy_oracle, service
from tests.support.browser import text_of
from tests.support.datasets import create_schema, write_datasets_file

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.slow]

# The export the page is made to start: two columns of ``lines``, one filter.
SELECT = "sku,total"
FILTER = ("total", "gte", "500")
LINES = 4000 * 3  # the rows of shop.lines (tests/support/datasets.py)


def listed(client: httpx.Client) -> set[str]:
    """The exports the service lists (the database may hold other tests' exports too)."""
    return {doc["exportId"] for doc in client.get("/exports?limit=100").json()["exports"]}


def test_export_a_dataset_with_columns_and_a_filter_in_a_browser(
    browser: tuple[WebDriver, Path],
    database: str,
    tmp_path: Path,
) -> None:
    driver, downloads = browser
    create_schema(database)
    path = write_datasets_file(tmp_path)
    datasets = resolve_datasets(database, load_datasets_file(path))
    column, op, value = FILTER
    request = parse_dataset_request(datasets["lines"], {"select": SELECT, column: f"{op}.{value}"})
    expected = copy_oracle(database, request, datasets)
    assert 0 < expected.count(b"\n") < LINES  # some rows pass the filter, not all

    with service(database, tmp_path / "exports", EXPORTER_DATASETS=str(path)) as app:
        driver.get(f"{app.url}/")
        wait = WebDriverWait(driver, 60, poll_frequency=0.05)
        picker = driver.find_element(By.ID, "dataset")
        # Filled from GET /datasets, users first chosen.
        wait.until(lambda d: len(Select(picker).options) == len(datasets))
        assert Select(picker).first_selected_option.get_attribute("value") == "users"
        Select(picker).select_by_value("lines")

        # Its description, its columns with PostgreSQL's types, the defaults checked.
        wait.until(lambda d: d.find_elements(By.ID, "column-sku"))
        assert driver.find_element(By.ID, "description").text == "Order lines"
        lines = datasets["lines"]
        for col in lines.columns:
            box = driver.find_element(By.ID, f"column-{col.name}")
            label = box.find_element(By.XPATH, "./ancestor::label")
            assert label.text.split() == [col.name, *col.type.split()], label.text
            assert box.is_selected() == (col.name in lines.default_columns)
        # Its filters: each filterable column's operators, and nothing for the seed's form.
        for name, ops in lines.filters.items():
            options = Select(driver.find_element(By.ID, f"filter-{name}-op")).options
            assert [o.get_attribute("value") for o in options] == list(ops)
            assert driver.find_element(By.ID, f"filter-{name}").get_attribute("value") == ""
        assert not driver.find_element(By.ID, "country").is_displayed()

        # Two columns (sku, total: total stays checked), one filter.
        for name in ("order_id", "line_no", "sku"):
            driver.find_element(By.ID, f"column-{name}").click()
        Select(driver.find_element(By.ID, f"filter-{column}-op")).select_by_value(op)
        driver.find_element(By.ID, f"filter-{column}").send_keys(value)
        earlier = listed(app.client)
        driver.find_element(By.ID, "start").click()

        def new_row(d: WebDriver) -> str | None:
            for row in d.find_elements(By.CSS_SELECTOR, "#exports tr[data-id]"):
                if row.get_attribute("data-id") not in earlier:
                    return str(row.get_attribute("data-id"))
            return None

        export_id = wait.until(new_row)
        assert export_id is not None  # until() returns only once it is
        wait.until(lambda d: text_of(d, export_id, "status") in ("completed", "failed"))
        status = app.client.get(f"/exports/{export_id}/status").json()
        assert status["status"] == "completed", status
        assert status["request"]["columns"] == SELECT.split(",")
        # The list shows its dataset and its filters, as the status document has them.
        assert text_of(driver, export_id, "dataset") == "lines"
        assert text_of(driver, export_id, "filters") == f"{column}={op}.{value}"
        assert status["filters"] == [f"{column}={op}.{value}"]

        link = f'tr[data-id="{export_id}"] [data-cell="download"]'
        driver.find_element(By.CSS_SELECTOR, link).click()
        target = downloads / f"export_{export_id}.csv"
        deadline = time.monotonic() + 30
        while not target.exists() or list(downloads.glob("*.crdownload")):
            assert time.monotonic() < deadline, list(downloads.iterdir())
            time.sleep(0.1)
        assert target.read_bytes() == expected

        # A value the server rejects: its message beside the field, and nothing started.
        answer = app.client.post(
            "/datasets/lines/exports", params={"select": SELECT, column: f"{op}.abc"}
        )
        assert answer.status_code == 400
        said = {e["param"]: e["message"] for e in answer.json()["errors"]}
        assert list(said) == [column]
        field = driver.find_element(By.ID, f"filter-{column}")
        field.clear()
        field.send_keys("abc")
        driver.find_element(By.ID, "start").click()
        error = f'[data-column="{column}"] [data-error-for="{column}"]'
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, error).text == said[column])
        shown = driver.find_element(By.CSS_SELECTOR, error)
        assert field.get_attribute("aria-describedby") == shown.get_attribute("id")
        assert field.get_attribute("aria-invalid") == "true"
        assert said[column] in driver.find_element(By.ID, "message").text
        assert listed(app.client) - earlier == {export_id}
