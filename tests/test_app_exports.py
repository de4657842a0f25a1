"""The Export menu of a page (AppTest, tiny models): width, height and PNG scale reach the files,
which are still made only on click, and a size out of range is a message with the files disabled,
with the CLI's limits (:func:`llm_flow.export.check_figure_size`)."""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ET

import pytest

from llm_flow.figures.route import figure_height
from llm_flow.routes.graph import shared_graph
from tests.app_helpers import active_run, download_files, record_downloads, start
from tests.test_export import needs_chromium


@pytest.fixture
def explorer(tiny_config, monkeypatch):
    """The Explorer on its first graph, with the download buttons' files watched."""
    seen = record_downloads(monkeypatch)
    return start(tiny_config, monkeypatch), seen


def test_the_menu_offers_the_figure_s_own_size_by_default(explorer):
    app, _ = explorer
    width, height, scale = (app.number_input(key=f"explorer_export_{name}") for name in ("width", "height", "scale"))
    assert width.value is None and height.value is None and scale.value == 1.0
    graph = shared_graph(active_run(app), -1, 0.04, True)  # the route on screen, kept with its Run
    assert height.placeholder == f"{figure_height(graph)} px"


@needs_chromium
def test_width_height_and_scale_reach_the_svg_and_png(explorer):
    app, seen = explorer
    app.number_input(key="explorer_export_width").set_value(640).run()
    app.number_input(key="explorer_export_height").set_value(480).run()
    app.number_input(key="explorer_export_scale").set_value(2.0).run()
    assert not app.error and not app.exception
    files = download_files(app, seen)
    png = files["PNG"][1]()  # made now, on "click": the button holds a callable
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == (1280, 960)
    svg = ET.fromstring(files["SVG"][1]())
    assert (svg.get("width"), svg.get("height")) == ("640", "480")
    assert '"width":640' in files["HTML"][1]().decode("utf-8")


@pytest.mark.parametrize(
    "name,value,message",
    [
        ("width", 50, "the figure width must be a whole number of pixels from 100 to 4000 (got 50)"),
        ("height", 9000, "the figure height must be a whole number of pixels from 100 to 4000 (got 9000)"),
        ("scale", 6.0, "the PNG scale must be a number from 0.25 to 4 (got 6.0)"),
    ],
)
def test_a_size_out_of_range_is_a_message_and_disables_the_files(explorer, name, value, message):
    app, _ = explorer
    app.number_input(key=f"explorer_export_{name}").set_value(value).run()
    assert not app.exception
    assert [e.value for e in app.error] == [message + ("; 2 gives twice the pixels each way, for print" if name == "scale" else "")]
    buttons = {b.label: b for b in app.download_button}
    assert all(buttons[fmt].disabled for fmt in ("HTML", "SVG", "PNG"))
    app.number_input(key=f"explorer_export_{name}").set_value(None if name != "scale" else 1.0).run()
    assert not app.error and not any(b.disabled for b in app.download_button if b.label in ("HTML", "SVG", "PNG"))
