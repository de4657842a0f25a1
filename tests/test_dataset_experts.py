"""Per-expert statistics of `llm-flow dataset` on mixtures of experts (issue 20): how often the
router chose each expert at the explained positions, counted against the router's own top-k read
with plain transformers hooks, and each expert's share of the FFN node, against the float64
re-implementation of the experts in tests/reference.py."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pandas as pd
import pytest
import torch

import llm_flow
from llm_flow.dataset import Settings, analyse_dataset, load_results
from llm_flow.dataset.results import expert_grid
from llm_flow.errors import DatasetError
from tests.reference import l1_proximity, reference_model, reference_moe
from tests.tiny_models import save_tiny_models

PROMPTS = [
    "The capital of France is Paris.",
    "def add(a, b): return a + b",
    "One, two, three, four",
    "When Mary and John went to the store",
]
FAMILIES = ["mixtral", "qwen2_moe"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return save_tiny_models(FAMILIES, tmp_path_factory.mktemp("moe"))


@pytest.fixture(scope="module")
def models(folders):
    return {family: llm_flow.load_model(str(folder)) for family, folder in folders.items()}


def router_choices(folder, token_ids: list[int]) -> dict[int, torch.Tensor]:
    """layer -> [T, k] experts the router of plain transformers chose (the gate's own top-k)."""
    model = reference_model(str(folder))
    chosen, handles = {}, []
    for layer, block in enumerate(model.model.layers):
        def keep(module, args, out, layer=layer):
            chosen[layer] = out[2].detach()  # (router logits, weights, indices)

        handles.append(block.mlp.gate.register_forward_hook(keep))
    try:
        with torch.no_grad():
            model(torch.tensor([token_ids]))
    finally:
        for handle in handles:
            handle.remove()
    return chosen


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("positions", ["last", "all"])
def test_selection_counts_match_the_routers_own_top_k(models, folders, family, positions, tmp_path):
    model = models[family]
    analyse_dataset(PROMPTS, tmp_path, model, Settings(positions=positions), progress=False)
    results = load_results(tmp_path)
    counts, graphs = Counter(), 0
    for text in PROMPTS:
        ids = model.encode(text)
        explained = range(len(ids)) if positions == "all" else [len(ids) - 1]
        graphs += len(explained)
        for layer, indices in router_choices(folders[family], ids).items():
            for position in explained:
                counts.update((layer, int(e)) for e in indices[position])
    table = results.experts
    n_layers, n_experts = model.info.n_layers, 4
    routed = table[table["expert"] >= 0]
    assert len(routed) == n_layers * n_experts  # every expert of every layer, chosen or not
    for layer, expert, selected, rate in routed[["layer", "expert", "selected", "selection_rate"]].itertuples(index=False):
        assert selected == counts[layer, expert], (layer, expert)
        assert rate == pytest.approx(counts[layer, expert] / graphs)
    assert (table["graphs"] == graphs).all()
    shared = table[table["expert"] == -1]
    if family == "qwen2_moe":  # the shared expert serves every token
        assert shared["layer"].tolist() == list(range(n_layers)) and (shared["selected"] == graphs).all()
    else:
        assert shared.empty
    # per prompt: the same counts, prompt by prompt, add up to the table
    per_prompt = results.prompt_experts.groupby(["layer", "expert"])["selected"].sum()
    assert per_prompt.to_dict() == {key: value for key, value in table.set_index(["layer", "expert"])["selected"].items() if value}


def test_shares_and_route_contributions_match_the_reference(models, folders, tmp_path):
    family = "qwen2_moe"
    model, settings = models[family], Settings(positions="last", threshold=0.02)
    analyse_dataset(PROMPTS, tmp_path, model, settings, progress=False)
    table = load_results(tmp_path).experts.set_index(["layer", "expert"])
    shares, contributions, selected = defaultdict(float), defaultdict(float), Counter()
    for text in PROMPTS:
        run = model.run(text)
        target = run.n_tokens - 1
        graph = llm_flow.build_graph(run, target, settings.threshold)
        for layer in range(run.n_layers):
            ref = reference_moe(str(folders[family]), run.tokens.tolist(), layer, target)
            proximity = l1_proximity(ref.whole, ref.outputs)
            within = proximity / proximity.sum()
            edge = graph.get_edge_data(f"M{layer}_{target}", f"I{layer}_{target}")
            weight = 0.0 if edge is None else edge["weight"]
            for expert, share in zip(ref.experts, within.tolist()):
                shares[layer, expert] += share
                contributions[layer, expert] += weight * share
                selected[layer, expert] += 1
    assert any(contributions.values())  # some FFN node at the last position is on a route
    for (layer, expert), row in table.iterrows():
        expected_share = shares[layer, expert] / selected[layer, expert] if selected[layer, expert] else 0.0
        assert row["mean_share"] == pytest.approx(expected_share, abs=1e-4)
        assert row["total_contribution"] == pytest.approx(contributions[layer, expert], abs=1e-4)
        assert row["mean_contribution"] == pytest.approx(contributions[layer, expert] / len(PROMPTS), abs=1e-4)


def test_the_expert_grid_and_a_dense_model(models, tiny_models, tmp_path):
    analyse_dataset(PROMPTS[:2], tmp_path / "moe", models["mixtral"], progress=False)
    grid = expert_grid(load_results(tmp_path / "moe"), "selection_rate")
    n_layers = models["mixtral"].info.n_layers
    assert grid.values.shape == (n_layers, 4) and grid.experts == [0, 1, 2, 3] and grid.layers == list(range(n_layers))
    # each explained position chose two experts per layer
    assert grid.values.sum(1).tolist() == pytest.approx([2.0] * n_layers)
    analyse_dataset(PROMPTS[:2], tmp_path / "dense", tiny_models("llama"), progress=False)
    dense = load_results(tmp_path / "dense")
    assert dense.experts.empty and dense.prompt_experts.empty
    with pytest.raises(DatasetError, match="no mixture-of-experts"):
        expert_grid(dense)
    with pytest.raises(DatasetError, match="unknown expert metric"):
        expert_grid(load_results(tmp_path / "moe"), "frequency")


def test_a_folder_written_before_the_expert_tables_still_reads(models, tmp_path):
    analyse_dataset(PROMPTS[:2], tmp_path, models["mixtral"], progress=False)
    (tmp_path / "experts.parquet").unlink()
    (tmp_path / "prompt_experts.parquet").unlink()
    results = load_results(tmp_path)
    assert isinstance(results.experts, pd.DataFrame) and results.experts.empty


def test_the_dataset_page_shows_the_experts(models, tiny_config, tmp_path, monkeypatch):
    import json

    from tests.app_helpers import goto, start, widget_key

    analyse_dataset(PROMPTS, tmp_path / "moe", models["qwen2_moe"], Settings(positions="all"), progress=False)
    analyse_dataset(PROMPTS[:1], tmp_path / "dense", llm_flow.load_model("tiny-llama", config=_config(tiny_config)), progress=False)
    app = goto(start(tiny_config, monkeypatch), "dataset")
    app.text_input(key=widget_key("dataset.folder")).set_value(str(tmp_path / "dense")).run()
    assert not app.exception and not app.error
    assert not any(m.value == "**Experts**" for m in app.markdown)  # a dense model has none

    app.text_input(key=widget_key("dataset.folder")).set_value(str(tmp_path / "moe")).run()
    assert not app.exception and not app.error
    assert any(m.value == "**Experts**" for m in app.markdown)
    results = load_results(tmp_path / "moe")
    for metric in ("selection_rate", "mean_share"):
        app.radio(key=widget_key("dataset.expert_metric")).set_value(metric).run()
        figure = json.loads(app.get("plotly_chart")[1].proto.spec)
        shown = figure["data"][0]
        assert shown["x"] == ["E0", "E1", "E2", "E3", "shared"]
        z = np.array(_values(shown["z"]))
        np.testing.assert_allclose(z, expert_grid(results, metric).values, atol=1e-12)
    assert any(b.label.startswith("Expert statistics of moe") for b in app.get("download_button"))


def _config(path):
    from llm_flow.config import load_config

    return load_config(path)


def _values(data):
    from tests.test_app_dataset import values

    return values(data)


def test_the_cli_writes_and_lists_the_experts(folders, tiny_config, tmp_path, capsys):
    from llm_flow.cli import main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "results"
    args = ["--config", str(tiny_config), "dataset", "--model", str(folders["mixtral"]), "--prompts", str(prompts),
            "--out", str(out), "--top", "3"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    table = pd.read_parquet(out / "experts.parquet")
    assert list(table.columns) == [
        "layer", "expert", "graphs", "selected", "selection_rate", "mean_share", "total_contribution", "mean_contribution",
    ]  # fmt: skip
    top = table.sort_values(["selection_rate", "mean_contribution"], ascending=False, kind="stable").head(3)
    listing = ", ".join(f"L{l}.E{e} {r:.0%}" for l, e, r in top[["layer", "expert", "selection_rate"]].itertuples(index=False))
    line = next(line for line in printed.splitlines() if line.startswith("Experts"))
    assert [part.split(" (")[0] for part in line.split(": ", 1)[1].split("), ")] == listing.split(", ")
    assert "experts.parquet" in printed


def test_expert_rows_travel_back_from_ray_actors_unchanged(models):
    from llm_flow.dataset import analyse_prompt, read_prompts
    from llm_flow.dataset.serial import result_from_json, result_to_json

    item = read_prompts(PROMPTS[:1])[0]
    result = analyse_prompt(models["qwen2_moe"], item, Settings(positions="all"))
    assert result.status == "ok" and result.experts
    assert result_from_json(result_to_json(result)) == result
