"""Exported figures drawn where their axes say: every node of an exported route graph sits on the
tick label of its layer and its token, in the figure data, in the SVG that kaleido renders and in
the standalone HTML opened in Chromium. Positions are read back from the rendered files (SVG
transforms, the browser's bounding boxes), never from the code that placed them."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

import pytest

from llm_flow.export import figure_bytes, save_figure
from llm_flow.routes.nodes import NodeId
from tests.test_export import CHROMIUM, SHOTS, SVG, needs_chromium
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


def test_html_figure_data_puts_each_node_on_its_layer_tick(route):  # noqa: F811
    graph, fig, title = route
    page = figure_bytes(fig, "html", title).decode("utf-8")
    start = page.index("Plotly.newPlot(") + len("Plotly.newPlot(")
    decoder = json.JSONDecoder()
    _, at = decoder.raw_decode(page, page.index('"llm-flow-figure"', start))
    data, at = decoder.raw_decode(page, page.index("[", at))
    layout, _ = decoder.raw_decode(page, page.index("{", at))
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
def test_exported_html_shows_the_embeddings_on_the_emb_label_in_chromium(route, tmp_path):  # noqa: F811
    graph, fig, title = route
    playwright_sync = pytest.importorskip("playwright.sync_api")
    path = save_figure(fig, tmp_path / "route.html", title)
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(path.as_uri())
            page.locator("#llm-flow-figure .scatterlayer path.point").first.wait_for(timeout=30_000)
            drawn = page.evaluate(EMBEDDINGS_JS)
            SHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SHOTS / "route-html-axes.png"), full_page=True)
        finally:
            browser.close()
    labels, markers = drawn["labels"], drawn["markers"]
    assert len(markers) == sum(1 for n in graph if n.startswith("X"))
    spacing = labels["emb"] - labels["L0"]  # two levels: emb, A0, L0
    assert spacing > 10
    for y in markers:
        assert abs(y - labels["emb"]) < 2, f"an embedding at {y:.1f}; 'emb' at {labels['emb']:.1f}, 'L0' {labels['L0']:.1f}"
