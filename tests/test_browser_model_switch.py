"""Settings kept across a switch between a decoder and an encoder–decoder, in a real browser:
every page's widgets show what the session holds (its link), not their defaults.

A decoder's page and an encoder–decoder's variant of it draw different widgets bound to the same
settings (the Playground's sampling, the Attention controls, the Attribution method, the
Explorer's compact toggle), and the encoder–decoder's Playground and the Attribution page draw
different widgets for the one target step. Only a browser shows what a widget draws; AppTest
reads the values the script holds. Tiny random Llama and Marian: the widgets are the point.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.browser_helpers import app_server
from tests.test_browser import CHROMIUM, browser  # noqa: F401  (fixture)
from tests.test_browser_state import link, no_exception, settle, wait_for_link
from tests.tiny_models import save_tiny_model

pytestmark = pytest.mark.browser
DECODER, PAIR = "tiny-llama", "tiny-marian"
AGGREGATES = {"mean": "mean of heads", "max": "max of heads"}

# What each widget shows, by its label: a radio's checked option, a select box's or number
# input's text, a slider's thumb label(s), a button group's pressed option(s), a toggle's state.
WIDGETS_JS = """() => {
  const out = {};
  const kinds = ['stRadio', 'stSelectbox', 'stNumberInput', 'stSlider', 'stButtonGroup', 'stCheckbox'];
  for (const label of document.querySelectorAll('[data-testid="stMain"] [data-testid="stWidgetLabel"]')) {
    const root = label.closest(kinds.map(k => `[data-testid="${k}"]`).join(','));
    if (!root) continue;
    const kind = root.getAttribute('data-testid');
    let value;
    const texts = selector => [...root.querySelectorAll(selector)].map(e => e.innerText.trim()).join(',');
    if (kind === 'stRadio') value = root.querySelector('input:checked').closest('label').innerText.trim();
    else if (kind === 'stSlider') value = texts('[data-testid="stSliderThumbValue"]');
    else if (kind === 'stButtonGroup') value = texts('button[aria-checked="true"]');
    else if (kind === 'stCheckbox') value = root.querySelector('input').checked;
    else value = root.querySelector('input').value;
    out[label.innerText.trim()] = value;
  }
  return out;
}"""


@pytest.fixture(scope="module")
def switch_server(tiny_folders, tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (Debian package 'chromium'); browser tests skipped")
    root = tmp_path_factory.mktemp("browser_model_switch")
    marian = save_tiny_model("marian", root / "marian")
    (root / "prompts.json").write_text(json.dumps(["The capital of France is"]))
    config: Path = root / "local.json"
    config.write_text(json.dumps({
        "default_model": DECODER, "prompts_file": "prompts.json", "limits": {"max_prompt_tokens": 64},
        "models": {DECODER: {"source": str(tiny_folders["llama"])}, PAIR: {"source": str(marian)}},
    }))  # fmt: skip
    with app_server(config) as url:
        yield url


def shown(page, *labels: str) -> dict[str, object]:
    """What the page's widgets show, once the widgets of `labels` are drawn (on a loaded machine
    the run may end after `settle` has looked)."""
    page.wait_for_function(f"(labels) => {{ const seen = ({WIDGETS_JS})(); return labels.every(l => l in seen); }}",
                           arg=list(labels), timeout=60_000)  # fmt: skip
    return page.evaluate(WIDGETS_JS)


def expect(page, where: str, wanted: dict[str, object]) -> None:
    """The widgets show `wanted` (label: shown value); no exception on the page."""
    no_exception(page, where)
    seen = shown(page, *wanted)
    wrong = {label: (seen.get(label), value) for label, value in wanted.items() if seen.get(label) != value}
    assert not wrong, f"{where}: (shown, held) {wrong}; link {link(page)}"


def switch_model(page, name: str) -> None:
    page.get_by_test_id("stSidebar").get_by_role("combobox", name="Model").click()
    page.get_by_role("option").filter(has_text=name).first.click()
    wait_for_link(page, "model", name)
    settle(page)


def go(page, name: str) -> None:
    page.get_by_role("link", name=name, exact=True).first.click()
    settle(page)


def choose(page, label: str, option: str) -> None:
    page.get_by_test_id("stMain").get_by_role("combobox", name=label).click()
    page.get_by_role("option", name=option, exact=True).click()
    settle(page)


def number(page, label: str, value: int) -> None:
    box = page.get_by_role("spinbutton", name=label)
    box.fill(str(value))
    box.press("Enter")
    settle(page)


def open_details(page) -> None:
    """The decoder's Attention keeps its window and heads controls in a (collapsed) expander."""
    if page.get_by_role("spinbutton", name="Top-k sources (0 = all)").count() == 0:
        page.get_by_text("Window, heads and sentence pairs").click()
        settle(page)


def test_each_page_shows_its_settings_after_switching_to_an_encoder_decoder_and_back(switch_server, browser):  # noqa: F811
    page = browser.new_page(viewport={"width": 1600, "height": 1600})
    page.goto(f"{switch_server}/attention")
    page.get_by_text("Where each head looked").first.wait_for(timeout=120_000)
    settle(page)

    choose(page, "Layer", "0")  # the middle layer (1) until chosen
    open_details(page)
    number(page, "Top-k sources (0 = all)", 2)
    choose(page, "Heads as", "mean of heads")
    wait_for_link(page, "att_aggregate", "mean")
    held = link(page)
    attention = {"View": "Head view", "Layer": held["att_layer"], "Top-k sources (0 = all)": held["att_top_k"],
                 "Heads as": AGGREGATES[held["att_aggregate"]]}  # fmt: skip
    assert attention["Layer"] == "0" and attention["Top-k sources (0 = all)"] == "2"
    for model in (PAIR, DECODER):
        switch_model(page, model)
        open_details(page)
        expect(page, f"Attention on {model}", attention)

    go(page, "Playground")
    number(page, "Top-k", 5)
    number(page, "Seed", 7)
    page.get_by_test_id("stSlider").filter(has_text="Temperature").get_by_role("slider").press("ArrowLeft")
    wait_for_link(page, "play_temp", "0.95")
    held = link(page)
    playground = {"Temperature": "0.95", "Top-k": held["play_top_k"], "Top-p": "1.00", "Seed": held["play_seed"]}
    assert (playground["Top-k"], playground["Seed"]) == ("5", "7")
    for model in (PAIR, DECODER):
        switch_model(page, model)
        expect(page, f"Playground on {model}", playground)

    go(page, "Attribution")
    page.get_by_text("Occlusion", exact=True).click()
    settle(page)
    number(page, "Window (tokens occluded at once)", 2)
    wait_for_link(page, "attr_window", "2")
    attribution = {"Method": "Occlusion", "Window (tokens occluded at once)": link(page)["attr_window"]}
    for model in (PAIR, DECODER):
        switch_model(page, model)
        expect(page, f"Attribution on {model}", attribution)

    go(page, "Explorer")
    page.get_by_text("Only the tokens the route reaches").click()  # a short prompt starts without
    wait_for_link(page, "compact", "1")
    for model in (PAIR, DECODER):
        switch_model(page, model)
        expect(page, f"Explorer on {model}", {"Only the tokens the route reaches": True})

    switch_model(page, PAIR)
    for name, wanted in (("Attention", attention), ("Playground", playground), ("Attribution", attribution)):
        go(page, name)  # every page again, first drawn on the other model
        expect(page, f"{name} on {PAIR} after the Explorer", wanted)


def step_slider(page) -> str:
    """The Playground's target step: its slider's label, e.g. '2: ar'."""
    return shown(page, "Target token")["Target token"]


def step_pills(page) -> str:
    """The Attribution page's target step: its pressed pill, e.g. '2 ar p=2.89e-03'."""
    return shown(page, "Generated token")["Generated token"]


def test_the_target_step_is_shown_on_the_playground_and_the_attribution_page(switch_server, browser):  # noqa: F811
    """An encoder–decoder's Playground (a slider) and Attribution page (pills) draw different
    widgets for the one target step: each must show the step the other chose (before the fix, the
    page drawn second showed its first step while the session held another)."""
    page = browser.new_page(viewport={"width": 1600, "height": 1600})
    page.goto(f"{switch_server}/playground?model={PAIR}&target=Paris+is+the+capital")
    page.get_by_text("One step of the target").first.wait_for(timeout=120_000)
    settle(page)
    slider = page.get_by_test_id("stSlider").filter(has_text="Target token").get_by_role("slider")
    for _ in range(2):
        slider.press("ArrowRight")
        settle(page)
    wait_for_link(page, "attr_step", "2")
    assert step_slider(page).startswith("2: "), step_slider(page)

    go(page, "Attribution")
    assert step_pills(page).startswith("2 "), step_pills(page)
    page.get_by_test_id("stButtonGroup").filter(has_text="Generated token").get_by_role("radio").nth(1).click()
    wait_for_link(page, "attr_step", "1")  # another step, chosen on the Attribution page
    settle(page)

    go(page, "Playground")
    assert step_slider(page).startswith("1: "), step_slider(page)
    go(page, "Attribution")
    assert step_pills(page).startswith("1 "), step_pills(page)
    no_exception(page, "the target step")
