"""Every page at 16,384 tokens, in a real browser, each within its own limits (issue 21): the
Explorer draws only the tokens the route reaches, the attention views show a window, the
Attribution page says what a method would cost and waits instead of running for hours, and no
page raises. (The limit leaves room for the Attribution page's generated continuation; at the
limit itself the page says the prompt is too long to continue.) Then back to the Explorer, and a reload of its link.

A tiny random Llama with its context raised: the prompt's length, not the model, is the point
(SmolLM2's shape at this length is `python -m benchmarks.routes --lengths 16384 --naive-max 0`).
"""

from __future__ import annotations

import json
import re

import pytest

from tests.browser_helpers import app_server
from tests.test_browser import CHROMIUM, SHOT_TIMEOUT, SHOTS, browser  # noqa: F401  (fixture)
from tests.test_browser_state import PAGES, no_exception, settle
from tests.tiny_models import CORPUS, build_model

pytestmark = pytest.mark.browser
LENGTH = 16_384
LONG_WAIT = 600_000  # a loaded 2-core machine: the forward pass and the first route


def long_prompt(tokenizer, length: int) -> str:
    """The corpus repeated to `length` tokens (with the tokenizer's start token) exactly."""
    text = " ".join(CORPUS)
    while len(tokenizer(text)["input_ids"]) < length:
        text = f"{text} {text}"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][: length - 1]
    prompt = tokenizer.decode(ids)
    assert len(tokenizer(prompt)["input_ids"]) == length, "the premise: the prompt is LENGTH tokens long"
    return prompt


@pytest.fixture(scope="module")
def long_server(tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (Debian package 'chromium'); browser tests skipped")
    root = tmp_path_factory.mktemp("browser_long_prompt")
    model, tokenizer = build_model("llama")
    model.config.max_position_embeddings = 2 * LENGTH  # rotary positions: the context is a number in the config
    model.save_pretrained(root / "llama")
    tokenizer.save_pretrained(root / "llama")
    (root / "prompts.json").write_text(json.dumps([long_prompt(tokenizer, LENGTH)]))
    config = root / "local.json"
    config.write_text(json.dumps({
        "default_model": "tiny-llama-long", "prompts_file": "prompts.json", "limits": {"max_prompt_tokens": LENGTH + 64},
        "models": {"tiny-llama-long": {"source": str(root / "llama")}},
    }))  # fmt: skip
    with app_server(config, stop_timeout=120) as url:
        yield url


def test_every_page_works_at_sixteen_thousand_tokens_within_its_limits(long_server, browser):  # noqa: F811
    page = browser.new_page(viewport={"width": 1600, "height": 1400})
    page.goto(long_server)
    page.get_by_text("Next token after").wait_for(timeout=LONG_WAIT)
    settle(page)
    no_exception(page, "Explorer")
    compact = page.get_by_test_id("stCheckbox").filter(has_text="Only the tokens the route reaches").locator("input")
    assert compact.is_checked(), "a long prompt opens on the tokens the route reaches"
    page.locator(".js-plotly-plot").first.wait_for(timeout=LONG_WAIT)
    page.screenshot(path=str(SHOTS / "long_prompt_01_explorer.png"), timeout=SHOT_TIMEOUT)
    link = page.url

    for name in PAGES:
        page.get_by_role("link", name=name, exact=True).first.click()
        settle(page)
        if name == "Attention":
            page.get_by_text("Where each head looked").first.wait_for(timeout=LONG_WAIT)
            settle(page)
            page.screenshot(path=str(SHOTS / "long_prompt_02_attention.png"), timeout=SHOT_TIMEOUT)
        if name == "Attribution":
            cost = page.get_by_text(re.compile(r"runs the model [\d,]+ times over up to 16,38\d tokens"))
            cost.first.wait_for(timeout=LONG_WAIT)
            assert "on this machine" in cost.first.inner_text(), "the cost is said in time on this machine"
            settle(page)
            assert page.locator('[data-testid="stPlotlyChart"]').count() == 0, "nothing computed unasked"
            page.screenshot(path=str(SHOTS / "long_prompt_03_attribution.png"), timeout=SHOT_TIMEOUT)
        no_exception(page, f"{name} at {LENGTH:,} tokens")

    page.goto(link)
    page.get_by_text("Next token after").wait_for(timeout=LONG_WAIT)
    settle(page)
    no_exception(page, "the Explorer's link reloaded")
