"""End to end in a real headless Chromium: `streamlit run app.py`, wait for the graph, click a
node and an edge, and check that the side panel follows. Screenshots go to test-output/browser/."""

from __future__ import annotations

import re
import shutil

import pytest

from tests.browser_helpers import app_server
from tests.conftest import REPO

pytestmark = [pytest.mark.browser, pytest.mark.real_model]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SHOTS = REPO / "test-output" / "browser"
SHOT_TIMEOUT = 120_000  # a loaded CI machine can take long to settle fonts before a screenshot
LAUNCH_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
    "--disable-background-networking", "--disable-component-update",
]  # fmt: skip


@pytest.fixture(scope="module")
def server(smollm2):
    """The app as users start it, on the default config (SmolLM2 is already converted)."""
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (Debian package 'chromium'); browser tests skipped")
    with app_server(None, stop_timeout=30) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    playwright_sync = pytest.importorskip("playwright.sync_api")
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield browser
        browser.close()


def open_app(browser, url):
    page = browser.new_page(viewport={"width": 1600, "height": 1900})
    page.goto(url)
    page.get_by_text("Next token after").wait_for(timeout=180_000)
    page.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
    return page


POINT_JS = """(id) => {
  const gd = [...document.querySelectorAll('.js-plotly-plot')].find(g => g.data && g.data.some(
      t => t.customdata && t.customdata.includes(id)));
  const t = gd.data.find(t => t.customdata && t.customdata.includes(id));
  const i = t.customdata.indexOf(id);
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, box = gd.getBoundingClientRect();
  return [box.left + xa._offset + xa.l2p(t.x[i]), box.top + ya._offset + ya.l2p(t.y[i])];
}"""

IDS_JS = """() => {
  const gd = [...document.querySelectorAll('.js-plotly-plot')].find(g => g.data && g.data.some(
      t => t.name === 'FFN block'));
  return gd.data.flatMap(t => t.customdata || []);
}"""


def click_element(page, element_id: str) -> None:
    x, y = page.evaluate(POINT_JS, element_id)
    page.mouse.click(x, y)


def test_click_node_and_edge_updates_the_panels(server, browser):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = open_app(browser, server)
    page.wait_for_timeout(1500)
    page.screenshot(path=str(SHOTS / "01_first_screen.png"), timeout=SHOT_TIMEOUT)
    assert page.get_by_text("Next token after '·is'").is_visible()
    ids = page.evaluate(IDS_JS)

    ffn = next(i for i in ids if i.startswith("M2") and "->" not in i)
    click_element(page, ffn)
    page.get_by_text("ranked by contribution").wait_for(timeout=60_000)
    page.get_by_text(f"{ffn}: FFN of layer").wait_for()
    page.screenshot(path=str(SHOTS / "02_ffn_clicked.png"), timeout=SHOT_TIMEOUT)

    edge = next(i for i in ids if "->A" in i and i.split("->")[0].split("_")[1] != i.split("_")[-1])
    click_element(page, edge)
    page.get_by_text("Attention map").first.wait_for(timeout=60_000)
    source, target = edge.split("->")
    page.get_by_text(f"{source} → {target}").first.wait_for()
    assert page.get_by_text("Contribution map").first.is_visible()
    page.wait_for_timeout(1000)
    page.screenshot(path=str(SHOTS / "03_edge_clicked.png"), timeout=SHOT_TIMEOUT)

    node = next(i for i in ids if i.startswith("I29_") and "->" not in i)
    click_element(page, node)
    page.get_by_text("Logit lens").wait_for(timeout=60_000)
    page.wait_for_timeout(1000)
    page.screenshot(path=str(SHOTS / "04_node_clicked.png"), timeout=SHOT_TIMEOUT)
    page.close()


def test_two_sessions_with_different_prompts(server, browser):
    """Two live sessions on one server: each keeps its own prompt and selection."""
    first, second = open_app(browser, server), open_app(browser, server)
    second.get_by_label("Prompt", exact=True).click()  # the sidebar's prompt list
    second.get_by_role("option", name="When Mary and John went to the store, John gave a drink to").click()
    second.get_by_text(re.compile(r"for token 13 '·to'")).wait_for(timeout=120_000)
    node = next(i for i in first.evaluate(IDS_JS) if i.startswith("M") and "->" not in i)
    click_element(first, node)  # the first session reruns, on its own prompt
    first.get_by_text(f"{node}: FFN of layer").wait_for(timeout=60_000)
    assert first.get_by_text(re.compile(r"for token 4 '·is'")).is_visible()
    assert second.get_by_text(re.compile(r"for token 13 '·to'")).is_visible()
    assert second.get_by_text("Click a node or an edge").is_visible(), "the click stayed in the first session"
    second.screenshot(path=str(SHOTS / "05_second_session.png"), timeout=SHOT_TIMEOUT)
    first.close()
    second.close()


def view_text(page) -> dict[str, str]:
    """What identifies a view: the route caption, the token slider's value and the panel title."""
    caption = page.get_by_text(re.compile(r"\d+ nodes, \d+ edges for token")).first.inner_text()
    heading = page.locator("h3").filter(has_text=re.compile(r"→|: FFN of layer|: layer|: embedding")).first.inner_text()
    return {"caption": caption, "panel": heading}


def test_a_copied_link_reopens_the_same_view_in_a_fresh_browser(server, browser):
    first = open_app(browser, server)
    ids = first.evaluate(IDS_JS)
    edge = next(i for i in ids if "->A" in i and i.split("->")[0].split("_")[1] != i.split("_")[-1])
    click_element(first, edge)
    first.get_by_text("Attention map").first.wait_for(timeout=60_000)
    first.wait_for_timeout(1500)
    link = first.url
    assert "sel=" in link and "token=" in link  # settings at their defaults stay out of links
    original = view_text(first)
    first.screenshot(path=str(SHOTS / "06_link_original.png"), timeout=SHOT_TIMEOUT)

    context = browser.new_context(viewport={"width": 1600, "height": 1900})  # no cookies, no state
    fresh = context.new_page()
    fresh.goto(link)
    fresh.get_by_text("Attention map").first.wait_for(timeout=180_000)
    fresh.wait_for_timeout(1500)
    fresh.screenshot(path=str(SHOTS / "07_link_reopened.png"), timeout=SHOT_TIMEOUT)
    assert view_text(fresh) == original
    assert fresh.url == link
    first.close()
    context.close()


def test_export_buttons_give_files_that_open(server, browser, tmp_path):
    import struct
    import xml.etree.ElementTree as ElementTree

    page = open_app(browser, server)
    files = {}
    for fmt in ("HTML", "SVG", "PNG"):
        page.get_by_role("button", name="Export").click()
        with page.expect_download(timeout=180_000) as download:
            page.get_by_role("button", name=fmt, exact=True).click()
        files[fmt] = tmp_path / download.value.suggested_filename
        download.value.save_as(files[fmt])
        page.keyboard.press("Escape")
    assert files["HTML"].name.startswith("route-smollm2-135m-token4")

    offline = browser.new_context(offline=True)  # the HTML must need no server and no network
    viewer = offline.new_page()
    viewer.goto(files["HTML"].as_uri())
    viewer.locator(".js-plotly-plot .main-svg").first.wait_for(timeout=60_000)
    assert viewer.evaluate("() => document.querySelector('.js-plotly-plot').data.length") > 3
    viewer.screenshot(path=str(SHOTS / "08_exported_html_offline.png"), timeout=SHOT_TIMEOUT)
    offline.close()

    assert ElementTree.parse(files["SVG"]).getroot().tag.endswith("svg")
    png = files["PNG"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24])[0] >= 1000, "PNG at the figure's width or more"
    page.close()


LONG_TEXT = "The quick brown fox jumps over the lazy dog while the river runs past old mills and green fields. "


def test_a_long_analysis_leaves_the_app_usable_and_can_be_cancelled(server, browser):
    """A ~900-token forward pass (issue 21, item 5): its progress names the layer, another page
    can be read while it runs and the Explorer keeps the previous analysis; coming back finds it
    done. A second one cancelled leaves the previous analysis on screen, with the reason."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = open_app(browser, server)
    page.get_by_role("textbox", name="New prompt").fill(LONG_TEXT * 45)
    page.get_by_role("button", name="Analyse new prompt").click()
    page.get_by_text(re.compile(r"Forward pass over 901 tokens: layer \d+ of 30")).first.wait_for(timeout=180_000)
    page.get_by_role("link", name="Guide", exact=True).first.click()
    page.get_by_text("How to read llm-flow").first.wait_for(timeout=30_000)  # while the pass goes on
    page.screenshot(path=str(SHOTS / "long_01_guide_while_analysing.png"), timeout=SHOT_TIMEOUT)
    page.get_by_role("link", name="Explorer", exact=True).first.click()
    page.get_by_text(re.compile(r"for token 900 ")).first.wait_for(timeout=300_000)
    assert "Traceback" not in page.content()

    page.get_by_role("textbox", name="New prompt").fill(LONG_TEXT * 44)
    page.get_by_role("button", name="Analyse new prompt").click()
    page.get_by_text(re.compile(r"Forward pass over 881 tokens")).first.wait_for(timeout=180_000)
    page.get_by_role("button", name="Cancel").first.click()
    page.get_by_text("You cancelled the analysis. Still showing 'smollm2-135m' on the previous prompt.").wait_for(timeout=60_000)
    page.get_by_text(re.compile(r"for token 900 ")).first.wait_for(timeout=60_000)  # the previous analysis
    page.screenshot(path=str(SHOTS / "long_02_cancelled.png"), timeout=SHOT_TIMEOUT)
    assert "Traceback" not in page.content()
