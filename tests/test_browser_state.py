"""The session's state in a real browser, where fragments rerun alone: a route check, a panel
click or a temperature change (fragment reruns), then every page in the menu and back, with no
exception and every setting kept; a long check cancelled leaves the page as it was.

AppTest reruns the whole script for every click and never a fragment alone, so only a browser
shows what a fragment rerun followed by a page switch does to the session's state. Tiny random
models keep it quick: the state, not the model, is the point here.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse

import pytest

from tests.browser_helpers import app_server
from tests.test_browser import CHROMIUM, LAUNCH_ARGS, SHOT_TIMEOUT, SHOTS, browser  # noqa: F401  (fixture)

pytestmark = pytest.mark.browser
PAGES = ("Attention", "Attribution", "Playground", "Inside", "Dataset", "Guide", "Explorer")


@pytest.fixture(scope="module")
def tiny_server(tiny_config):
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (Debian package 'chromium'); browser tests skipped")
    with app_server(tiny_config) as url:
        yield url


def open_explorer(browser, url):
    page = browser.new_page(viewport={"width": 1600, "height": 1600})
    page.goto(url)
    page.get_by_text("Next token after").wait_for(timeout=120_000)
    return page


def settle(page) -> None:
    """Wait until the script run is over (Streamlit's running indicator gone)."""
    page.wait_for_timeout(400)
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=120_000)
    page.wait_for_timeout(300)


def no_exception(page, where: str) -> None:
    errors = page.locator('[data-testid="stException"]')
    assert errors.count() == 0, f"{where}: {errors.first.inner_text()[:500]}"
    assert "Traceback" not in page.content(), where


def link(page) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlparse(page.url).query).items()}


def wait_for_link(page, name: str, value: str) -> None:
    """The URL is updated when the (fragment) run that changed the setting ends."""
    try:
        page.wait_for_function("([n, v]) => new URLSearchParams(location.search).get(n) === v", arg=[name, value],
                               timeout=60_000)  # fmt: skip
    except Exception:
        raise AssertionError(f"the link never said {name}={value}: {page.url}") from None


def tour(page, what: str) -> None:
    """Every page in the menu, then back to the Explorer; no exception anywhere."""
    for name in PAGES:
        page.get_by_role("link", name=name, exact=True).first.click()
        settle(page)
        no_exception(page, f"{name} after {what}")


def run_check(page) -> None:
    page.get_by_text("Check this route on the model").click()
    page.get_by_role("spinbutton", name="Random draws").fill("2")
    page.get_by_role("spinbutton", name="Random draws").press("Enter")
    settle(page)
    page.get_by_role("button", name="Check this route").click()
    page.get_by_text("higher probability than").wait_for(timeout=120_000)
    settle(page)


def test_fragment_actions_then_every_page_keep_every_setting(tiny_server, browser):  # noqa: F811
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = open_explorer(browser, tiny_server)
    settle(page)

    run_check(page)  # a fragment rerun
    wait_for_link(page, "check", "1")
    before = link(page)
    tour(page, "Check this route")
    page.get_by_text("higher probability than").wait_for(timeout=60_000)  # the check is still open
    assert link(page) == before
    page.screenshot(path=str(SHOTS / "state_01_check_after_tour.png"), timeout=SHOT_TIMEOUT)

    temperature = page.get_by_role("spinbutton", name="Temperature")
    temperature.fill("2.5")
    temperature.press("Enter")  # a fragment rerun (the next-token panel)
    wait_for_link(page, "temp", "2.5")
    tour(page, "a temperature change")
    assert page.get_by_role("spinbutton", name="Temperature").input_value() == "2.50"
    assert link(page).get("temp") == "2.5"

    inspect = page.get_by_test_id("stSelectbox").filter(has_text="Inspect")
    inspect.click()
    page.get_by_role("option").filter(has_text="FFN block").first.click()  # a panel selection
    page.get_by_text("ranked by contribution").wait_for(timeout=60_000)
    settle(page)
    chosen = link(page)["sel"]
    page.get_by_test_id("stSlider").filter(has_text="Neurons shown").get_by_role("slider").press("ArrowRight")
    wait_for_link(page, "neurons", "21")  # a fragment rerun (the element panel)
    tour(page, "a panel change")
    assert link(page)["sel"] == chosen and link(page).get("neurons") == "21"
    page.get_by_text("ranked by contribution").wait_for(timeout=60_000)
    page.screenshot(path=str(SHOTS / "state_02_panel_after_tour.png"), timeout=SHOT_TIMEOUT)

    reopened = browser.new_page(viewport={"width": 1600, "height": 1600})
    reopened.goto(page.url)  # a copied link reopens the same view, check included
    reopened.get_by_text("higher probability than").wait_for(timeout=120_000)
    settle(reopened)
    assert link(reopened) == link(page)
    no_exception(reopened, "the reopened link")


def shown_tokens(page) -> list[str]:
    """What the token sliders on the page show (their thumbs' labels, e.g. '3: ·six'), once the
    page has drawn one (on a loaded machine the run may end after `settle` has looked)."""
    thumbs = page.get_by_test_id("stSlider").filter(has_text="Token").get_by_test_id("stSliderThumbValue")
    thumbs.first.wait_for(timeout=60_000)
    return [thumb.inner_text() for thumb in thumbs.all()]


def test_every_page_shows_the_token_the_session_explains(tiny_server, browser):  # noqa: F811
    """The token sliders of the Explorer, Attention and Inside are different widgets bound to the
    one shared token: a page opened after another must show the session's token, not its first
    (the page computed with the session's token while its slider showed token 0)."""
    page = open_explorer(browser, tiny_server)
    settle(page)
    explained = shown_tokens(page)
    assert len(explained) == 1 and not explained[0].startswith("0:"), explained
    for name in ("Attention", "Inside", "Explorer", "Inside", "Attention"):
        page.get_by_role("link", name=name, exact=True).first.click()
        settle(page)
        assert shown_tokens(page) == explained, name
    slider = page.get_by_test_id("stSlider").filter(has_text="Token").get_by_role("slider")
    slider.press("ArrowLeft")  # another token, chosen on the Attention page
    settle(page)
    chosen = shown_tokens(page)
    assert chosen != explained
    for name in ("Explorer", "Inside"):
        page.get_by_role("link", name=name, exact=True).first.click()
        settle(page)
        assert shown_tokens(page) == chosen, name
    no_exception(page, "the token sliders")


def test_a_cancelled_check_leaves_the_previous_result(tiny_server, browser):  # noqa: F811
    page = open_explorer(browser, tiny_server)
    settle(page)
    run_check(page)
    first = page.get_by_test_id("stDataFrame").filter(has_text="route only").inner_text()
    draws = page.get_by_role("spinbutton", name="Random draws")
    draws.fill("200")
    draws.press("Enter")
    settle(page)
    page.get_by_role("button", name="Check this route").click()
    page.get_by_role("button", name="Cancel").wait_for(timeout=60_000)
    page.get_by_role("button", name="Cancel").click()
    page.get_by_text("The route check was cancelled").wait_for(timeout=60_000)
    settle(page)
    no_exception(page, "after Cancel")
    assert page.get_by_role("button", name="Cancel").count() == 0
    assert page.get_by_test_id("stDataFrame").filter(has_text="route only").inner_text() == first
    page.screenshot(path=str(SHOTS / "state_03_check_cancelled.png"), timeout=SHOT_TIMEOUT)


def heatmap_title(page) -> str:
    page.wait_for_function("() => { const g = document.querySelector('.js-plotly-plot'); return g && g.layout; }",
                           timeout=120_000)  # fmt: skip
    return page.evaluate("() => document.querySelector('.js-plotly-plot').layout.title.text")


def test_a_cancelled_attribution_leaves_the_previous_result(tiny_server, browser):  # noqa: F811
    page = browser.new_page(viewport={"width": 1500, "height": 1500})
    page.goto(f"{tiny_server}/attribution?attr_method=saliency")
    page.get_by_text("Step scores").wait_for(timeout=120_000)
    settle(page)
    assert "saliency" in heatmap_title(page)

    # Integrated gradients over 40 generated tokens at 256 points: ten thousand passes and more.
    page.get_by_role("spinbutton", name="Tokens to generate (greedy)").fill("40")
    page.get_by_role("spinbutton", name="Tokens to generate (greedy)").press("Enter")
    settle(page)  # saliency of the 40 tokens: quick
    title = heatmap_title(page)
    page.get_by_text("Integrated gradients", exact=True).click()
    settle(page)
    page.get_by_role("spinbutton", name="Integration points").fill("256")
    page.get_by_role("spinbutton", name="Integration points").press("Enter")
    page.get_by_role("button", name="Compute").click()
    page.get_by_role("button", name="Cancel").wait_for(timeout=60_000)
    page.get_by_role("button", name="Cancel").click()
    page.get_by_text("Integrated gradients was cancelled").wait_for(timeout=60_000)
    settle(page)
    no_exception(page, "after Cancel on the Attribution page")
    assert page.get_by_role("button", name="Cancel").count() == 0
    page.get_by_text("the previous result").wait_for()
    assert heatmap_title(page) == title
    page.screenshot(path=str(SHOTS / "state_04_attribution_cancelled.png"), timeout=SHOT_TIMEOUT)


RANGES_JS = """(id) => {
  const gd = [...document.querySelectorAll('.js-plotly-plot')].find(g => g.data && g.data.some(
      t => t.customdata && t.customdata.includes(id)));
  const t = gd.data.find(t => t.customdata && t.customdata.includes(id));
  const i = t.customdata.indexOf(id);
  return {x: t.x[i], y: t.y[i], xr: gd._fullLayout.xaxis.range, yr: gd._fullLayout.yaxis.range};
}"""


def test_find_a_node_selects_and_centres_it(tiny_server, browser):  # noqa: F811
    page = open_explorer(browser, tiny_server)
    settle(page)
    last = int(link(page)["token"])
    box = page.get_by_role("textbox", name="Find a node")
    box.fill(f"M1_{last}")
    box.press("Enter")
    page.get_by_text(f"M1_{last}: FFN of layer 1").wait_for(timeout=60_000)
    settle(page)
    page.wait_for_function("""(id) => [...document.querySelectorAll('.js-plotly-plot')].some(g => g.data && g.data.some(
        t => t.customdata && t.customdata.includes(id)))""", arg=f"M1_{last}", timeout=60_000)  # redrawn
    seen = page.evaluate(RANGES_JS, f"M1_{last}")
    assert seen["xr"][0] < seen["x"] < seen["xr"][1] and seen["yr"][0] < seen["y"] < seen["yr"][1], seen
    assert seen["xr"][1] - seen["xr"][0] < last, "the view is zoomed on the node, not the whole prompt"
    no_exception(page, "after Find")
    page.screenshot(path=str(SHOTS / "state_05_found_node.png"), timeout=SHOT_TIMEOUT)
    box.fill("no such token anywhere")
    box.press("Enter")
    settle(page)
    no_exception(page, "after a search that finds nothing")


def test_two_sessions_at_once_keep_their_own_pages_and_analyses(tiny_server):
    """Two browsers act at the same moment (each in its own thread, as the server runs each
    session's script in its own thread): each ends on its own page, prompt and settings."""
    import threading

    from playwright.sync_api import sync_playwright

    plans = {"one": ("0", "attention", "Where each head looked"), "two": ("1", "playground", "can be drawn")}
    seen, errors = {}, []
    barrier = threading.Barrier(len(plans))

    def session(name: str) -> None:
        prompt, page_name, marker = plans[name]
        try:
            with sync_playwright() as p:
                chromium = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
                page = chromium.new_page(viewport={"width": 1400, "height": 1200})
                page.goto(tiny_server)
                page.get_by_text("Next token after").wait_for(timeout=120_000)
                barrier.wait(timeout=120)
                for _ in range(2):  # both sessions switch pages while the other does too
                    page.goto(f"{tiny_server}/{page_name}?prompt={prompt}&threshold=0.{prompt}5")
                    page.get_by_text(marker).first.wait_for(timeout=120_000)
                    settle(page)
                    page.get_by_role("link", name="Explorer", exact=True).first.click()
                    page.get_by_text("Next token after").wait_for(timeout=120_000)
                    settle(page)
                page.get_by_role("link", name=page_name.capitalize(), exact=True).first.click()
                page.get_by_text(marker).first.wait_for(timeout=120_000)
                settle(page)
                no_exception(page, f"session {name}")
                seen[name] = (link(page), page.url, page.content())
                chromium.close()
        except Exception as exc:  # reported below, with the session's name
            errors.append((name, repr(exc)))

    threads = [threading.Thread(target=session, args=(name,)) for name in plans]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not errors, errors
    for name, (prompt, page_name, marker) in plans.items():
        params, url, content = seen[name]
        assert params["prompt"] == prompt and params["threshold"] == f"0.{prompt}5", (name, params)
        assert f"/{page_name}" in url and marker in content
    assert plans["two"][2] not in seen["one"][2] and plans["one"][2] not in seen["two"][2]
