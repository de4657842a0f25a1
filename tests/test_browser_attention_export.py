"""The head view's standalone HTML in a real headless Chromium: hovering a token dims the other
tokens' lines and draws its own on top; moving away restores the figure. Tiny model (the
behaviour is the page's script, not the model's). Screenshots go to test-output/browser/."""

from __future__ import annotations

import numpy as np
import pytest

from llm_flow.export import save_figure
from llm_flow.figures.attention import head_view_figure
from llm_flow.views.attention import head_view
from tests.conftest import PROMPT
from tests.test_browser import CHROMIUM, SHOT_TIMEOUT, SHOTS, browser  # noqa: F401  (fixture)
from tests.test_browser_attention import POINT_JS

pytestmark = pytest.mark.browser

# Per line trace (index, opacity as sent), and the segments the hover script drew on top.
STATE_JS = """() => {
  const gd = document.querySelector('.js-plotly-plot');
  const lines = gd._fullData.filter(t => t.mode === 'lines' && t.showlegend === false && t.meta !== 'hover');
  const hover = gd._fullData.filter(t => t.meta === 'hover');
  const segments = hover.flatMap(t => Array.from({length: t.y.length / 3}, (_, k) => [t.y[3 * k], t.y[3 * k + 1]]));
  return {opacities: lines.map(t => gd.data[t.index].opacity), hover: hover.length, segments: segments,
          colors: hover.map(t => t.line.color)};
}"""


@pytest.fixture(scope="module")
def exported(tiny_models, tmp_path_factory):
    """The head view of a tiny Llama (top-3 sources) as standalone HTML, and its figure."""
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (Debian package 'chromium'); browser tests skipped")
    run = tiny_models("llama").run(PROMPT)
    figure = head_view_figure(head_view(run, 1, top_k=3))
    path = save_figure(figure, tmp_path_factory.mktemp("html") / "head.html", title="Head view")
    return path, figure


def drawn_segments(figure, column: int) -> dict[float, int]:
    """Lines per token, from the figure's shown traces: column 0 counts lines out of each query,
    1 into each source."""
    ys = np.concatenate([np.asarray(t.y)[column::3] for t in figure.data
                         if t.mode == "lines" and t.showlegend is False and t.visible in (None, True)])  # fmt: skip
    values, counts = np.unique(ys, return_counts=True)
    return dict(zip(values.tolist(), counts.tolist()))


def test_hovering_a_token_isolates_its_lines_in_the_exported_head_view(browser, exported):  # noqa: F811
    path, figure = exported
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1100, "height": 1300})
    page.goto(path.as_uri())
    page.wait_for_function("() => { const g = document.querySelector('.js-plotly-plot'); return g && g._fullData; }")
    assert_hover_isolates(page, figure, ("attention_05_head_html_hover_query.png", "attention_06_head_html_hover_source.png"))
    page.close()


def assert_hover_isolates(page, figure, shots: tuple[str, str] | None = None) -> None:
    """Hover token 12 on the query side, then token 3 on the source side: every line but the
    token's own is dimmed and its own (all of them) drawn on top; moving away restores the page."""
    before = page.evaluate(STATE_JS)
    assert before["hover"] == 0 and all(0 < o <= 1 for o in before["opacities"])
    out_of, into = drawn_segments(figure, 0), drawn_segments(figure, 1)
    for k, (column, token) in enumerate(((0, 12), (1, 3))):
        point = page.evaluate(POINT_JS, token) if column == 0 else _source_point(page, token)
        page.mouse.move(*point)
        page.wait_for_function(f"() => ({STATE_JS})().hover > 0", timeout=30_000)
        page.wait_for_timeout(300)
        during = page.evaluate(STATE_JS)
        np.testing.assert_allclose(during["opacities"], np.array(before["opacities"]) * 0.12, rtol=1e-6)
        ends = [segment[column] for segment in during["segments"]]
        assert set(ends) == {-float(token)}  # only this token's lines are drawn on top
        assert len(ends) == (out_of if column == 0 else into)[-float(token)]  # all of them
        if shots:
            page.screenshot(path=str(SHOTS / shots[k]), timeout=SHOT_TIMEOUT)
        page.mouse.move(550, 5)  # off every token
        page.wait_for_function(f"() => ({STATE_JS})().hover === 0", timeout=30_000)
        assert page.evaluate(STATE_JS)["opacities"] == before["opacities"]


def _source_point(page, token: int) -> list[float]:
    """Page coordinates of a token on the right (source) side: the query point moved to x = 1."""
    return page.evaluate(
        """(token) => {
          const gd = document.querySelector('.js-plotly-plot');
          const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, box = gd.getBoundingClientRect();
          return [box.left + xa._offset + xa.d2p(1), box.top + ya._offset + ya.d2p(-token)];
        }""",
        token,
    )
