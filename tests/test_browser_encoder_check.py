"""An encoder's route check in a real headless Chromium: the [MASK] prediction of the real
all-MiniLM-L6-v2 checked from the Explorer (a fragment rerun), then every page and back with no
exception. Screenshots go to test-output/browser/."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from tests.test_browser import SHOT_TIMEOUT, SHOTS, browser, server  # noqa: F401  (fixtures)
from tests.test_browser_state import no_exception, run_check, settle, tour

pytestmark = [pytest.mark.browser, pytest.mark.real_model]
PROMPT = "The capital of France is [MASK]."


def test_the_mask_route_of_minilm_is_checked_then_every_page_opens(server, browser, minilm):  # noqa: F811
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1600, "height": 1900})
    page.goto(f"{server}/?model=all-minilm-l6-v2&text={quote(PROMPT)}")
    page.get_by_text("Predicted at '[MASK]'").wait_for(timeout=180_000)
    settle(page)
    no_exception(page, "the Explorer on MiniLM")
    run_check(page)
    no_exception(page, "the route check of the [MASK]")
    assert page.get_by_text("random removed (median)").count() >= 1
    page.screenshot(path=str(SHOTS / "encoder_route_check.png"), full_page=True, timeout=SHOT_TIMEOUT)
    tour(page, "an encoder's route check")
    page.get_by_text("Predicted at '[MASK]'").wait_for(timeout=120_000)
    assert page.get_by_text("higher probability than").count() >= 1, "the check is still shown on the way back"
