"""An encoder–decoder in a real headless Chromium, as a user goes through it: type a source,
let the Playground write its target, look at the three attention tabs, open the Explorer's route
across both stacks and click a cross-attention edge, and come back with the source, the target
and the tab kept. Tiny random Marian at unit gain (so that its routes have cross edges): the
pages and the session's state are the point. Screenshots go to test-output/browser/seq2seq_*.png."""

from __future__ import annotations

import json
import re
from urllib.parse import parse_qs, urlparse

import pytest

from tests.browser_helpers import app_server
from tests.test_browser_attention import click_point
from tests.test_browser import CHROMIUM, SHOT_TIMEOUT, SHOTS, browser, click_element  # noqa: F401  (fixture)
from tests.test_browser_state import wait_for_link
from tests.test_seq2seq_routes import save_strong_model

pytestmark = pytest.mark.browser
SOURCE = "The cat sat on the mat."


@pytest.fixture(scope="module")
def seq2seq_server(tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (Debian package 'chromium'); browser tests skipped")
    root = tmp_path_factory.mktemp("browser_seq2seq")
    folder = save_strong_model("marian", root / "marian")
    (root / "prompts.json").write_text(json.dumps(["The capital of France is Paris."]))
    config = root / "local.json"
    config.write_text(json.dumps({"default_model": "tiny-marian", "models": {"tiny-marian": {"source": str(folder)}},
                                  "prompts_file": "prompts.json", "limits": {"max_prompt_tokens": 48}}))  # fmt: skip
    with app_server(config) as url:
        yield url


ROUTE_IDS_JS = """() => {
  const gd = [...document.querySelectorAll('.js-plotly-plot')].find(g => g.data && g.data.some(
      t => t.customdata && t.customdata.some(c => String(c).startsWith('dec:'))));
  return gd ? gd.data.flatMap(t => t.customdata || []) : [];
}"""
TITLE_JS = ("() => { const g = document.querySelector('.js-plotly-plot'); "
            "return g && g.layout && g.layout.title ? g.layout.title.text : null; }")  # the route's figure has none


def wait_for_title(page, start: str) -> str:
    page.wait_for_function(f"() => {{ const t = ({TITLE_JS})(); return t && t.startsWith({json.dumps(start)}); }}",
                           timeout=120_000)  # fmt: skip
    page.wait_for_timeout(800)
    return page.evaluate(TITLE_JS)


def shoot(page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"seq2seq_{name}.png"), full_page=True, timeout=SHOT_TIMEOUT)


def no_traceback(page) -> None:
    assert page.locator("[data-testid='stException']").count() == 0


def test_type_a_source_write_its_target_see_three_tabs_and_come_back(seq2seq_server, browser):  # noqa: F811
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1600, "height": 1500})
    page.goto(f"{seq2seq_server}/playground")
    page.get_by_text("Write the target").wait_for(timeout=180_000)

    page.get_by_role("textbox", name="New source").fill(SOURCE)
    page.get_by_role("button", name="Analyse new source").click()
    page.get_by_text(f"Source {SOURCE}").wait_for(timeout=120_000)
    page.get_by_role("button", name="Write a target").click()
    page.get_by_text("Written token by token").wait_for(timeout=120_000)
    no_traceback(page)
    shoot(page, "01_playground_written")
    target = page.locator("text=Target").first.inner_text()
    header = page.get_by_text(f"Source {SOURCE}").inner_text()

    page.get_by_role("link", name="Attention").first.click()
    wait_for_title(page, "Encoder self-attention")
    shoot(page, "02_encoder_tab")
    page.get_by_text("Decoder self-attention", exact=True).click()
    wait_for_title(page, "Decoder self-attention")
    shoot(page, "03_decoder_tab")
    page.get_by_text("Cross-attention", exact=True).click()
    wait_for_title(page, "Cross-attention")
    page.get_by_text("Model view", exact=True).click()
    wait_for_title(page, "Cross-attention: All layers")
    shoot(page, "04_cross_tab_model_view")
    click_point(page, [1, 2])  # the tile of layer 1, head 2 opens in the head view
    wait_for_title(page, "Cross-attention: Layer 1")
    shoot(page, "04b_cross_tile_opened")
    no_traceback(page)

    page.get_by_role("link", name="Explorer").first.click()
    page.get_by_text(re.compile(r"\d+ nodes, \d+ edges for decoder position \d+")).wait_for(timeout=120_000)
    # the caption is written before Plotly draws the figure (on a loaded machine, a while before)
    page.wait_for_function(f"() => ({ROUTE_IDS_JS})().length > 0", timeout=120_000)
    ids = page.evaluate(ROUTE_IDS_JS)
    assert any(i.startswith("enc:") for i in ids) and any(i.startswith("dec:") for i in ids), ids[:10]
    shoot(page, "05_explorer_route")
    cross = next((i for i in ids if i.startswith("enc:") and "->dec:C" in i), None)
    assert cross is not None, f"the route has no cross-attention edge: {ids}"
    click_element(page, cross)
    page.get_by_text("Cross-attention of decoder layer").wait_for(timeout=60_000)
    start, end = cross.split("->")
    page.get_by_text(f"{start} → {end}").first.wait_for()
    assert page.get_by_text(re.compile(r"^cross edge, weight \d\.\d{3}")).first.is_visible()
    page.wait_for_timeout(1000)
    no_traceback(page)
    shoot(page, "05b_cross_edge_clicked")
    wait_for_link(page, "sel", cross)  # the selection travels in the link
    page.get_by_role("link", name="Attention").first.click()
    wait_for_title(page, "Cross-attention: Layer 1")  # the tab, the view and the layer were kept
    assert page.get_by_text(f"Source {SOURCE}").inner_text() == header  # and the pair
    params = parse_qs(urlparse(page.url).query)
    assert params["att_stack"] == ["cross"] and "target_ids" in params
    shoot(page, "06_back_on_attention")

    page.get_by_role("link", name="Attribution").first.click()
    page.get_by_text("ALTI+ rollout", exact=True).click()
    page.get_by_text(re.compile("^alti rollout — share")).wait_for(timeout=120_000)  # the heatmap's title
    page.get_by_text("Step scores").wait_for(timeout=60_000)
    page.wait_for_timeout(800)
    shoot(page, "07_attribution_alti_plus")

    page.get_by_role("link", name="Playground").first.click()
    page.get_by_text("Written token by token").wait_for(timeout=60_000)  # the written target is still the pair's
    assert page.locator("text=Target").first.inner_text() == target
    no_traceback(page)
    page.close()
