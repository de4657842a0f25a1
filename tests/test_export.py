"""Exports: standalone HTML that renders offline in a real Chromium, SVG that parses, PNG of the
requested size, CSV that round-trips, and clear errors for a missing browser or an unwritable
path. Each file is checked by reading it back with a different tool than the one that wrote it."""

from __future__ import annotations

import shutil
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import pytest

import llm_flow
from llm_flow.errors import ArgumentError, ExportError
from llm_flow.export import (
    check_figure_size,
    check_writable,
    figure_bytes,
    paper_figure,
    route_title,
    save_figure,
    save_table,
    table_csv,
)
from llm_flow.figures.route import route_figure
from tests.conftest import REPO

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
SHOTS = REPO / "test-output" / "export"
SVG = "{http://www.w3.org/2000/svg}"
PROMPT = "The capital of France is Paris. When Mary and John went to <the> store"


@pytest.fixture(scope="module")
def route(tiny_models):
    """A real route graph, its figure and the title an app or CLI would give it."""
    run = tiny_models("llama").run(PROMPT)
    graph = llm_flow.build_graph(run, target=-1, threshold=0.04, renormalize=True)
    title = route_title("tiny-llama", PROMPT, run.str_tokens[-1], run.n_tokens - 1, 0.04, True)
    return graph, route_figure(graph), title


def n_points(graph) -> int:
    """What the figure must draw: one marker per node and one clickable marker per edge."""
    return graph.number_of_nodes() + graph.number_of_edges()


@pytest.mark.browser
@needs_chromium
def test_html_is_standalone_and_renders_offline_in_chromium(route, tmp_path):
    graph, fig, title = route
    path = save_figure(fig, tmp_path / "route.html", title)
    text = path.read_text(encoding="utf-8")
    assert "<script src=" not in text.replace('<script src="data:', ""), "no external script"
    assert "Information-flow routes" in text and "<title>Information-flow routes" in text
    playwright_sync = pytest.importorskip("playwright.sync_api")
    requests: list[str] = []
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            context = browser.new_context(offline=True, viewport={"width": 1200, "height": 900})
            page = context.new_page()
            page.on("request", lambda request: requests.append(request.url))
            page.goto(path.as_uri())
            page.locator("#llm-flow-figure .main-svg").first.wait_for(timeout=30_000)
            drawn = page.evaluate("document.querySelectorAll('#llm-flow-figure .scatterlayer path.point').length")
            shown_title = page.locator("#llm-flow-figure .gtitle").text_content()
            background = page.evaluate(
                "getComputedStyle(document.querySelector('#llm-flow-figure .main-svg')).backgroundColor"
            )
            SHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SHOTS / "route-html.png"), full_page=True)
        finally:
            browser.close()
    assert [url for url in requests if not url.startswith(("file:", "data:"))] == []
    assert drawn == n_points(graph), "every node and every edge marker is drawn"
    assert "tiny-llama" in shown_title and "<the>" in shown_title, "the prompt is shown as typed"
    assert background in ("rgb(255, 255, 255)", "rgba(0, 0, 0, 0)")


@pytest.mark.browser
@needs_chromium
def test_svg_parses_with_white_background_title_and_every_point(route, tmp_path):
    graph, fig, title = route
    path = save_figure(fig, tmp_path / "route.svg", title, width=900, height=700)
    root = ET.parse(path).getroot()
    assert root.tag == f"{SVG}svg"
    assert (root.get("width"), root.get("height")) == ("900", "700")
    texts = "".join(root.itertext())
    assert "Information-flow routes" in texts and "tiny-llama" in texts
    points = [e for e in root.iter(f"{SVG}path") if "point" in (e.get("class") or "").split()]
    assert len(points) == n_points(graph)
    backgrounds = [e.get("style", "") for e in root.iter(f"{SVG}rect") if "bg" in (e.get("class") or "")]
    assert backgrounds and all("rgb(255, 255, 255)" in style for style in backgrounds)


@pytest.mark.browser
@needs_chromium
def test_png_has_the_requested_size_and_a_white_background(route, tmp_path):
    _, fig, title = route
    path = save_figure(fig, tmp_path / "route.png", title, width=640, height=480, scale=2)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == (1280, 960)
    image = pytest.importorskip("PIL.Image").open(path).convert("RGB")
    assert image.getpixel((2, 2)) == (255, 255, 255) and image.getpixel((1277, 957)) == (255, 255, 255)
    assert len(set(image.getdata())) > 10, "something is drawn"


def test_missing_browser_is_a_clear_error_and_writes_nothing(route, tmp_path, monkeypatch):
    _, fig, title = route
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-such-chromium"))
    for name in ("route.svg", "route.png"):
        with pytest.raises(ExportError, match="apt-get install chromium") as error:
            save_figure(fig, tmp_path / name, title)
        assert "no-such-chromium" in str(error.value)
        assert not (tmp_path / name).exists()
    not_executable = tmp_path / "chromium"
    not_executable.write_text("not a browser")
    monkeypatch.setenv("BROWSER_PATH", str(not_executable))
    with pytest.raises(ExportError, match="not an executable browser"):
        figure_bytes(fig, "png")
    assert save_figure(fig, tmp_path / "route.html", title).stat().st_size > 1_000_000, "HTML needs no browser"


def test_unwritable_paths_are_refused_before_any_work(route, tmp_path, monkeypatch):
    _, fig, _ = route
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-such-chromium"))  # would fail later, if reached
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    a_folder = tmp_path / "folder.png"
    a_folder.mkdir()
    cases = {
        tmp_path / "missing" / "route.png": "does not exist",
        a_file / "route.png": "is a file, not a folder",
        a_folder: "it is a folder",
        Path("/proc/llm-flow-route.png"): "cannot write",  # unwritable even for root
    }
    for path, message in cases.items():
        with pytest.raises(ArgumentError, match=message):
            save_figure(fig, path)
        with pytest.raises(ArgumentError, match=message):
            check_writable(path)
    with pytest.raises(ArgumentError, match="does not exist"):
        save_table(pd.DataFrame({"a": [1]}), tmp_path / "missing" / "t.csv")
    assert check_writable(tmp_path / "new.png") == tmp_path / "new.png"
    assert sorted(tmp_path.iterdir()) == [a_file, a_folder], "checking leaves nothing behind"


def test_unknown_suffixes_name_the_supported_ones(route, tmp_path):
    _, fig, _ = route
    with pytest.raises(ArgumentError, match=r"\.html, \.svg or \.png"):
        save_figure(fig, tmp_path / "route.jpg")
    with pytest.raises(ArgumentError, match=r"\.csv"):
        save_table(pd.DataFrame({"a": [1]}), tmp_path / "table.xlsx")
    with pytest.raises(ArgumentError, match="'html', 'svg' or 'png'"):
        figure_bytes(fig, "pdf")


def test_csv_round_trips_tokens_and_numbers(tmp_path):
    frame = pd.DataFrame(
        {
            "token": [" Paris", "a,b", 'say "hi"', "line\nbreak", "nan", "", "·é😀"],
            "probability": [0.5, 0.25, 1e-9, 0.1 + 0.2, 0.0, 1.0, 3.14159265358979],
            "rank": [1, 2, 3, 4, 5, 6, 7],
        }
    )
    path = save_table(frame, tmp_path / "table.csv")
    assert path.read_bytes() == table_csv(frame)
    back = pd.read_csv(path, keep_default_na=False)
    pd.testing.assert_frame_equal(back, frame)


def test_paper_style_changes_only_the_look(route):
    graph, fig, title = route
    styled = paper_figure(fig, title)
    assert styled.layout.paper_bgcolor == "white" and styled.layout.plot_bgcolor == "white"
    assert styled.layout.font.size >= 12 and "Information-flow routes" in styled.layout.title.text
    assert len(styled.data) == len(fig.data)
    assert [list(t.x) for t in styled.data] == [list(t.x) for t in fig.data]
    assert styled.layout.height == fig.layout.height and styled.layout.xaxis.ticktext == fig.layout.xaxis.ticktext
    assert fig.layout.title.text is None, "the original figure is not changed"


def test_route_title_escapes_and_shortens_the_prompt():
    title = route_title("gpt2", "<b>" + "x" * 200, " is", 7, 0.04, False)
    assert "<b>x" not in title and "&lt;b&gt;" in title
    assert "…" in title and "token 7" in title and "threshold 0.04 (not renormalised)" in title


def test_titles_show_quotes_as_typed():
    """Plotly reads titles as a little HTML but does not decode ``&quot;``: quotes stay as they are."""
    title = route_title("it's-a-model", "John's <b>book</b> & \"more\"", " it's", 3, 0.04, True)
    assert "&quot;" not in title and "&#x27;" not in title
    assert "John\\'s &lt;b&gt;book&lt;/b&gt; &amp;" in title and "it's-a-model" in title


@pytest.mark.parametrize(
    "size,message",
    [
        (dict(width=99), r"width must be a whole number of pixels from 100 to 4000 \(got 99\)"),
        (dict(height=4001), r"height must be a whole number of pixels from 100 to 4000 \(got 4001\)"),
        (dict(width=640.5), r"width must be a whole number of pixels from 100 to 4000 \(got 640.5\)"),
        (dict(width=True), r"width must be a whole number .* \(got True\)"),
        (dict(scale=0.2), r"scale must be a number from 0.25 to 4 \(got 0.2\)"),
        (dict(scale=float("nan")), r"scale must be a number from 0.25 to 4 \(got nan\)"),
    ],
)
def test_sizes_out_of_range_are_refused_before_any_rendering(route, tmp_path, monkeypatch, size, message):
    _, fig, _ = route
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-such-chromium"))  # would fail later, if reached
    with pytest.raises(ArgumentError, match=message):
        check_figure_size(**size)
    for fmt in ("html", "png"):
        with pytest.raises(ArgumentError, match=message):
            figure_bytes(fig, fmt, **size)
    with pytest.raises(ArgumentError, match=message):
        save_figure(fig, tmp_path / "route.svg", **size)
    assert not (tmp_path / "route.svg").exists()
    check_figure_size(100, 4000, 0.25)
    check_figure_size(4000, None, 4)
