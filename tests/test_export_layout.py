"""Exported figures drawn where their axes say: every node of an exported route graph sits on the
tick label of its layer and its token, in the figure data, in the SVG that kaleido renders and in
the standalone HTML opened in Chromium. Positions are read back from the rendered files (SVG
transforms, the browser's bounding boxes), never from the code that placed them."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import llm_flow

from llm_flow.export import figure_bytes, route_title, save_figure
from llm_flow.figures.playground import anatomy_figure, anatomy_title
from llm_flow.figures.route import route_figure
from llm_flow.routes.nodes import NodeId
from llm_flow.views.anatomy import anatomy
from tests.test_browser import browser  # noqa: F401  (fixture: one headless Chromium per module)
from tests.test_export import PROMPT, SHOTS, SVG, needs_chromium
from tests.test_export import route  # noqa: F401  (fixture: a tiny Llama's route, figure and two-line title)

TRANSLATE = re.compile(r"translate\(\s*([-0-9.e]+)[ ,]\s*([-0-9.e]+)\s*\)")


def layer_label(name: str) -> str | None:
    """The y tick label a node must sit on: ``emb`` for embeddings, ``L{l}`` for the residual after
    layer l (attention and FFN nodes lie between two labels)."""
    node = NodeId.parse(name)
    return "emb" if node.kind == "X" else f"L{node.layer}" if node.kind == "I" else None


def node_traces(fig) -> list[int]:
    """Indices of the traces whose points are nodes (their customdata are node names)."""
    return [i for i, t in enumerate(fig.data) if t.customdata is not None and "->" not in str(t.customdata[0])]


def html_figure(page: str) -> tuple[list, dict]:
    """The traces and the layout that a standalone HTML export hands to ``Plotly.newPlot``."""
    start = page.index("Plotly.newPlot(") + len("Plotly.newPlot(")
    decoder = json.JSONDecoder()
    _, at = decoder.raw_decode(page, page.index('"llm-flow-figure"', start))
    data, at = decoder.raw_decode(page, page.index("[", at))
    layout, _ = decoder.raw_decode(page, page.index("{", at))
    return data, layout


def test_html_figure_data_puts_each_node_on_its_layer_tick(route):  # noqa: F811
    graph, fig, title = route
    data, layout = html_figure(figure_bytes(fig, "html", title).decode("utf-8"))
    tick_y = dict(zip(layout["yaxis"]["ticktext"], layout["yaxis"]["tickvals"]))
    checked = 0
    for trace in data:
        for name, y in zip(trace.get("customdata") or [], trace.get("y") or []):
            if name in graph and layer_label(name) in tick_y:
                assert y == tick_y[layer_label(name)], f"{name} at y={y}"
                checked += 1
    assert checked >= sum(1 for n in graph if layer_label(n) in tick_y) > 0


def svg_ticks(root: ET.Element, axis: str) -> list[tuple[str, float]]:
    """Tick labels of an axis in drawing order, with the pixel of their tick (x or y)."""
    index = 0 if axis == "x" else 1
    ticks = []
    for group in root.iter(f"{SVG}g"):
        if group.get("class") == f"{axis}tick":
            text = group.find(f"{SVG}text")
            ticks.append(("".join(text.itertext()), float(TRANSLATE.search(text.get("transform")).group(1 + index))))
    return ticks


def svg_trace_points(root: ET.Element) -> list[list[tuple[float, float]]]:
    """The marker centres of every scatter trace, in trace order, in page pixels."""
    plot = next(g for g in root.iter(f"{SVG}g") if g.get("class") == "xy" and g.get("clip-path"))
    dx, dy = map(float, TRANSLATE.search(plot.get("transform")).groups())
    traces = [g for g in plot.iter(f"{SVG}g") if (g.get("class") or "").startswith("trace scatter")]
    points = []
    for trace in traces:
        paths = [p for p in trace.iter(f"{SVG}path") if "point" in (p.get("class") or "").split()]
        centres = (map(float, TRANSLATE.search(p.get("transform")).groups()) for p in paths)
        points.append([(dx + x, dy + y) for x, y in centres])
    return points


@needs_chromium
@pytest.mark.browser
def test_svg_draws_each_node_on_the_tick_labels_of_its_layer_and_token(route):  # noqa: F811
    graph, fig, title = route
    root = ET.fromstring(figure_bytes(fig, "svg", title, width=1000, height=700))
    y_ticks, x_ticks = dict(svg_ticks(root, "y")), [x for _, x in svg_ticks(root, "x")]
    assert "emb" in y_ticks and "L0" in y_ticks and len(x_ticks) == graph.graph["n_tokens"]
    points = svg_trace_points(root)
    checked = 0
    for index in node_traces(fig):
        trace = fig.data[index]
        assert len(points[index]) == len(trace.customdata)
        for name, (x, y) in zip(trace.customdata, points[index]):
            node = NodeId.parse(name)
            label = layer_label(name)
            if label in y_ticks:
                assert abs(y - y_ticks[label]) < 1, f"{name} drawn at y={y:.1f}, {label!r} at {y_ticks[label]:.1f}"
                checked += 1
            if node.kind != "M":  # FFN squares sit right of their column
                assert abs(x - x_ticks[node.position]) < 1, f"{name} drawn at x={x:.1f}"
    assert checked > 0


EMBEDDINGS_JS = """() => {
  const gd = document.getElementById('llm-flow-figure');
  const centre = e => { const r = e.getBoundingClientRect(); return (r.top + r.bottom) / 2; };
  const labels = Object.fromEntries([...gd.querySelectorAll('.ytick text')].map(t => [t.textContent, centre(t)]));
  const index = gd.data.findIndex(t => t.name === 'token embedding');
  const trace = gd.querySelectorAll('.scatterlayer .trace')[index];
  return {labels: labels, markers: [...trace.querySelectorAll('path.point')].map(centre)};
}"""


@needs_chromium
@pytest.mark.browser
def test_exported_html_shows_the_embeddings_on_the_emb_label_in_chromium(route, browser, tmp_path):  # noqa: F811
    graph, fig, title = route
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto(save_figure(fig, tmp_path / "route.html", title).as_uri())
    page.locator("#llm-flow-figure .scatterlayer path.point").first.wait_for(timeout=30_000)
    drawn = page.evaluate(EMBEDDINGS_JS)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "route-html-axes.png"), full_page=True)
    page.close()
    labels, markers = drawn["labels"], drawn["markers"]
    assert len(markers) == sum(1 for n in graph if n.startswith("X"))
    assert labels["emb"] - labels["L0"] > 10  # two levels apart: emb, A0, L0
    for y in markers:
        assert abs(y - labels["emb"]) < 2, f"an embedding at {y:.1f}; 'emb' at {labels['emb']:.1f}, 'L0' {labels['L0']:.1f}"


BOXES_JS = """() => {
  const boxes = selector => [...document.querySelectorAll(selector)].map(e => {
    const r = e.getBoundingClientRect(); return {text: e.textContent, box: [r.left, r.top, r.right, r.bottom]}; });
  const svg = document.querySelector('svg.main-svg');
  return {title: boxes('.gtitle'), annotations: boxes('.annotation-text'), xticks: boxes('.xtick text'),
          legend: boxes('.legend .legendtext'), symbols: boxes('.legend .legendpoints'), size: [svg.width.baseVal.value, svg.height.baseVal.value]};
}"""


def drawn_boxes(browser, path: Path, width: int = 1000, height: int = 900) -> dict:  # noqa: F811
    """Bounding boxes of a rendered figure's texts (title, subplot titles, x tick labels, legend
    entries), as Chromium lays them out, for a figure file (SVG or HTML)."""
    page = browser.new_page(viewport={"width": width, "height": height})
    if path.suffix == ".svg":  # inline in a page: Chromium does not screenshot a bare SVG document
        page.set_content(f"<html><body style='margin:0'>{path.read_text(encoding='utf-8')}</body></html>")
    else:
        page.goto(path.as_uri())
    page.locator("svg.main-svg").first.wait_for(timeout=30_000)
    page.wait_for_timeout(200)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"layout-{path.stem}-{width}.png"), full_page=True)
    boxes = page.evaluate(BOXES_JS)
    page.close()
    return boxes


def overlaps(first: list[dict], second: list[dict]) -> list[tuple[str, str]]:
    """Pairs of texts whose boxes intersect (by more than a pixel)."""
    def meet(a, b):
        return min(a[2], b[2]) - max(a[0], b[0]) > 1 and min(a[3], b[3]) - max(a[1], b[1]) > 1

    return [(a["text"], b["text"]) for a in first for b in second if meet(a["box"], b["box"])]


@needs_chromium
@pytest.mark.browser
def test_exported_anatomy_title_clears_the_subplot_titles_and_carries_no_click_hint(tiny_models, browser, tmp_path):  # noqa: F811
    run = tiny_models("llama").run(PROMPT)
    result = anatomy(run, 5)
    path = tmp_path / "anatomy.svg"
    path.write_bytes(figure_bytes(anatomy_figure(result), "svg", anatomy_title("tiny-llama", run.prompt, result)))
    boxes = drawn_boxes(browser, path)
    assert len(boxes["title"]) == 1 and len(boxes["annotations"]) == 3
    assert overlaps(boxes["title"], boxes["annotations"]) == []
    texts = " ".join(ET.parse(path).getroot().itertext()).lower()
    assert "anatomy of the prediction" in texts and "click" not in texts, "UI hints stay in the app"


@needs_chromium
@pytest.mark.browser
def test_turned_token_labels_of_a_long_prompt_clear_the_legend(tiny_models, browser, tmp_path):  # noqa: F811
    prompt = "When Mary and John went to the supermarket yesterday, extraordinarily_long_identifiers appeared. " * 3
    run = tiny_models("llama").run(prompt)
    graph = llm_flow.build_graph(run, target=-1, threshold=0.04, renormalize=True)
    title = route_title("tiny-llama", prompt, run.str_tokens[-1], run.n_tokens - 1, 0.04, True)
    for compact in (False, True):
        fig = route_figure(graph, compact=compact)
        assert fig.layout.xaxis.tickangle != 0, "enough columns to turn the labels"
        app_like = tmp_path / f"route-app-{compact}.html"  # the figure as the page draws it
        app_like.write_text(fig.to_html(include_plotlyjs=True, full_html=True), encoding="utf-8")
        exported = tmp_path / f"route-export-{compact}.svg"
        exported.write_bytes(figure_bytes(fig, "svg", title, width=1000, height=832))
        for path, width in ((app_like, 900), (app_like, 560), (exported, 1000)):  # 560: the legend wraps
            boxes = drawn_boxes(browser, path, width=width)
            assert len(boxes["legend"]) == 5 and len(boxes["xticks"]) == len(fig.layout.xaxis.ticktext)
            legend = boxes["legend"] + boxes["symbols"]
            assert overlaps(boxes["xticks"], legend) == [], f"{path.name}: labels run into the legend"
            bottom = max(box["box"][3] for group in ("xticks", "legend", "symbols") for box in boxes[group])
            assert bottom <= boxes["size"][1], f"{path.name}: cut at the bottom edge"
