"""The Inside page in a real headless Chromium (tiny models): the attention stage expands in place to
its step-by-step matrices with the query row outlined (screenshot kept in test-output/browser/),
and a click on a layer's square in the flow walks through that block."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from tests.test_browser import SHOT_TIMEOUT, SHOTS, browser  # noqa: F401  (fixture)
from tests.test_browser_state import link, no_exception, settle, tiny_server, wait_for_link  # noqa: F401  (fixture)

pytestmark = pytest.mark.browser
HIGHLIGHT = (0xE4, 0x57, 0x56)  # the outline of the chosen token's row (llm_flow.figures.inside)


def open_inside(browser, url):  # noqa: F811
    page = browser.new_page(viewport={"width": 1500, "height": 1400})
    page.goto(f"{url}/inside")
    page.get_by_text("Guided tour").first.wait_for(timeout=120_000)
    settle(page)
    no_exception(page, "the Inside page")
    return page


def plot_of(page, key: str):
    return page.locator(f".st-key-{key} .js-plotly-plot")


def outlined_pixels(png: bytes) -> int:
    image = Image.open(io.BytesIO(png)).convert("RGB")
    return sum(1 for pixel in image.getdata() if all(abs(a - b) <= 12 for a, b in zip(pixel, HIGHLIGHT)))


def hover_text(page, key: str, column: int) -> str:
    """What plotly shows when the mouse is over `column` of the first strip of chart `key`."""
    x, y = page.evaluate(
        "([key, column]) => { const g = document.querySelector(`.st-key-${key} .js-plotly-plot`);"
        " const xa = g._fullLayout.xaxis, ya = g._fullLayout.yaxis, box = g.getBoundingClientRect();"
        " return [box.left + xa._offset + xa.l2p(column), box.top + ya._offset + ya.l2p(0)]; }",
        [key, column],
    )
    page.mouse.move(x, y)
    label = page.locator(f".st-key-{key} .hoverlayer .hovertext")
    label.wait_for(timeout=30_000)
    return " ".join((label.text_content() or "").split())


def test_the_attention_stage_expands_to_its_matrices(tiny_server, browser):  # noqa: F811
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = open_inside(browser, tiny_server)
    assert plot_of(page, "inside_attention_detail").count() == 0  # collapsed to the overview
    page.locator(".st-key-inside_attention_button button").click()
    plot_of(page, "inside_attention_detail").wait_for(timeout=120_000)
    settle(page)
    no_exception(page, "the expanded attention stage")
    wait_for_link(page, "in_stage", "attention")
    assert page.locator(".katex").count() >= 1  # the formula, drawn
    layout = page.evaluate(
        "() => { const g = document.querySelector('.st-key-inside_attention_detail .js-plotly-plot');"
        " return {titles: g.layout.annotations.map(a => a.text), shapes: g.layout.shapes}; }"
    )
    titles = layout["titles"]
    assert titles[:3] == ["q·k", "× 0.25", "mask (−∞)"] and titles[3].startswith("softmax")
    token = int(link(page)["token"])
    rows = page.evaluate("() => document.querySelector('.st-key-inside_attention_detail .js-plotly-plot')"
                         ".layout.yaxis.ticktext")  # fmt: skip
    query_row = next(k for k, label in enumerate(rows) if label.startswith(f"{token}: "))
    assert layout["shapes"] and {s["y0"] for s in layout["shapes"]} == {query_row - 0.5}
    hover = hover_text(page, "inside_attention_strip", column=token)  # its weight on itself (the short prompt fits the window)
    assert hover.startswith(f"a_i· · {token}: ") and hover.endswith("%"), hover
    shot = plot_of(page, "inside_attention_detail").screenshot(timeout=SHOT_TIMEOUT)
    (SHOTS / "inside_01_attention_expanded.png").write_bytes(shot)
    assert outlined_pixels(shot) > 300  # the query row's outline is drawn in each matrix
    page.screenshot(path=str(SHOTS / "inside_02_page.png"), timeout=SHOT_TIMEOUT)


def test_a_click_on_a_layer_walks_through_its_block(tiny_server, browser):  # noqa: F811
    page = open_inside(browser, tiny_server)
    assert page.get_by_role("heading", name="Block 1").count() == 1  # the middle layer of three
    plot = plot_of(page, "inside_overview_chart")
    plot.wait_for(timeout=60_000)
    x, y = page.evaluate(
        "() => { const g = document.querySelector('.st-key-inside_overview_chart .js-plotly-plot');"
        " const xa = g._fullLayout.xaxis, ya = g._fullLayout.yaxis, box = g.getBoundingClientRect();"
        " const marker = g.data[1]; return [box.left + xa._offset + xa.l2p(marker.x[0]),"
        " box.top + ya._offset + ya.l2p(marker.y[0])]; }"
    )
    plot.hover()
    page.mouse.click(x, y)
    wait_for_link(page, "in_layer", "0")
    settle(page)
    no_exception(page, "after a click on layer 0")
    page.get_by_role("heading", name="Block 0").wait_for(timeout=60_000)
