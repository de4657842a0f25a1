"""The `llm-flow` command, run the way users run it."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import networkx as nx
import pytest

from llm_flow.cli import main


def test_routes_prints_a_summary_and_writes_node_link_json(tiny_config, tmp_path, capsys):
    out = tmp_path / "route.json"
    code = main(["--config", str(tiny_config), "routes", "--model", "tiny-gpt2",
                 "--prompt", "The capital of France is", "--threshold", "0.05", "--out", str(out)])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    for heading in ("Model   tiny-gpt2", "Target  position", "Route   threshold 0.05", "Heads   carrying", "Graph written"):
        assert heading in printed
    graph = nx.node_link_graph(json.loads(out.read_text()), edges="edges")
    assert graph.graph["threshold"] == 0.05 and graph.graph["model"] == "tiny-gpt2"
    assert graph.number_of_edges() > 0
    assert all(d["weight"] > 0.05 for _, _, d in graph.edges(data=True))
    target = f"I{graph.graph['n_layers'] - 1}_{graph.graph['target']}"
    assert all(nx.has_path(graph, node, target) for node in graph)


def test_routes_defaults_to_the_configured_model_and_first_prompt(tiny_config, capsys):
    assert main(["--config", str(tiny_config), "routes", "--no-renormalize", "--target", "2"]) == 0
    printed = capsys.readouterr().out
    assert "Model   tiny-llama" in printed and "not renormalised" in printed
    assert "Target  position 2" in printed


def test_loading_shows_llm_flows_progress_and_no_library_bar(tiny_config, capsys):
    assert main(["--config", str(tiny_config), "routes", "--model", "tiny-gpt2", "--prompt", "One, two"]) == 0
    err = capsys.readouterr().err
    assert "Loading tiny-gpt2…" in err  # llm-flow's own progress
    assert "Loading weights" not in err and "it/s]" not in err, err  # transformers' tqdm bar


def test_models_lists_the_config(tiny_config, capsys):
    assert main(["--config", str(tiny_config), "models"]) == 0
    printed = capsys.readouterr().out
    assert "* tiny-llama" in printed and "  tiny-gpt_neox" in printed


@pytest.mark.parametrize(
    "args,message",
    [
        (["routes", "--threshold", "2"], "the threshold must be a number from 0.001 to 0.5"),
        (["routes", "--prompt", ""], "the prompt is empty"),
        (["routes", "--model", "./missing"], "unknown model './missing'"),
        (["routes", "--target", "40", "--prompt", "hi"], "target position 40 is out of range"),
        (["routes", "--top", "0"], "--top must be at least 1"),
        (["routes", "--width", "50"], "the figure width must be a whole number of pixels from 100 to 4000 (got 50)"),
        (["attention", "--layer", "0", "--scale", "0"], "the PNG scale must be a number from 0.25 to 4 (got 0.0)"),
    ],
)
def test_errors_are_one_clear_line(tiny_config, capsys, args, message):
    assert main(["--config", str(tiny_config), *args]) == 2
    err = capsys.readouterr().err
    assert f"llm-flow: error: {message}" in err and "Traceback" not in err


def test_console_script_is_installed(tiny_config):
    result = subprocess.run(
        [sys.executable, "-m", "llm_flow.cli", "--config", str(tiny_config), "models"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "tiny-gemma2" in result.stdout
    installed = subprocess.run(["llm-flow", "--help"], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0 and "routes" in installed.stdout


HEAVY = ("torch", "transformers", "transformer_lens", "plotly", "streamlit")


def modules_loaded_by(args: list[str], config) -> tuple[int, set[str], str]:
    """Run the CLI in a fresh interpreter; report its exit code and which heavy libraries it imported."""
    probe = (
        "import json, runpy, sys\n"
        f"sys.argv = ['llm-flow', '--config', {str(config)!r}, *{args!r}]\n"
        "code = 0\n"
        "try:\n    runpy.run_module('llm_flow.cli', run_name='__main__')\n"
        "except SystemExit as exc:\n    code = exc.code\n"
        f"print('PROBE' + json.dumps([code, [m for m in {HEAVY!r} if m in sys.modules]]))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    line = next(line for line in result.stdout.splitlines() if line.startswith("PROBE"))
    code, loaded = json.loads(line.removeprefix("PROBE"))
    return code, set(loaded), result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["models"],
        ["routes", "--help"],
        ["routes", "--threshold", "7"],
        ["routes", "--prompt", "   "],
        ["routes", "--top", "0"],
        ["routes", "--out", "/nonexistent/dir/x.json"],
        ["routes", "--height", "9000"],
        ["routes", "--bogus"],
    ],
)
def test_help_listing_and_argument_errors_load_no_model_libraries(tiny_config, args):
    code, loaded, err = modules_loaded_by(args, tiny_config)
    assert not loaded, f"{args} imported {loaded}"
    assert code in (0, 2), err
    if code == 2:
        assert "Traceback" not in err and len(err.strip().splitlines()) <= 3


def test_unwritable_output_is_refused_before_the_analysis(tiny_config, tmp_path, capsys):
    target = tmp_path / "missing" / "route.json"
    assert main(["--config", str(tiny_config), "routes", "--out", str(target)]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {target}: the folder {target.parent} does not exist" in err


def test_routes_exports_the_figure_as_html_svg_and_png(tiny_config, tmp_path, capsys):
    import struct
    import xml.etree.ElementTree as ElementTree

    paths = {suffix: tmp_path / f"route{suffix}" for suffix in (".html", ".svg", ".png")}
    code = main(["--config", str(tiny_config), "routes", "--model", "tiny-gpt2", "--prompt", "The capital of France is",
                 "--html", str(paths[".html"]), "--svg", str(paths[".svg"]), "--png", str(paths[".png"])])  # fmt: skip
    if code == 2 and "Chromium" in capsys.readouterr().err:
        pytest.skip("no Chrome-family browser for SVG/PNG export")
    assert code == 0
    page = paths[".html"].read_text()
    assert "Information-flow routes" in page and "tiny-gpt2" in page and "<script" in page
    assert not re.search(r"<script[^>]*src=[\"']https?:", page), "the HTML must open offline (plotly.js inside)"
    root = ElementTree.parse(paths[".svg"]).getroot()
    assert root.tag.endswith("svg")
    png = paths[".png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert width > 400 and height > 300


@pytest.mark.parametrize("flag", ["--html", "--svg", "--png", "--out"])
def test_an_unwritable_export_path_is_refused_before_any_work(tiny_config, tmp_path, capsys, flag):
    suffix = {"--html": ".html", "--svg": ".svg", "--png": ".png", "--out": ".json"}[flag]
    target = tmp_path / "no" / "such" / f"route{suffix}"
    code, loaded, err = modules_loaded_by(["routes", flag, str(target)], tiny_config)
    assert code == 2 and not loaded, "refused before torch is imported"
    assert f"cannot write {target}" in err


def test_an_export_flag_with_the_wrong_suffix_is_refused(tiny_config, tmp_path, capsys):
    assert main(["--config", str(tiny_config), "routes", "--svg", str(tmp_path / "route.png")]) == 2
    assert "must end in .svg" in capsys.readouterr().err


def test_figure_size_options_reach_the_files(tiny_config, tmp_path, capsys):
    import struct
    import xml.etree.ElementTree as ElementTree

    png, svg = tmp_path / "route.png", tmp_path / "route.svg"
    code = main(["--config", str(tiny_config), "routes", "--model", "tiny-gpt2", "--prompt", "The capital of France is",
                 "--png", str(png), "--svg", str(svg), "--width", "640", "--height", "480", "--scale", "2"])  # fmt: skip
    if code == 2 and "Chromium" in capsys.readouterr().err:
        pytest.skip("no Chrome-family browser for SVG/PNG export")
    assert code == 0
    assert struct.unpack(">II", png.read_bytes()[16:24]) == (1280, 960)
    root = ElementTree.parse(svg).getroot()
    assert (root.get("width"), root.get("height")) == ("640", "480")
