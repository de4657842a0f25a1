"""The playground in a real headless Chromium on SmolLM2: step once, then click a layer of the
anatomy strip and land on that block in the Explorer. Screenshots go to test-output/browser/."""

from __future__ import annotations

import re

import pytest

from tests.test_browser import SHOTS, browser, server  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.real_model]

BAR_JS = """(id) => {
  const gd = [...document.querySelectorAll('.js-plotly-plot')].find(g => g.data && g.data.some(
      t => t.type === 'bar' && t.customdata && t.customdata.includes(id)));
  const t = gd.data.find(t => t.type === 'bar' && t.customdata && t.customdata.includes(id));
  const i = t.customdata.indexOf(id);
  const bars = gd.querySelectorAll('.barlayer .trace')[gd.data.filter(d => d.type === 'bar').indexOf(t)];
  const box = bars.querySelectorAll('.point')[i].getBoundingClientRect();
  return [box.left + box.width / 2, box.top + box.height / 2];
}"""


IDLE_JS = """() => !document.querySelector('[data-testid="stStatusWidget"]')
    && !document.querySelector('[data-stale="true"]')"""


def settle(page) -> None:
    """Wait until the script run is over and nothing on the page is stale (no tooltip left)."""
    page.mouse.move(5, 5)
    page.wait_for_timeout(500)
    page.wait_for_function(IDLE_JS, timeout=180_000)
    page.wait_for_timeout(1000)


def test_step_then_open_a_layer_of_the_anatomy(server, browser):  # noqa: F811
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1600, "height": 1500})
    page.goto(f"{server}/playground")
    page.get_by_text("Anatomy of one prediction").wait_for(timeout=180_000)
    page.get_by_text(re.compile(r"^At \d+:")).wait_for(timeout=180_000)
    settle(page)
    page.screenshot(path=str(SHOTS / "10_playground.png"))

    # Top-k 8 and top-p 0.90 (ten steps of 0.01 down): greyed bars, and no forward pass needed.
    page.get_by_role("spinbutton", name="Top-k").fill("8")
    page.get_by_role("spinbutton", name="Top-k").press("Enter")
    settle(page)
    thumb = page.get_by_test_id("stSlider").filter(has_text="Top-p").get_by_role("slider")
    thumb.focus()
    for _ in range(10):
        thumb.press("ArrowLeft")
    page.get_by_text("top-p 0.9", exact=True).wait_for(timeout=60_000)
    settle(page)
    assert page.get_by_text(re.compile(r"^After '·is': [1-8] tokens? of 49,152 can be drawn")).is_visible()

    page.get_by_role("button", name="Step").click()
    page.get_by_text(re.compile(r"of which 1 generated token")).wait_for(timeout=120_000)
    page.get_by_text("Generated tokens: click one").wait_for()
    settle(page)
    page.screenshot(path=str(SHOTS / "11_playground_stepped.png"))

    caption = page.get_by_text(re.compile(r"^At \d+:")).inner_text()
    position = int(re.match(r"At (\d+):", caption)[1])
    node = f"M29_{position}"  # the last FFN: on the route at the default threshold
    x, y = page.evaluate(BAR_JS, node)
    page.mouse.click(x, y)
    page.wait_for_timeout(3000)
    page.screenshot(path=str(SHOTS / "12_anatomy_click_opens_explorer.png"))
    page.get_by_text(f"{node}: FFN of layer").wait_for(timeout=120_000)
    assert page.get_by_text(re.compile(rf"for token {position} ")).is_visible()
    settle(page)
    page.screenshot(path=str(SHOTS / "12_anatomy_click_opens_explorer.png"))
    page.close()
