"""The Attention page in a real headless Chromium on SmolLM2: each view drawn, a token click
isolating its lines, a tile click opening the head view. Screenshots go to test-output/browser/."""

from __future__ import annotations

import re

import pytest

from tests.test_browser import SHOT_TIMEOUT, SHOTS, browser, server  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.real_model]

# Page coordinates of the point whose customdata equals `id` (a token position, or [layer, head]).
# Plotly decodes the base64 arrays it is sent into _fullData (gd.data keeps them encoded).
POINT_JS = """(id) => {
  const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
  const gd = document.querySelector('.js-plotly-plot');
  for (const t of gd._fullData) {
    const data = Array.from(t.customdata || []).map(d => typeof d === 'object' ? Array.from(d, Number) : Number(d));
    const i = data.findIndex(d => same(d, id));
    if (i < 0) continue;
    const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, box = gd.getBoundingClientRect();
    const x = xa.d2p(t.x[i]), y = ya.d2p(t.y[i]);
    return [box.left + xa._offset + x, box.top + ya._offset + y];
  }
  return null;
}"""
TITLE_JS = "() => document.querySelector('.js-plotly-plot').layout.title.text"


def open_attention(browser, url):  # noqa: F811
    page = browser.new_page(viewport={"width": 1600, "height": 1400})
    page.goto(f"{url}/attention?prompt=1")  # "When Mary and John went to the store, John gave a drink to"
    page.locator(".js-plotly-plot").first.wait_for(timeout=180_000)
    page.wait_for_function("() => document.querySelector('.js-plotly-plot').layout", timeout=60_000)
    return page


def wait_for_title(page, pattern: str) -> str:
    page.wait_for_function(
        f"() => {{ const g = document.querySelector('.js-plotly-plot'); "
        f"return g && g.layout && /{pattern}/.test(g.layout.title.text); }}",
        timeout=120_000,
    )
    page.wait_for_timeout(800)
    return page.evaluate(TITLE_JS)


def click_point(page, point) -> None:
    x, y = page.evaluate(POINT_JS, point)
    page.mouse.click(x, y)


def test_each_view_draws_and_clicks_lead_somewhere(server, browser):  # noqa: F811
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = open_attention(browser, server)
    assert "Layer 15: attention weight" in wait_for_title(page, "Layer 15: attention weight")
    page.screenshot(path=str(SHOTS / "attention_01_head_view.png"), full_page=True, timeout=SHOT_TIMEOUT)

    click_point(page, 12)  # the query "·gave": only its lines stay
    page.get_by_text(re.compile(r"now token 12")).wait_for(timeout=60_000)
    page.wait_for_timeout(800)
    page.screenshot(path=str(SHOTS / "attention_02_head_view_token.png"), full_page=True, timeout=SHOT_TIMEOUT)

    page.get_by_text("ALTI contribution", exact=True).click()
    wait_for_title(page, "Layer 15: ALTI contribution")
    page.get_by_text("Model view", exact=True).click()
    wait_for_title(page, "All layers × heads: ALTI contribution")
    page.screenshot(path=str(SHOTS / "attention_03_model_view.png"), full_page=True, timeout=SHOT_TIMEOUT)

    click_point(page, [3, 4])  # the tile of layer 3, head 4 opens in the head view
    wait_for_title(page, "Layer 3: ALTI contribution")
    assert page.get_by_text("Head view", exact=True).is_visible()

    page.get_by_text("Neuron view", exact=True).click()
    title = wait_for_title(page, "Layer 3, head 4, query")
    assert "reproduces the model's weights to" in title
    page.screenshot(path=str(SHOTS / "attention_04_neuron_view.png"), full_page=True, timeout=SHOT_TIMEOUT)
    page.close()
