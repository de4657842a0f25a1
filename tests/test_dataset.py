"""Routes over a dataset: statistics against build_graph, engines, resume, bad prompts, formats."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections import defaultdict

import networkx as nx
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import llm_flow
from llm_flow.dataset import ModelSpec, Settings, analyse_dataset, read_prompts
from llm_flow.errors import ArgumentError, DatasetError

PROMPTS = [
    "The capital of France is Paris.",
    "def add(a, b): return a + b",
    "One, two, three, four",
    "When Mary and John went to the store",
]
TABLES = ("prompts", "prompt_components", "components")
CLASSES = ("all", "target", "previous", "first", "other")


def table(folder, name: str) -> pa.Table:
    return pq.read_table(folder / f"{name}.parquet")


# --- the statistics, against an independent loop over build_graph's edges ---------------------


def expected_parts(graph: nx.DiGraph) -> dict[tuple[str, str], list[float]]:
    """(component id, position class) -> the weights of its parts in one graph, read straight off
    the edges: per-head shares of attention edges, the residual share of self edges and residual
    edges, and the FFN edges that leave an M node."""
    target, parts = graph.graph["target"], defaultdict(list)

    def klass(position: int) -> str:
        if position == target:
            return "target"
        if position == 0:
            return "first"
        return "previous" if position == target - 1 else "other"

    for start, end, data in graph.edges(data=True):
        layer, destination = graph.nodes[end]["layer"], graph.nodes[end]["position"]
        source = graph.nodes[start]["position"]
        found = []
        if data["kind"] == "attention":
            found += [(f"L{layer}.H{h}", source, w) for h, w in enumerate(data["heads"])]
            found.append((f"L{layer}.res", source, data["residual"]))
        elif data["kind"] == "residual":
            found.append((f"L{layer}.res", destination, data["weight"]))
        elif start.startswith("M"):
            found.append((f"L{layer}.FFN", destination, data["weight"]))
        for component, position, weight in found:
            if weight > 0:
                parts[component, klass(position)].append(weight)
                parts[component, "all"].append(weight)
    return parts


def expected_statistics(model, prompts: list[str], positions: str, threshold: float):
    """Per prompt and per dataset: routes and summed contributions, from build_graph directly."""
    per_prompt, graphs = {}, 0
    for number, text in enumerate(prompts, 1):
        run = model.run(text)
        chosen = range(run.n_tokens) if positions == "all" else [run.n_tokens - 1]
        sums = defaultdict(lambda: [0, 0.0])
        for target in chosen:
            graph = llm_flow.build_graph(run, target, threshold)
            graphs += 1
            parts = expected_parts(graph)
            # conservation: every kept edge into a residual node is split among the components
            into_residuals = sum(
                d["weight"] for _, end, d in graph.edges(data=True) if end[0] in "AI"
            )
            assert sum(sum(w) for (c, k), w in parts.items() if k == "all") == pytest.approx(into_residuals)
            for key, weights in parts.items():
                sums[key][0] += max(weights) > threshold
                sums[key][1] += sum(weights)
        per_prompt[str(number)] = dict(sums)
    return per_prompt, graphs


@pytest.mark.parametrize(("family", "positions"), [("llama", "all"), ("gpt_neox", "last"), ("gemma2", "last")])
def test_statistics_equal_those_from_build_graph(tiny_models, tmp_path, family, positions):
    model, threshold = tiny_models(family), 0.05
    prompts = PROMPTS[:2] if positions == "all" else PROMPTS
    summary = analyse_dataset(prompts, tmp_path, model, Settings(positions, threshold), progress=False)
    per_prompt, graphs = expected_statistics(model, prompts, positions, threshold)
    assert (summary.ok, summary.errors, summary.graphs) == (len(prompts), 0, graphs)

    rows = table(tmp_path, "prompt_components").to_pandas()
    for prompt_id, expected in per_prompt.items():
        got = rows[rows["prompt_id"] == prompt_id].set_index(["component", "position_class"])
        assert set(got.index) == set(expected)
        for key, (routes, contribution) in expected.items():
            assert got.loc[key, "routes"] == routes, key
            assert got.loc[key, "contribution"] == pytest.approx(contribution, abs=1e-9), key

    stats = table(tmp_path, "components").to_pandas().set_index(["component", "position_class"])
    n_layers, n_heads = model.info.n_layers, model.info.n_heads
    assert len(stats) == (n_layers * n_heads + 2 * n_layers) * len(CLASSES)  # every component, zeros too
    assert (stats["graphs"] == graphs).all()
    for key, row in stats.iterrows():
        routes = sum(p.get(key, (0, 0.0))[0] for p in per_prompt.values())
        total = sum(p.get(key, (0, 0.0))[1] for p in per_prompt.values())
        assert row["routes"] == routes, key
        assert row["frequency"] == pytest.approx(routes / graphs)
        assert row["total_contribution"] == pytest.approx(total, abs=1e-9)
        assert row["mean_contribution"] == pytest.approx(total / graphs, abs=1e-12)
    # every part of a graph falls in exactly one position class
    by_class = stats.reset_index().pivot(index="component", columns="position_class", values="total_contribution")
    assert (by_class[list(CLASSES[1:])].sum(axis=1) - by_class["all"]).abs().max() < 1e-9

    prompts_table = table(tmp_path, "prompts").to_pandas()
    assert list(prompts_table["prompt_id"]) == [str(k) for k in range(1, len(prompts) + 1)]
    first = model.run(prompts[0])
    assert list(prompts_table.loc[0, "tokens"]) == first.str_tokens
    assert prompts_table.loc[0, "n_targets"] == (first.n_tokens if positions == "all" else 1)

    metadata = json.loads((tmp_path / "metadata.json").read_text())
    assert metadata["config"] == {
        "model": model.name, "device": "cpu", "dtype": "float32", "max_prompt_tokens": model.max_prompt_tokens,
        "positions": positions, "threshold": threshold, "renormalize": True,
    }  # fmt: skip
    assert metadata["model"]["n_heads"] == n_heads
    assert {"llm-flow", "torch", "transformers"} <= set(metadata["versions"])
    assert metadata["prompts"] == {"ok": len(prompts), "error": 0, "graphs": graphs}


# --- bad prompts, resume, settings --------------------------------------------------------------


def test_bad_prompts_become_error_rows_and_the_batch_goes_on(tiny_folders, tmp_path):
    long_prompt = "one two three four five six seven eight nine ten " * 3
    prompts = ["The capital of France is", "", long_prompt, "   ", "One, two, three"]
    spec = ModelSpec(str(tiny_folders["llama"]), max_prompt_tokens=16)
    summary = analyse_dataset(prompts, tmp_path, spec, progress=False)
    assert (summary.ok, summary.errors, summary.processed) == (2, 3, 5)
    rows = table(tmp_path, "prompts").to_pandas().set_index("prompt_id")
    assert list(rows["status"]) == ["ok", "error", "error", "error", "ok"]
    assert "empty" in rows.loc["2", "error"] and "empty" in rows.loc["4", "error"]
    assert "over the configured limit" in rows.loc["3", "error"] and "16 tokens" in rows.loc["3", "error"]
    assert rows.loc["3", "tokens"] is None and rows.loc["3", "n_targets"] == 0
    components = table(tmp_path, "prompt_components").to_pandas()
    assert set(components["prompt_id"]) == {"1", "5"}
    assert summary.first_error.startswith("2: ")
    assert table(tmp_path, "components").column("graphs")[0].as_py() == 2


def test_resume_skips_done_prompts_and_gives_the_same_files(tiny_models, tmp_path):
    model = tiny_models("llama")
    first = analyse_dataset(PROMPTS[:2] + [""], tmp_path / "resumed", model, progress=False)
    assert (first.processed, first.skipped, first.errors) == (3, 0, 1)

    calls = []
    real_run = model.run
    try:
        model.run = lambda text: calls.append(text) or real_run(text)
        second = analyse_dataset(PROMPTS, tmp_path / "resumed", model, progress=False)
    finally:
        del model.run
    # prompts 1 and 2 were done; 3 (an error row, now a real prompt) and 4 are new
    assert calls == PROMPTS[2:]
    assert (second.processed, second.skipped, second.ok, second.errors) == (2, 2, 4, 0)

    analyse_dataset(PROMPTS, tmp_path / "fresh", model, progress=False)
    for name in TABLES:
        assert table(tmp_path / "resumed", name).equals(table(tmp_path / "fresh", name)), name

    edited = [PROMPTS[0], "an edited second prompt"] + PROMPTS[2:]
    third = analyse_dataset(edited, tmp_path / "resumed", model, progress=False)
    assert (third.processed, third.skipped) == (1, 3)  # same id, new text hash
    texts = table(tmp_path / "resumed", "prompts").column("text").to_pylist()
    assert texts[1] == "an edited second prompt"


def test_an_interrupted_run_keeps_its_finished_prompts(tiny_models, tmp_path):
    model = tiny_models("llama")
    real_run, calls = model.run, []

    def interrupted(text):
        calls.append(text)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_run(text)

    model.run = interrupted
    try:
        with pytest.raises(KeyboardInterrupt):
            analyse_dataset(PROMPTS, tmp_path / "out", model, progress=False)
    finally:
        del model.run
    assert list((tmp_path / "out" / "parts").glob("part-*-prompts.parquet"))  # the checkpoint
    resumed = analyse_dataset(PROMPTS, tmp_path / "out", model, progress=False)
    assert (resumed.processed, resumed.skipped) == (2, 2)
    assert not (tmp_path / "out" / "parts").exists()
    analyse_dataset(PROMPTS, tmp_path / "fresh", model, progress=False)
    for name in TABLES:
        assert table(tmp_path / "out", name).equals(table(tmp_path / "fresh", name)), name


def test_a_folder_with_other_settings_or_other_files_is_refused(tiny_models, tmp_path):
    model = tiny_models("llama")
    analyse_dataset(PROMPTS[:1], tmp_path / "out", model, Settings(threshold=0.04), progress=False)
    with pytest.raises(DatasetError, match=r"threshold 0\.04 \(now 0\.1\)"):
        analyse_dataset(PROMPTS[:1], tmp_path / "out", model, Settings(threshold=0.1), progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match="not empty and holds no llm-flow results"):
        analyse_dataset(PROMPTS[:1], tmp_path / "other", model, progress=False)
    with pytest.raises(ArgumentError, match="positions must be 'last' or 'all'"):
        Settings(positions="first")
    with pytest.raises(ArgumentError, match="threshold"):
        Settings(threshold=2.0)
    with pytest.raises(ArgumentError, match="workers"):
        analyse_dataset(PROMPTS[:1], tmp_path / "w", model, workers=0)
    with pytest.raises(ArgumentError, match="loads the model in each worker"):
        analyse_dataset(PROMPTS[:1], tmp_path / "w", model, engine="ray")


# --- input formats ------------------------------------------------------------------------------


def test_every_input_format_reads(tmp_path):
    texts = ["first prompt", "a prompt, with a comma", 'and "quotes"\non two lines']
    (tmp_path / "p.txt").write_text("first prompt\n\nthird line\n", encoding="utf-8")
    assert [(p.prompt_id, p.text) for p in read_prompts(tmp_path / "p.txt")] == [
        ("1", "first prompt"), ("2", ""), ("3", "third line"),
    ]  # fmt: skip
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in texts) + "\n\n")
    assert [p.text for p in read_prompts(tmp_path / "p.jsonl")] == texts
    (tmp_path / "ids.jsonl").write_text('{"id": "a", "text": "x"}\n{"id": 7, "text": "y"}\n')
    assert [p.prompt_id for p in read_prompts(tmp_path / "ids.jsonl")] == ["a", "7"]
    pd.DataFrame({"id": ["x1", "x2", "x3"], "text": texts, "domain": "d"}).to_csv(tmp_path / "p.csv", index=False)
    assert [(p.prompt_id, p.text) for p in read_prompts(tmp_path / "p.csv")] == list(zip(["x1", "x2", "x3"], texts))
    pq.write_table(pa.table({"text": texts}), tmp_path / "p.parquet")
    items = read_prompts(tmp_path / "p.parquet")
    assert [(p.prompt_id, p.text) for p in items] == list(zip(["1", "2", "3"], texts))
    assert items[0].text_hash == read_prompts(["first prompt"])[0].text_hash != items[1].text_hash


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("p.md", "x", "unknown prompt file type '.md'"),
        ("p.jsonl", '{"text": "ok"}\n{"txt": "no"}\n', 'line 2: each line must be a JSON object with a "text" field'),
        ("p.jsonl", '{"text": "ok"}\nnot json\n', "line 2: not valid JSON"),
        ("p.jsonl", '{"text": 5}\n', '"text" must be a string'),
        ("p.csv", "prompt\nhello\n", 'needs a "text" column \\(columns found: prompt\\)'),
        ("p.jsonl", '{"id": 1, "text": "a"}\n{"id": "1", "text": "b"}\n', "prompt id '1' appears twice"),
        ("p.txt", "", "holds no prompts"),
    ],
)
def test_a_bad_prompt_file_is_refused_before_any_work(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(ArgumentError, match=message):
        read_prompts(tmp_path / name)


def test_a_missing_prompt_file_is_named(tmp_path):
    with pytest.raises(ArgumentError, match="prompt file not found: .*nowhere.jsonl"):
        read_prompts(tmp_path / "nowhere.jsonl")


# --- the Ray engine -----------------------------------------------------------------------------


def test_without_ray_the_message_says_what_to_install(tiny_folders, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` fail as if not installed
    with pytest.raises(ArgumentError, match=r'pip install "llm-flow\[scale\]"'):
        analyse_dataset(PROMPTS[:1], tmp_path, str(tiny_folders["llama"]), engine="ray")


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason='Ray is not installed (pip install "llm-flow[scale]")')
def test_ray_engine_writes_the_same_files_as_in_process(tiny_folders, tiny_models, tmp_path):
    import ray

    prompts = PROMPTS[:3] + [""]
    model = tiny_models("llama")
    analyse_dataset(prompts, tmp_path / "inprocess", model, Settings("last"), progress=False)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        summary = analyse_dataset(
            prompts, tmp_path / "ray", str(tiny_folders["llama"]), Settings("last"), engine="ray", workers=2
        )
        # a model that cannot load in the workers: llm-flow's own message, not Ray's traceback
        with pytest.raises(llm_flow.ModelNotFoundError, match=r"unknown model .*nowhere.* \(in a Ray worker\)"):
            analyse_dataset(prompts, tmp_path / "bad", str(tmp_path / "nowhere"), engine="ray", workers=1)
    finally:
        ray.shutdown()
    assert (summary.ok, summary.errors, summary.processed) == (3, 1, 4)
    for name in TABLES:
        assert table(tmp_path / "ray", name).equals(table(tmp_path / "inprocess", name)), name
    assert (tmp_path / "ray" / "metadata.json").read_text() == (tmp_path / "inprocess" / "metadata.json").read_text()


# --- reading results back: grids, differences, top prompts, figures ----------------------------


@pytest.fixture(scope="module")
def two_folders(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    model = tiny_models("llama")
    analyse_dataset(PROMPTS[:2], root / "first", model, Settings("all"), progress=False)
    analyse_dataset(PROMPTS[2:], root / "second", model, Settings("all"), progress=False)
    return root / "first", root / "second"


def test_grids_put_each_component_in_its_cell_and_differences_subtract(two_folders):
    from llm_flow.dataset.results import component_grid, difference_grid, load_results

    first, second = (load_results(folder) for folder in two_folders)
    for metric in ("frequency", "mean_contribution"):
        grid = component_grid(first, metric, "previous")
        rows = first.components[first.components["position_class"] == "previous"]
        for row in rows.itertuples(index=False):
            cell = {"head": lambda r: grid.heads[r.layer, r.head], "ffn": lambda r: grid.ffn[r.layer],
                    "residual": lambda r: grid.residual[r.layer]}[row.kind](row)  # fmt: skip
            assert cell == getattr(row, metric)
        delta = difference_grid(first, second, metric, "previous")
        other = component_grid(second, metric, "previous")
        assert (delta.heads == grid.heads - other.heads).all() and (delta.ffn == grid.ffn - other.ffn).all()
    with pytest.raises(DatasetError, match="unknown metric"):
        component_grid(first, "median")


def test_difference_of_different_models_is_refused(two_folders, tmp_path):
    import shutil

    from llm_flow.dataset.results import difference_grid, load_results

    other = tmp_path / "other"
    shutil.copytree(two_folders[0], other)
    metadata = json.loads((other / "metadata.json").read_text())
    metadata["model"]["n_layers"] = 5
    (other / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(DatasetError, match="different models"):
        difference_grid(load_results(two_folders[0]), load_results(other))


def test_top_prompts_rank_by_the_components_contribution(two_folders):
    from llm_flow.dataset.results import load_results, top_prompts

    results = load_results(two_folders[0])
    top = top_prompts(results, "L0.H1", "all")
    rows = results.prompt_components.query("component == 'L0.H1' and position_class == 'all'")
    assert list(top["contribution"]) == sorted(rows["contribution"], reverse=True)
    first = top.iloc[0]
    prompt = results.prompts.set_index("prompt_id").loc[first["prompt_id"]]
    assert first["text"] == prompt["text"] and first["target_token"] == prompt["tokens"][first["top_target"]]
    assert 0 <= first["top_target"] < prompt["n_tokens"]


def test_heatmap_cells_carry_their_component_ids(two_folders):
    from llm_flow.dataset.results import component_grid, difference_grid, load_results
    from llm_flow.figures.dataset import component_heatmap

    first, second = (load_results(folder) for folder in two_folders)
    grid = component_grid(first, "mean_contribution")
    figure = component_heatmap(grid, selected="L2.H3")
    heads, head_clicks, ffn, ffn_clicks = figure.data
    assert heads.customdata[2][3] == "L2.H3" and ffn.customdata[1][0] == "L1.FFN"
    assert (heads.z == grid.heads).all() and [row[0] for row in ffn.z] == list(grid.ffn)
    # the click targets: one per cell, at the cell, carrying [id, value]
    n_heads = first.n_heads
    point = 2 * n_heads + 3
    assert (head_clicks.x[point], head_clicks.y[point]) == ("H3", 2)
    assert head_clicks.customdata[point] == ["L2.H3", grid.heads[2, 3]]
    assert ffn_clicks.customdata[1] == ["L1.FFN", grid.ffn[1]] and ffn_clicks.x[1] == "FFN"
    assert heads.coloraxis != ffn.coloraxis  # contributions: one scale each
    assert len(figure.layout.shapes) == 1  # the selected cell's frame
    delta = component_heatmap(difference_grid(first, second, "frequency"), difference=True)
    assert delta.data[0].coloraxis == delta.data[2].coloraxis
    assert delta.layout.coloraxis.cmid == 0 and delta.layout.coloraxis.cmin == -delta.layout.coloraxis.cmax


def test_loading_something_else_says_what_is_wrong(two_folders, tmp_path):
    import shutil

    from llm_flow.dataset.results import load_results

    with pytest.raises(DatasetError, match="no results folder at .*missing"):
        load_results(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="holds no llm-flow results"):
        load_results(tmp_path / "empty")
    unfinished = tmp_path / "unfinished"
    shutil.copytree(two_folders[0], unfinished)
    (unfinished / "components.parquet").unlink()
    with pytest.raises(DatasetError, match="did not finish .*run `llm-flow dataset` again"):
        load_results(unfinished)
