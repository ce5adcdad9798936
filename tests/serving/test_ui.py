"""The planner page in a real headless browser (Debian's chromium, driven by Playwright) against
a real ``bentoml serve``: it loads with a key, draws the forecast band and the actuals, changes
the placement when the units change, shows the KPI table, fits a phone screen, and says why
when the key is wrong. A screenshot is written by the test."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from serving.keys import create_key, keys_file
from tests.conftest import in_ci
from tests.processes import get, post, serving

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        message = (
            "Debian's chromium is not installed (.ci/run installs it: apt-get install chromium)"
        )
        if in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


def until(condition: Callable[[], bool], seconds: float = 20) -> None:
    """Poll from Python: the page's policy forbids the string evaluation Playwright's
    ``wait_for_function`` uses, as it should."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the page did not get there in time"
        time.sleep(0.1)


def units(page) -> int:
    """Units sent plus units kept at the DC, as the placement note says."""
    return sum(int(n) for n in re.findall(r"\d+", page.text_content("#pl-note") or ""))


def test_the_planner_page_draws_forecasts_placements_and_kpis(
    champions: Path, keys: dict[str, str], browser, tmp_path: Path
) -> None:
    planner = create_key(["plan", "report"], keys_file())
    env = {**os.environ, "OMNI_EVENTS_URL": f"sqlite:///{tmp_path}/events.db"}
    with serving(env, tmp_path / "server.log") as (port, _):
        # A newline in a path forges no log line (BentoML's access line wrote it as sent).
        assert get(port, "/x%0AFORGED-LINE%20[ERROR]")[0] == 401
        # Something to measure: one list shown in the app.
        shown = {"customer_key": "LC-00009806", "channel": "app", "n": 5}
        assert post(port, "/recommend", shown, keys["recommend"])[0] == 200
        # Written by the worker that answered within a second; the page asks for the KPIs once,
        # perhaps of another worker, so wait until they hold it.
        since = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")
        until(lambda: bool(get(port, f"/kpis?since={since}", planner)[1].get("rows")))
        url = f"http://127.0.0.1:{port}/ui"

        page = browser.new_page(viewport={"width": 1280, "height": 900})
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.goto(url)
        page.fill("#key", planner)
        page.click("text=Use key")
        page.wait_for_selector("#band", state="attached")
        assert len(page.get_attribute("#band", "points").split()) >= 2 * 4  # 4 periods, 2 edges
        assert page.get_attribute("#actuals", "points")
        page.wait_for_selector("#pl-table tbody tr")
        # No units typed: the DC's stock available now, as /placement places it by default.
        dc = post(port, "/placement", {"item_id": "I000010", "horizon": 2}, planner)[1]
        assert dc["units_available"] > 0 and dc["dc_id"] in page.text_content("#pl-note")
        until(lambda: units(page) == dc["units_available"])  # sent + kept at the DC
        page.wait_for_selector("#kpi-table tbody tr")
        page.screenshot(path=str(tmp_path / "planner.png"), full_page=True)  # docs/img's
        assert (tmp_path / "planner.png").stat().st_size > 10_000
        page.fill("#pl-units", "3")  # typed: the page asks again once the typing pauses
        until(lambda: units(page) == 3)  # the allocation of the new units
        assert int(page.text_content("#pl-note").split()[0]) <= 3
        assert re.search(
            r"trained on weekly sales to \d{4}-\d\d-\d\d", page.text_content("#fc-note")
        )
        assert page.locator("#fc-table tbody tr").count() == 4  # the band's numbers, per period
        assert page.text_content("#y-unit") == "units per week"  # what the axis counts
        # One period ahead: the band is a bar and the mean a point (a line of one point is not).
        page.fill("#fc-horizon", "1")
        page.click("#forecast-form button")
        until(lambda: page.locator("#fc-chart circle").count() == 1)
        assert len(page.get_attribute("#band", "points").split()) == 4
        grid = [float(t) for t in page.locator("#fc-chart text").all_text_contents()[:5]]
        assert grid[0] == 0 and len({round(b - a, 9) for a, b in itertools.pairwise(grid)}) == 1
        rows = page.locator("#kpi-table tbody tr").all_text_contents()
        assert any(row.startswith("recommend / app") for row in rows), rows
        assert not problems, problems  # nothing blocked by the page's own security policy
        # Units the field refuses: the browser's reason, not the last answer, stands there.
        page.fill("#pl-units", "-5")
        until(lambda: bool(page.text_content("#pl-error")))
        assert page.locator("#pl-table tr").count() == 0 and not page.text_content("#pl-note")
        page.fill("#pl-units", "3")
        until(lambda: units(page) == 3)
        # A store that never sold the item is named as taking no part; its forecast is said to be
        # its category's prior (the sample's S002 never sold I000155).
        placed = post(port, "/placement", {"item_id": "I000155", "horizon": 2}, planner)[1]
        assert "S002" in placed["stores_without_sales"]
        page.fill("#pl-item", "I000155")
        page.click("#placement-form button")
        until(lambda: "take no part: S002" in (page.text_content("#pl-why") or ""))
        page.fill("#fc-store", "S002")
        page.fill("#fc-item", "I000155")
        page.click("#forecast-form button")
        until(lambda: "has not sold this item" in (page.text_content("#fc-note") or ""))
        # A field the browser refuses on submit clears the answer beside it.
        page.fill("#fc-horizon", "")
        page.click("#forecast-form button")
        until(lambda: page.locator("#fc-table tr").count() == 0)
        assert not page.text_content("#fc-note")
        # The KPIs of a period that ends tomorrow (offers are dated when they are to be sent).
        tomorrow = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%d")
        page.fill("#kpi-until", tomorrow)
        page.click("#kpi-form button")
        until(lambda: bool(page.text_content("#kpi-note")))
        assert not page.text_content("#kpi-error")
        # A refusal clears the answer it would otherwise stand beside.
        page.fill("#pl-item", "NOPE")
        page.click("#placement-form button")
        until(lambda: bool(page.text_content("#pl-error")))
        assert page.locator("#pl-table tr").count() == 0 and not page.text_content("#pl-note")

        phone = browser.new_page(viewport={"width": 390, "height": 844})
        phone.goto(url)
        assert phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        phone.fill("#key", "omni_not_a_real_key")
        phone.click("text=Use key")
        until(lambda: bool(phone.text_content("#fc-error")))
        assert "key" in phone.text_content("#fc-error").lower()
        # A refused key is forgotten (not sent again on reload), and the header says so.
        until(lambda: "refused" in phone.text_content("#key-state"))
        assert phone.evaluate("sessionStorage.length") == 0
        phone.screenshot(path=str(tmp_path / "planner-phone.png"), full_page=True)

        logged = (tmp_path / "server.log").read_text().splitlines()
        assert not [line for line in logged if line.startswith("FORGED-LINE")]
        assert [line for line in logged if "/x\\nFORGED-LINE" in line]  # the access line

        # The Swagger page: it renders, and nothing is fetched from outside the service (it
        # loaded Google Tag Manager on the page where API keys are typed).
        docs = browser.new_page()
        answered: list[str] = []
        blocked: dict[str, str | None] = {}
        docs.on("response", lambda r: answered.append(r.url))
        docs.on("requestfailed", lambda r: blocked.update({r.url: r.failure}))
        docs.goto(f"http://127.0.0.1:{port}/docs")
        docs.wait_for_selector(".opblock")  # the operations, from /docs.json
        assert any(u.endswith("/docs.json") for u in answered), answered
        assert all(u.startswith(f"http://127.0.0.1:{port}/") for u in answered), answered
        # The page still asks for Google Tag Manager and badges: the browser's policy stops them.
        assert blocked and set(blocked.values()) == {"csp"}, blocked
