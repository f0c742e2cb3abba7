"""report.html in a real headless Chromium (Debian's chromium + chromedriver, installed by
.ci/run): the page loads with no console errors, every chart has data points drawn, hovering and
legend toggling work, and the screenshot is not blank.

Skipped only where no Chromium is installed; CI sets REQUIRE_BROWSER=1 so a missing browser
fails there instead.
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest

from tests.test_report import run_dir  # noqa: F401 - shared module fixture

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER) and not os.environ.get("REQUIRE_BROWSER"):
    pytest.skip("no Chromium/chromedriver here (CI installs them)", allow_module_level=True)


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1400,1000",
                 "--disable-dev-shm-usage"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    yield driver
    driver.quit()


def _open(browser, page: Path) -> None:
    browser.get(page.resolve().as_uri())
    browser.execute_async_script(
        "const done = arguments[0]; const t0 = Date.now();"
        "(function wait(){ const g=[...document.querySelectorAll('.js-plotly-plot')];"
        " if (g.length && g.every(x => x._fullLayout)) done(); "
        " else if (Date.now()-t0 > 20000) done(); else setTimeout(wait, 50);})();")


def test_report_renders_in_chromium(browser, run_dir):  # noqa: F811
    from PIL import Image

    _open(browser, run_dir / "report.html")
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    charts = browser.execute_script(
        "return [...document.querySelectorAll('.js-plotly-plot')].map(g => ({"
        " id: g.id, traces: g.data.length,"
        " points: g.data.reduce((n, t) => n + (t.y ? t.y.filter(v => v !== null).length : 0), 0),"
        " drawn: g.querySelectorAll('.scatterlayer .trace path, .barlayer .point').length}))")
    assert len(charts) == 5
    for c in charts:
        assert c["traces"] > 0 and c["points"] > 0 and c["drawn"] > 0, c
    # Legend toggling: a real click on the run's legend entry hides its series in that chart.
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    entry = browser.find_element(By.CSS_SELECTOR, "#fig0 .legend .traces .legendtoggle")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", entry)
    ActionChains(browser).move_to_element(entry).click().perform()
    hidden = browser.execute_script(
        "return new Promise(r => setTimeout(() => r(document.getElementById('fig0').data"
        ".map(t => t.visible)), 800));")
    assert hidden.count("legendonly") == 3  # the run's TTFT, TPOT and E2E curves; SLOs stay
    # Hover: plotly answers a hover on the first CDF trace with a label.
    hover = browser.execute_script(
        "const g = document.getElementById('fig1');"
        "Plotly.Fx.hover(g, [{curveNumber: 0, pointNumber: 2}]);"
        "return g.querySelectorAll('.hoverlayer .hovertext').length;")
    assert hover >= 1
    png = Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB")
    colours = png.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # text, lines, fills: not a blank page
    assert browser.get_log("browser") == [] or all(
        e["level"] != "SEVERE" for e in browser.get_log("browser"))
