"""A real headless browser for the status page's tests: Debian's chromium driven through
chromedriver (selenium), downloading into a directory of the test's own."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service as DriverService
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

__all__ = ["open_browser", "text_of"]


@contextlib.contextmanager
def open_browser(downloads: Path) -> Iterator[WebDriver]:
    """A headless chromium that saves downloads into ``downloads`` without asking."""
    options = Options()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--window-size=1200,700"):  # fmt: skip
        options.add_argument(argument)
    prefs = {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    options.add_experimental_option("prefs", prefs)
    driver = webdriver.Chrome(service=DriverService("/usr/bin/chromedriver"), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def text_of(driver: WebDriver, export_id: str, cell: str) -> str:
    """The text of one cell of an export's row in the page's table."""
    return str(
        driver.find_element(By.CSS_SELECTOR, f'tr[data-id="{export_id}"] [data-cell="{cell}"]').text
    )
