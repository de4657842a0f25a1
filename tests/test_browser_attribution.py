"""The Attribution page in a real headless Chromium on SmolLM2: the default method's heatmap, a
one-click switch to occlusion, a contrastive foil, words, and a generated token opened in the
Explorer. Screenshots go to test-output/browser/."""

from __future__ import annotations

import re

import pytest

from tests.test_browser import SHOT_TIMEOUT, SHOTS, browser, server  # noqa: F401  (fixtures)
from tests.test_browser_playground import settle

pytestmark = [pytest.mark.browser, pytest.mark.real_model]

TITLE_JS = "() => document.querySelector('.js-plotly-plot').layout.title.text"


def wait_for_title(page, pattern: str) -> str:
    page.wait_for_function(
        f"() => {{ const g = document.querySelector('.js-plotly-plot'); "
        f"return g && g.layout && /{pattern}/.test(g.layout.title.text); }}",
        timeout=180_000,
    )
    settle(page)
    return page.evaluate(TITLE_JS)


def test_methods_foil_words_and_the_way_to_the_explorer(server, browser):  # noqa: F811
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1500, "height": 1500})
    page.goto(f"{server}/attribution")  # the first configured prompt: "The capital of France is"
    assert "integrated gradients of the probability" in wait_for_title(page, "integrated gradients of the probability")
    page.get_by_text("Step scores").wait_for()
    page.screenshot(path=str(SHOTS / "attribution_01_integrated_gradients.png"), full_page=True, timeout=SHOT_TIMEOUT)

    page.get_by_text("Occlusion", exact=True).click()
    wait_for_title(page, "occlusion of the probability")
    assert page.get_by_text("IG delta").count() == 0  # the delta column is integrated gradients' own

    foil = page.get_by_role("textbox", name="Foil (contrastive)")
    foil.fill(" London")
    foil.press("Enter")
    title = wait_for_title(page, "London")
    assert "occlusion" in title
    page.get_by_text("Words", exact=True).click()
    settle(page)
    page.screenshot(path=str(SHOTS / "attribution_02_occlusion_foil_words.png"), full_page=True, timeout=SHOT_TIMEOUT)

    # The same bad foil twice: a message each time, the typed continuation settings kept.
    foil.fill(" London is")
    foil.press("Enter")
    page.get_by_text(re.compile(r"foil", re.I)).last.wait_for(timeout=60_000)
    settle(page)
    assert page.locator('[data-testid="stException"]').count() == 0
    assert page.locator('[data-testid="stAlertContentError"]').count() == 1
    foil.fill(" London is")
    foil.press("Enter")
    settle(page)
    assert page.locator('[data-testid="stAlertContentError"]').count() == 1
    foil.fill("")
    foil.press("Enter")
    wait_for_title(page, "occlusion of the probability")

    # The second generated token: the Explorer analyses the prompt plus " Paris" and explains
    # the prediction made at " Paris" (position 5).
    page.get_by_role("button", name=re.compile(r"^1: ")).click()
    page.get_by_text(re.compile(r"for token 5 '·Paris'")).first.wait_for(timeout=180_000)
    settle(page)
    assert "/attribution" not in page.url
    assert page.get_by_text("Next token after '·Paris'").is_visible()
    page.screenshot(path=str(SHOTS / "attribution_03_opened_in_explorer.png"), full_page=True, timeout=SHOT_TIMEOUT)
    page.close()
