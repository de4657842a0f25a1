"""`head_view(..., html_action="return")` in a real headless Chromium with every network request
refused: the page draws its lines from the plotly.js it carries, and hovering a token isolates
its lines as in the exported head view (llm-flow's own script, reused). Tiny model."""

from __future__ import annotations

import pytest
import torch
import transformers

from llm_flow.notebook import head_view
from tests.conftest import PROMPT
from tests.test_browser import CHROMIUM, SHOT_TIMEOUT, SHOTS, browser  # noqa: F401  (fixture)
from tests.test_browser_attention_export import assert_hover_isolates

pytestmark = pytest.mark.browser
LAYER = 1
DRAWN_JS = """() => {
  const gd = document.querySelector('.js-plotly-plot');
  return {paths: gd.querySelectorAll('.scatterlayer .trace path.js-line').length,
          menu: Array.from(gd.querySelectorAll('.updatemenu-item-text')).map(e => e.textContent)};
}"""


def offline_page(browser, path):  # noqa: F811
    """A page opened from `path` in a context where every request but file: ones is refused
    (and listed in the returned list)."""
    context = browser.new_context(viewport={"width": 1100, "height": 1300})
    refused = []
    context.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:")
                  else (refused.append(route.request.url), route.abort()))  # fmt: skip
    page = context.new_page()
    page.goto(path.as_uri())
    return context, page, refused


@pytest.fixture(scope="module")
def page_file(tiny_folders, tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (Debian package 'chromium'); browser tests skipped")
    folder = tiny_folders["llama"]
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        attentions = model(ids, output_attentions=True).attentions
    result = head_view(attentions, tokenizer.convert_ids_to_tokens(ids[0]), layer=LAYER, html_action="return")
    path = result.save(tmp_path_factory.mktemp("notebook") / "head_view.html")
    return path, result.figure


def test_returned_head_view_draws_offline_and_hover_isolates(browser, page_file):  # noqa: F811
    path, figure = page_file
    SHOTS.mkdir(parents=True, exist_ok=True)
    context, page, refused = offline_page(browser, path)
    page.wait_for_function("() => { const g = document.querySelector('.js-plotly-plot'); return g && g._fullData; }")
    drawn = page.evaluate(DRAWN_JS)
    assert drawn["paths"] > 0 and "Layer 1" in drawn["menu"]
    assert refused == []  # nothing was fetched: plotly.js is in the page
    page.screenshot(path=str(SHOTS / "notebook_01_head_view_offline.png"), timeout=SHOT_TIMEOUT)
    assert_hover_isolates(page, figure)  # the layers behind the menu take no part
    context.close()


def test_encoder_decoder_tabs_switch_between_three_drawn_figures(browser, tmp_path):  # noqa: F811
    """Marian's three attentions in one page: each tab shows its figure, drawn (lines), the others
    waiting off screen; nothing is fetched."""
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (Debian package 'chromium'); browser tests skipped")
    from tests.test_notebook_bertviz import seq2seq_attentions, three

    outputs, source, target = seq2seq_attentions("marian")
    path = head_view(**three(outputs, source, target)).save(tmp_path / "tabs.html")
    context, page, refused = offline_page(browser, path)
    page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length === 3")
    state = """() => Array.from(document.querySelectorAll('.llm-flow-tab')).map(tab => {
      const box = tab.getBoundingClientRect();
      return {onScreen: box.right > 0 && getComputedStyle(tab).visibility === 'visible',
              lines: tab.querySelectorAll('.scatterlayer .trace path.js-line').length,
              title: tab.querySelector('.gtitle').textContent};
    })"""
    for k, name in enumerate(["Encoder", "Decoder", "Cross"]):
        page.click(f"button:text-is('{name}')")
        tabs = page.evaluate(state)
        assert [tab["onScreen"] for tab in tabs] == [j == k for j in range(3)]
        assert tabs[k]["lines"] > 0 and tabs[k]["title"].startswith(f"{name}: Layer 0")
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "notebook_02_cross_attention_tab.png"), timeout=SHOT_TIMEOUT)
    assert refused == []
    context.close()
