"""The leaderboard page in headless Chromium: no console errors, tables sort on a click."""

from __future__ import annotations

import re

import pytest

from featbench.board import browser
from featbench.board import leaderboard as lb
from tests.conftest import make_tiny_suite
from tests.leaderboard_helpers import scores_for, write_model


@pytest.fixture
def page(tmp_path, private_cache):
    suite = make_tiny_suite(tmp_path / "suite")
    root = tmp_path / "lb"
    write_model(root, suite, "good", scores_for("good"), predict_per_s=50.0, n_params=1000)
    write_model(root, suite, "mid", scores_for("mid"), predict_per_s=500.0, n_params=100)
    write_model(root, suite, "bad", scores_for("bad"), failed=(suite.select(track="map")[0].id,),
                predict_per_s=5000.0, n_params=0)
    lb.build(suite, root, use_built_data=False)
    return root / "index.html"


def test_page_is_self_contained_with_plots(page):
    text = page.read_text()
    assert text.count("<svg") == 3  # per category, per layer, throughput against quality
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)  # nothing fetched from the network
    assert 'class="sortable"' in text and "<script>" in text


def _column(driver, table_id: str, col: int) -> list[str]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#' + arguments[0] + ' tbody tr'))"
        ".map(r => r.cells[arguments[1]].textContent);", table_id, col)


def test_page_opens_without_errors_and_sorts_on_click(page):
    why = browser.available()
    if why:
        pytest.skip(f"headless Chromium test skipped: {why}")
    from selenium.webdriver.common.by import By

    with browser.chromium() as driver:
        driver.get(page.as_uri())
        assert browser.console_errors(driver) == []
        assert _column(driver, "map-models", 0) == ["good", "mid", "bad"]  # by mean rank
        headers = driver.find_elements(By.CSS_SELECTOR, "#map-models thead th")
        throughput = next(h for h in headers if h.text.startswith("predict maps"))
        col = headers.index(throughput)
        throughput.click()
        assert _column(driver, "map-models", 0) == ["good", "mid", "bad"]  # 50 < 500 < 5000 maps/s
        assert throughput.get_attribute("aria-sort") == "ascending"
        throughput.click()
        assert _column(driver, "map-models", 0) == ["bad", "mid", "good"]
        assert _column(driver, "map-models", col) == ["5000", "500", "50"]
        headers[0].click()  # text column
        assert _column(driver, "map-models", 0) == ["bad", "good", "mid"]
        layer_header = driver.find_element(By.CSS_SELECTOR, "#map-layer-0 thead th:nth-child(3)")
        layer_header.click()
        layer_header.click()  # descending r2: best first
        assert _column(driver, "map-layer-0", 0) == ["good", "mid", "bad"]
        assert browser.console_errors(driver) == []
