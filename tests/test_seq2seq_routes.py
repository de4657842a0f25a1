"""Routes across the two stacks of an encoder–decoder (docs/method.md#routes-across-the-two-stacks).

The reference is independent of llm-flow: the plain `transformers` model in float64, forward
hooks that record each decoder layer's input and the states after self-attention, cross-attention
and the FFN, and the parts of every node written from the weights by the formulas of method.md
(heads one by one, post-LN linearised per position). The parts must add up to the recorded
states; their shares must equal llm-flow's contributions; and the route graph must be exactly
what a brute-force walk over those shares keeps. Tiny Marian, BART (post-LN), T5 (pre-RMSNorm) and
mBART (pre-LN) with weights of unit gain and random biases, so that every block carries a real share.
"""

from __future__ import annotations

import json
import math
from collections import deque

import networkx as nx
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers

import llm_flow
from llm_flow.cli import main
from llm_flow.errors import ArgumentError, PromptError, UnsupportedModelError
from llm_flow.routes.graph import build_graph, graph_json
from llm_flow.routes.nodes import EdgeId, NodeId, parse_element
from llm_flow.routes.seq2seq import run_contributions, seq2seq_contributions
from llm_flow.routes.seq2seq_graph import default_decoder_position, seq2seq_route
from tests.reference import l1_proximity
from tests.test_seq2seq_alti import heads_parts
from tests.tiny_models import build_model, save_tiny_model

FAMILIES = ["marian", "t5", "bart", "mbart"]
SOURCE = "The capital of France is Paris."
TARGET = "Paris is the capital"


def save_strong_model(family: str, folder, **config) -> str:
    """The family's tiny model (its config changed by `config`) with every projection drawn at
    unit gain (std 1/sqrt(fan-in)) and random biases: at `transformers`' default 0.02 the post-LN
    residual takes > 99 % of every state and the blocks' shares would be too small to test anything."""
    model, tokenizer = build_model(family)
    if config:
        model = type(model)(type(model.config)(**{**model.config.to_dict(), **config}))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(".bias"):
                parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))
            elif parameter.dim() == 2 and not any(k in name for k in ("embed", "shared", "relative_attention_bias")):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) / math.sqrt(parameter.shape[1]))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("seq2seq_routes")
    return {family: save_strong_model(family, root / family) for family in FAMILIES}


@pytest.fixture(scope="module")
def runs(folders):
    return {family: llm_flow.load_model(folder).run_pair(SOURCE, TARGET) for family, folder in folders.items()}


# --- the reference: plain transformers, hooks, float64, the formulas ---------------------------


def recorded_states(model, run) -> tuple[dict, object]:
    """Per (stack, layer): the layer's input and the states after self-attention ("A"),
    cross-attention ("C", decoder) and the layer ("I"), as forward hooks see them."""
    records: dict[tuple[str, int], dict[str, torch.Tensor]] = {}
    handles = []

    def tap(key, name, pre=False):
        def hook(module, args, kwargs, output=None):
            value = (args[0] if args else kwargs["hidden_states"]) if pre else output
            records.setdefault(key, {})[name] = (value[0] if isinstance(value, tuple) else value)[0]
        return hook

    t5, pre_ln = model.config.model_type in ("t5", "mt5"), model.config.model_type == "mbart"
    for stack, owner in (("encoder", model.get_encoder()), ("decoder", model.get_decoder())):
        for layer, block in enumerate(owner.block if t5 else owner.layers):
            key = (stack, layer)
            handles.append(block.register_forward_pre_hook(tap(key, "input", pre=True), with_kwargs=True))
            handles.append(block.register_forward_hook(tap(key, "I"), with_kwargs=True))
            if pre_ln:  # the states are the inputs of the next block's LayerNorm
                after = {"A": block.encoder_attn_layer_norm if stack == "decoder" else block.final_layer_norm,
                         "C": block.final_layer_norm}  # fmt: skip
                for name in ("A", "C") if stack == "decoder" else ("A",):
                    handles.append(after[name].register_forward_pre_hook(tap(key, name, pre=True), with_kwargs=True))
                continue
            after_self = block.layer[0] if t5 else block.self_attn_layer_norm
            handles.append(after_self.register_forward_hook(tap(key, "A"), with_kwargs=True))
            if stack == "decoder":
                after_cross = block.layer[1] if t5 else block.encoder_attn_layer_norm
                handles.append(after_cross.register_forward_hook(tap(key, "C"), with_kwargs=True))
    try:
        with torch.no_grad():
            out = model(input_ids=run.source_tokens[None], decoder_input_ids=run.decoder_tokens[None],
                        output_attentions=True)  # fmt: skip
    finally:
        for handle in handles:
            handle.remove()
    return records, out


def rms(norm, h):
    return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon) * norm.weight


def post_ln(norm, residual, parts, bias):
    """LN(residual + Σ parts + bias) and its parts through the per-position linear map
    g ⊙ (x − mean x), g = γ / σ(whole sum); (whole, residual part, parts, what belongs to no part)."""
    summed = parts.sum(tuple(range(1, parts.dim() - 1))) if parts.dim() > 2 else parts
    u = residual + summed + bias
    whole = F.layer_norm(u, u.shape[-1:], norm.weight, norm.bias, norm.eps)
    gain = norm.weight / torch.sqrt(u.var(-1, unbiased=False, keepdim=True) + norm.eps)  # [Q, d]

    def linear(x):
        return gain.view(gain.shape[0], *([1] * (x.dim() - 2)), -1) * (x - x.mean(-1, keepdim=True))

    return whole, linear(residual), linear(parts), linear(bias.expand_as(residual)) + norm.bias


def reference_layer(model, block, x, pattern, encoded=None, cross_pattern=None) -> dict:
    """Node -> (whole, residual part, parts [Q, K, H, d] or mlp_out [Q, d], no part), by the formulas."""
    nodes = {}
    if model.config.model_type in ("t5", "mt5"):
        attention, ff = block.layer[0], block.layer[-1]
        z = heads_parts(attention.SelfAttention, x, rms(attention.layer_norm, x), pattern)
        nodes["A"] = (x + z.sum((1, 2)), x, z, torch.zeros_like(x))
        h = nodes["A"][0]
        if encoded is not None:
            cross = block.layer[1]
            z = heads_parts(cross.EncDecAttention, h, encoded, cross_pattern)
            nodes["C"] = (h + z.sum((1, 2)), h, z, torch.zeros_like(h))
            h = nodes["C"][0]
        mlp = ff.DenseReluDense(rms(ff.layer_norm, h))
        nodes["I"] = (h + mlp, h, mlp, torch.zeros_like(h))
        return nodes
    if model.config.model_type == "mbart":  # pre-LN: each block reads its LayerNorm, adds to the residual
        z = heads_parts(block.self_attn, x, block.self_attn_layer_norm(x), pattern)
        bias = block.self_attn.out_proj.bias.expand_as(x)
        nodes["A"] = (x + z.sum((1, 2)) + bias, x, z, bias)
        h = nodes["A"][0]
        if encoded is not None:
            z = heads_parts(block.encoder_attn, h, encoded, cross_pattern)
            bias = block.encoder_attn.out_proj.bias.expand_as(h)
            nodes["C"] = (h + z.sum((1, 2)) + bias, h, z, bias)
            h = nodes["C"][0]
        mlp = block.fc2(block.activation_fn(block.fc1(block.final_layer_norm(h))))
        nodes["I"] = (h + mlp, h, mlp, torch.zeros_like(h))
        return nodes
    z = heads_parts(block.self_attn, x, x, pattern)
    nodes["A"] = post_ln(block.self_attn_layer_norm, x, z, block.self_attn.out_proj.bias)
    h = nodes["A"][0]
    if encoded is not None:
        z = heads_parts(block.encoder_attn, h, encoded, cross_pattern)
        nodes["C"] = post_ln(block.encoder_attn_layer_norm, h, z, block.encoder_attn.out_proj.bias)
        h = nodes["C"][0]
    mlp = block.fc2(block.activation_fn(block.fc1(h)))
    nodes["I"] = post_ln(block.final_layer_norm, h, mlp, torch.zeros_like(block.fc2.bias))
    return nodes


def shares(node) -> tuple[np.ndarray, np.ndarray]:
    """(parts' shares [Q, K, H] or [Q], residual's share [Q]) of one node, by the proximity formula."""
    whole, residual, parts, _ = node
    if parts.dim() == 4:
        prox_parts = l1_proximity(whole[:, None, None], parts)
        total = prox_parts.sum((1, 2))
    else:
        prox_parts = l1_proximity(whole, parts)
        total = prox_parts
    prox_residual = l1_proximity(whole, residual)
    total = total + prox_residual
    scale = total.view(-1, *([1] * (prox_parts.dim() - 1)))
    return (prox_parts / scale).numpy(), (prox_residual / total).numpy()


def reference_nodes(model, run) -> tuple[dict, dict]:
    """(recorded states, {(stack, layer): reference nodes}) of `run`'s tokens through `model`
    (plain transformers, float64)."""
    records, outputs = recorded_states(model, run)
    encoded = outputs.encoder_last_hidden_state[0]
    t5 = model.config.model_type in ("t5", "mt5")
    layers = {}
    with torch.no_grad():
        for stack, owner, patterns in (("encoder", model.get_encoder(), outputs.encoder_attentions),
                                       ("decoder", model.get_decoder(), outputs.decoder_attentions)):  # fmt: skip
            for layer, block in enumerate(owner.block if t5 else owner.layers):
                cross = (encoded, outputs.cross_attentions[layer][0]) if stack == "decoder" else ()
                layers[(stack, layer)] = reference_layer(model, block, records[(stack, layer)]["input"], patterns[layer][0], *cross)
    return records, layers


def assert_shares_match(mine, layers, atol: float = 1e-5) -> None:
    """Every block's contributions (llm-flow's `Seq2SeqContributions`) equal the reference shares."""
    for layer in range(len(mine.decoder_self)):
        nodes = layers[("decoder", layer)]
        for got, node in ((mine.decoder_self[layer], nodes["A"]), (mine.cross[layer], nodes["C"])):
            heads, residual = shares(node)
            np.testing.assert_allclose(got.heads, heads, atol=atol)
            np.testing.assert_allclose(got.residual, residual, atol=atol)
        ffn, residual = shares(nodes["I"])
        np.testing.assert_allclose(mine.decoder_ffn[layer].ffn, ffn, atol=atol)
        np.testing.assert_allclose(mine.decoder_ffn[layer].residual, residual, atol=atol)
    for layer in range(len(mine.encoder)):
        nodes = layers[("encoder", layer)]
        heads, residual = shares(nodes["A"])
        np.testing.assert_allclose(mine.encoder[layer].heads, heads, atol=atol)
        np.testing.assert_allclose(mine.encoder[layer].residual, residual, atol=atol)
        ffn, residual = shares(nodes["I"])
        np.testing.assert_allclose(mine.encoder_ffn[layer].ffn, ffn, atol=atol)
        np.testing.assert_allclose(mine.encoder_ffn[layer].residual, residual, atol=atol)


@pytest.fixture(scope="module")
def references(folders, runs):
    """Per family: (recorded states, {(stack, layer): reference nodes})."""
    out = {}
    for family, folder in folders.items():
        out[family] = reference_nodes(reference_model(folder), runs[family])
    return out


def reference_model(folder: str):
    """The saved model as plain `transformers` runs it, eager and in float64, for `reference_nodes`."""
    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(folder, attn_implementation="eager")
    return model.eval().double().requires_grad_(False)


# --- the parts and their shares ----------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_the_parts_of_every_decoder_node_add_up_to_the_state_transformers_computes(family, references):
    records, layers = references[family]
    for (stack, layer), nodes in layers.items():
        for name, (whole, residual, parts, no_part) in nodes.items():
            where = f"{family} {stack} layer {layer} node {name}"
            # T5 computes its RMSNorm's variance in float32 even in a float64 model: 1e-6, not 1e-9
            torch.testing.assert_close(whole, records[(stack, layer)][name], atol=1e-6, rtol=1e-6, msg=where)
            summed = parts.sum((1, 2)) if parts.dim() == 4 else parts
            torch.testing.assert_close(residual + summed + no_part, whole, atol=1e-9, rtol=1e-9, msg=where)
        assert ("C" in nodes) == (stack == "decoder")
    if family != "t5":  # the output bias (linearised with β in post-LN) is real, not zero: the check above sees it
        assert float(layers[("decoder", 0)]["C"][3].abs().max()) > 0.1


@pytest.mark.parametrize("family", FAMILIES)
def test_contributions_equal_the_formula_in_float64_for_every_block(family, runs, references):
    mine = run_contributions(runs[family])
    assert_shares_match(mine, references[family][1])
    # not vacuous: every kind of part carries far more than the tolerance
    assert min(c.tokens().max() for c in mine.cross) > 0.03
    assert min(f.ffn.max() for f in mine.decoder_ffn) > 0.05
    assert min(1 - s.residual.min() for s in mine.decoder_self) > 0.05


# --- the graph ---------------------------------------------------------------------------------


def _kept(weights: dict, threshold: float, renormalize: bool) -> dict:
    """docs/method.md#threshold-and-renormalisation on one node's parts."""
    kept = {name: w for name, w in weights.items() if w > threshold}
    total = sum(kept.values())
    if renormalize and total > 0:
        kept = {name: w / total for name, w in kept.items()}
    return {name: w for name, w in kept.items() if w > threshold}


def brute_force(layers, n_source, n_decoder, target, threshold, renormalize) -> dict:
    """Every node's thresholded parts from the reference shares, then a reverse BFS from the target."""
    incoming: dict[str, dict[str, float]] = {}
    n_enc = sum(1 for stack, _ in layers if stack == "encoder")
    n_dec = sum(1 for stack, _ in layers if stack == "decoder")
    for stack, n_layers, count in (("encoder", n_enc, n_source), ("decoder", n_dec, n_decoder)):
        p = "enc:" if stack == "encoder" else "dec:"
        for layer in range(n_layers):
            nodes = layers[(stack, layer)]
            self_heads, self_residual = shares(nodes["A"])
            ffn, ffn_residual = shares(nodes["I"])
            before_ffn = f"{p}C{layer}" if stack == "decoder" else f"{p}A{layer}"
            for i in range(count):
                inputs = {f"{p}X_{j}" if layer == 0 else f"{p}I{layer - 1}_{j}":
                          self_heads[i, j].sum() + (self_residual[i] if i == j else 0.0) for j in range(count)}  # fmt: skip
                incoming[f"{p}A{layer}_{i}"] = _kept(inputs, threshold, renormalize)
                into = _kept({f"{before_ffn}_{i}": ffn_residual[i], f"{p}M{layer}_{i}": ffn[i]}, threshold, renormalize)
                incoming[f"{p}I{layer}_{i}"] = into
                if f"{p}M{layer}_{i}" in into:
                    incoming[f"{p}M{layer}_{i}"] = {f"{before_ffn}_{i}": into[f"{p}M{layer}_{i}"]}
            if stack == "decoder":
                cross_heads, cross_residual = shares(nodes["C"])
                for t in range(count):
                    parts = {f"enc:I{n_enc - 1}_{s}": cross_heads[t, s].sum() for s in range(n_source)}
                    parts[f"dec:A{layer}_{t}"] = cross_residual[t]
                    incoming[f"dec:C{layer}_{t}"] = _kept(parts, threshold, renormalize)
    start = f"dec:I{n_dec - 1}_{target}"
    edges, seen, queue = {}, {start}, deque([start])
    while queue:
        node = queue.popleft()
        for source, weight in incoming.get(node, {}).items():
            edges[(source, node)] = weight
            if source not in seen:
                seen.add(source)
                queue.append(source)
    return edges


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("target, threshold, renormalize", [(3, 0.02, True), (-1, 0.05, False), (0, 0.01, True)])
def test_the_route_graph_is_the_brute_force_walk_over_the_formula(family, runs, references, target, threshold, renormalize):
    run = runs[family]
    graph = seq2seq_route(run, target, threshold, renormalize)
    _, layers = references[family]
    expected = brute_force(layers, run.n_source, run.n_decoder, target % run.n_decoder, threshold, renormalize)
    got = {(u, v): d["weight"] for u, v, d in graph.edges(data=True)}
    assert got.keys() == expected.keys()
    start = f"dec:I{max(layer for stack, layer in layers if stack == 'decoder')}_{target % run.n_decoder}"
    assert set(graph.nodes) == {start, *(node for edge in expected for node in edge)}  # no node the walk did not reach
    for edge, weight in expected.items():
        assert got[edge] == pytest.approx(weight, abs=1e-5), edge
    for u, v, data in graph.edges(data=True):  # the per-head split adds up to its edge
        if data["kind"] in ("attention", "cross"):
            assert sum(data["heads"]) + data.get("residual", 0.0) == pytest.approx(data["weight"], abs=1e-9)
        assert (data["kind"] == "cross") == (u.startswith("enc:") and v.startswith("dec:"))
    assert graph.graph["target"] == target % run.n_decoder and graph.graph["tokens"] == run.decoder_str_tokens


@pytest.mark.parametrize("family", FAMILIES)
def test_the_lowest_threshold_keeps_every_part_and_renormalised_weights_sum_to_one(family, runs):
    """At the lowest threshold offered (0.001; 0 is refused, as for every model) the route reaches
    every source token through cross edges, and each kept node's incoming weights sum to 1."""
    run = runs[family]
    graph = seq2seq_route(run, -1, 0.001, renormalize=True)
    for node in graph:
        weights = [d["weight"] for _, _, d in graph.in_edges(node, data=True)]
        if weights and graph.nodes[node]["kind"] != "ffn":  # an FFN node's one edge repeats its share in I
            assert sum(weights) == pytest.approx(1.0, abs=1e-9), node
    cross_sources = {u for u, _, d in graph.edges(data=True) if d["kind"] == "cross"}
    assert cross_sources == {f"enc:I1_{s}" for s in range(run.n_source)}
    assert {n for n in graph if n.startswith("enc:X_")} == {f"enc:X_{s}" for s in range(run.n_source)}
    assert {graph.nodes[n]["token"] for n in cross_sources} <= set(run.source_str_tokens)
    assert all(graph.nodes[n]["stack"] == ("encoder" if n.startswith("enc:") else "decoder") for n in graph)
    with pytest.raises(ArgumentError, match="the threshold must be a number from 0.001 to 0.5"):
        seq2seq_route(run, -1, 0.0)


def test_bad_positions_and_an_empty_source_are_refused_with_the_reason(runs):
    run = runs["marian"]
    for bad in (run.n_decoder, -run.n_decoder - 1, 2.5, True):
        with pytest.raises(ArgumentError, match=rf"target position {bad!r} is out of range: the decoder reads "
                                                rf"{run.n_decoder} tokens \(the start token and {run.n_decoder - 1} "
                                                rf"target tokens\); use 0\.\.{run.n_decoder - 1}, where position t "
                                                rf"predicts target token t, or -1 for the last$"):  # fmt: skip
            seq2seq_route(run, bad)
    assert seq2seq_route(run, -run.n_decoder).graph["target"] == 0  # the first position, counted from the end
    with pytest.raises(PromptError, match="the source text is empty: type the text the encoder reads"):
        run.model.run_pair("   ", TARGET)


@pytest.mark.parametrize(
    "name, expected",
    [("enc:I1_3", NodeId("I", 1, 3, "encoder")), ("dec:C0_2", NodeId("C", 0, 2, "decoder")),
     ("dec:X_0", NodeId("X", -1, 0, "decoder")), ("A1_2", NodeId("A", 1, 2))],
)  # fmt: skip
def test_stack_names_read_back_and_plain_names_stay_plain(name, expected):
    assert NodeId.parse(name) == expected and str(expected) == name
    edge = parse_element(f"enc:I1_0->{name}")
    assert isinstance(edge, EdgeId) and str(edge) == f"enc:I1_0->{name}"


@pytest.mark.parametrize("name", ["C0_1", "enc:C0_1", "src:I1_0", "enc:", "dec:Q1_2"])
def test_names_no_graph_can_have_are_refused(name):
    with pytest.raises(ArgumentError, match="not a route-graph node name|no such node"):
        NodeId.parse(name)


def test_decoder_only_graphs_keep_plain_names_and_attributes(tmp_path):
    model = llm_flow.load_model(str(save_tiny_model("gpt2", tmp_path / "gpt2")))
    graph = build_graph(model.run("The capital of France is"), threshold=0.01)
    assert all(":" not in name and "stack" not in data for name, data in graph.nodes(data=True))
    assert "encoder_decoder" not in graph.graph


# --- drawing and the command line -------------------------------------------------------------


def test_the_figure_draws_both_stacks_with_clickable_names(runs):
    from llm_flow.figures.route import route_figure

    graph = seq2seq_route(runs["t5"], 3, 0.02)
    figure = route_figure(graph)
    clickable = {c for trace in figure.data for c in (trace.customdata if trace.customdata is not None else ())}
    assert set(graph.nodes) <= clickable
    assert {str(EdgeId(NodeId.parse(u), NodeId.parse(v))) for u, v in graph.edges} <= clickable
    ticks = list(figure.layout.xaxis.ticktext)
    assert len(ticks) == runs["t5"].n_source + runs["t5"].n_decoder
    y_of = {c: y for trace in figure.data if trace.mode == "markers" for c, y in zip(trace.customdata, trace.y)}
    top_encoder = max(y for name, y in y_of.items() if name.startswith("enc:") and "->" not in name)
    assert min(y for name, y in y_of.items() if name.startswith("dec:") and "->" not in name) > top_encoder
    # the encoder's layers are sequential blocks, two levels a layer (A at 2l + 1, the FFN square
    # at 2l + 1.5, I at 2l + 2), never drawn as parallel ones (one level a layer)
    encoder = [NodeId.parse(name) for name in graph if name.startswith("enc:")]
    assert {node.kind for node in encoder} == {"X", "A", "M", "I"}
    for node in encoder:
        expected = 0.0 if node.kind == "X" else 2 * node.layer + {"A": 1.0, "M": 1.5, "I": 2.0}[node.kind]
        assert y_of[str(node)] == expected, node


def test_routes_command_on_an_encoder_decoder(folders, tmp_path, capsys):
    out, html = tmp_path / "route.json", tmp_path / "route.html"
    code = main(["routes", "--model", folders["t5"], "--prompt", SOURCE, "--target", TARGET, "--position", "3",
                 "--threshold", "0.02", "--out", str(out), "--html", str(html)])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0
    assert "Source" in printed and "cross-attention" in printed
    graph = nx.node_link_graph(json.loads(out.read_text()), edges="edges")
    assert graph.graph["encoder_decoder"] and graph.graph["target"] == 3
    # what the file says was explained: the model as named, the texts as typed, their tokens as
    # the tokenizer decodes them, the settings (the figure's title says them too)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folders["t5"])
    said = (graph.graph["model"], graph.graph["source_text"], graph.graph["target_text"])
    assert said == (folders["t5"], SOURCE, TARGET)
    assert graph.graph["source_tokens"] == [tokenizer.decode([i]) for i in tokenizer(SOURCE).input_ids]
    assert graph.graph["tokens"][1:] == [tokenizer.decode([i]) for i in tokenizer(text_target=TARGET).input_ids]
    assert (graph.graph["threshold"], graph.graph["renormalize"], graph.graph["parallel"]) == (0.02, True, False)
    assert "threshold 0.02 (renormalised)" in html.read_text()
    assert any(d["kind"] == "cross" for _, _, d in graph.edges(data=True))
    assert html.stat().st_size > 10_000
    assert graph_json(graph) == out.read_text()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--position", "40"], "target position 40 is out of range"),
        (["--prompt", "  "], "the prompt is empty"),
        (["--target", "  "], "the target text is empty"),
    ],
)
def test_routes_command_refuses_bad_input_on_an_encoder_decoder(folders, args, message, capsys):
    base = ["routes", "--model", folders["marian"], "--prompt", SOURCE, "--target", TARGET]
    assert main(base + args) == 2
    assert message in capsys.readouterr().err


def test_the_edge_table_splits_cross_edges_by_head_and_search_refuses_two_stacks(runs):
    from llm_flow.routes.find import find_nodes
    from llm_flow.views.route_summary import edges_frame, stack_summaries

    graph = seq2seq_route(runs["bart"], 3, 0.02)
    frame = edges_frame(graph)
    cross = frame[frame["kind"] == "cross"]
    assert len(cross) > 0
    np.testing.assert_allclose(cross[[f"head_{h}" for h in range(4)]].sum(1), cross["weight"], atol=1e-9)
    summaries = stack_summaries(graph)
    assert summaries["cross"].heads and sum(w for *_, w in summaries["cross"].heads) == pytest.approx(cross["weight"].sum())
    assert summaries["encoder"].input_positions and summaries["decoder"].input_positions
    with pytest.raises(ArgumentError, match="not across an encoder–decoder's two stacks"):
        find_nodes(graph, "L0")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--target", "Paris"], "--target 'Paris': for this model --target is the token position to explain"),
        (["--position", "2"], "--position is for encoder–decoders"),
    ],
)
def test_routes_command_keeps_decoder_flags_apart(tmp_path, args, message, capsys):
    folder = save_tiny_model("gpt2", tmp_path / "gpt2")
    assert main(["routes", "--model", str(folder), "--prompt", "The capital of France is", *args]) == 2
    assert message in capsys.readouterr().err


def test_the_direct_formula_on_any_device_gives_the_kernels_shares(runs, references, monkeypatch):
    """The numba kernel serves CPU tensors; CUDA tensors (and LLM_FLOW_KERNEL=torch) take the
    direct per-coordinate formula. Both must give the float64 reference's shares, the post-LN gain
    per row and the bidirectional and cross blocks' every source included."""
    import llm_flow.routes.seq2seq as seq2seq_module
    from llm_flow.routes.proximity import METHOD_ENV

    monkeypatch.setenv(METHOD_ENV, "torch")
    for family in ("marian", "t5"):
        run = runs[family]
        mine = seq2seq_module.seq2seq_contributions(run.model, run.source_tokens.tolist(), run.target_ids)
        assert_shares_match(mine, references[family][1])


def test_routes_are_kept_with_the_run_and_counted_in_its_bytes(folders):
    """The app's run cache is bounded by `nbytes`: what the routes keep must count in it."""
    from llm_flow.routes.seq2seq_graph import shared_seq2seq_route

    run = llm_flow.load_model(folders["t5"]).run_pair(SOURCE, TARGET)  # a run of its own: nothing kept yet
    before = run.nbytes
    graph = shared_seq2seq_route(run, 3, 0.04)
    assert shared_seq2seq_route(run, 3 - run.n_decoder, 0.04) is graph  # kept, whichever way the position is said
    assert shared_seq2seq_route(run, 3, 0.05) is not graph
    assert nx.utils.graphs_equal(graph, seq2seq_route(run, 3, 0.04))
    kept = run_contributions(run)
    assert run_contributions(run) is kept
    blocks = kept.encoder + kept.decoder_self + kept.cross
    assert run.nbytes - before >= sum(block.heads.nbytes + block.residual.nbytes for block in blocks)


def _doubled(module, args, output):
    """A forward hook's output times 2: a block that no longer is what its weights compute (a
    constant added would vanish in a post-LN block's centring)."""
    return (output[0] * 2, *output[1:]) if isinstance(output, tuple) else output * 2


@pytest.mark.parametrize(
    "where, block",
    [(lambda hf: hf.get_encoder().layers[0].final_layer_norm, "MarianMTModel encoder layer 0 FFN"),
     (lambda hf: hf.get_decoder().layers[1].encoder_attn, "MarianMTModel decoder layer 1 cross-attention")],
)  # fmt: skip
def test_a_block_whose_parts_do_not_add_up_is_refused_by_name(runs, where, block):
    """A module that is not what llm-flow reads (here: one whose output is doubled after the fact)
    is refused with the block it is in, not drawn."""
    run = runs["marian"]
    handle = where(run.model.hf_seq2seq).register_forward_hook(_doubled)
    try:
        with pytest.raises(UnsupportedModelError) as refused:
            seq2seq_contributions(run.model, run.source_tokens.tolist(), run.target_ids)
    finally:
        handle.remove()
    assert str(refused.value).startswith(f"{block}: the parts do not add up to the state the model produced (off by ")
    assert str(refused.value).endswith("so llm-flow cannot decompose this architecture")


def assert_the_formulas_shares(folder: str, run) -> None:
    """`run`'s contributions equal the reference shares of the folder's model in float64."""
    _, layers = reference_nodes(reference_model(folder), run)
    assert_shares_match(run_contributions(run), layers)


@pytest.mark.parametrize("family", ["marian", "t5"])
def test_a_source_shorter_than_the_decoder_gives_the_formulas_shares(family, folders):
    """Cross-attention reads fewer sources than it has query rows: every row keeps its own count."""
    run = llm_flow.load_model(folders[family]).run_pair("Paris.", "Paris is the capital of France and of the French")
    assert run.n_source < run.n_decoder
    assert_the_formulas_shares(folders[family], run)


def test_t5_heads_narrower_than_the_model_give_the_formulas_shares(tmp_path):
    """T5's heads need not fill d_model (mT5-small: 6 heads × 64 = 384 of 512); here 4 × 8 of 64."""
    folder = save_strong_model("t5", tmp_path / "t5", d_kv=8)
    model = llm_flow.load_model(folder)
    assert model.info.n_heads * model.info.d_head < model.info.d_model
    assert_the_formulas_shares(folder, model.run_pair(SOURCE, TARGET))


def test_the_default_position_predicts_the_last_token_before_the_end_of_sequence(runs):
    """Position t predicts target token t: a target ending in eos is explained at its last word
    (n - 3), one without eos at its last token (n - 2), an eos alone at position 0."""
    run = runs["marian"]
    eos, source = run.model.tokenizer.eos_token_id, run.source_tokens.tolist()
    assert eos not in run.target_ids
    assert default_decoder_position(run) == run.n_decoder - 2
    with_eos = run.model.run_pair_ids(source, [*run.target_ids, eos])
    assert default_decoder_position(with_eos) == with_eos.n_decoder - 3 == run.n_decoder - 2
    assert default_decoder_position(run.model.run_pair_ids(source, [eos])) == 0


def test_mt5_gives_the_formulas_shares_and_their_route(tmp_path):
    """mT5 (gated-GELU FFN, its own model type) is read as T5 is, end to end: loaded from a
    folder, every block's shares are the formulas', and its route is the brute-force walk."""
    folder = save_strong_model("mt5", tmp_path / "mt5")
    run = llm_flow.load_model(folder).run_pair(SOURCE, TARGET)
    model = reference_model(folder)
    assert type(model).__name__ == "MT5ForConditionalGeneration"
    _, layers = reference_nodes(model, run)
    assert_shares_match(run_contributions(run), layers)
    graph = seq2seq_route(run, 3, 0.02)
    expected = brute_force(layers, run.n_source, run.n_decoder, 3, 0.02, True)
    assert {(u, v): d["weight"] for u, v, d in graph.edges(data=True)} == pytest.approx(expected, abs=1e-5)
    assert any(d["kind"] == "cross" for _, _, d in graph.edges(data=True))


@pytest.mark.parametrize("decoder_layers", [1, 2])
def test_every_node_is_reached_from_the_start_node_by_edges(decoder_layers, tmp_path):
    """The walk starts at the decoder's last layer, ``dec:I{L-1}_t``: the one node no edge leaves,
    and every other node leads to it (one decoder layer: the layer before it is the embedding)."""
    folder = save_strong_model("marian", tmp_path / "marian", decoder_layers=decoder_layers)
    run = llm_flow.load_model(folder).run_pair(SOURCE, TARGET)
    for target in (0, 3):
        graph = seq2seq_route(run, target, 0.05)
        start = f"dec:I{decoder_layers - 1}_{target}"
        assert [node for node in graph if graph.out_degree(node) == 0] == [start]
        assert nx.ancestors(graph, start) == set(graph) - {start}


@pytest.mark.parametrize("ffn_gain", [1.0, 3.0])
def test_the_ffn_split_is_renormalised_when_one_part_falls_below_the_threshold(ffn_gain, runs, references, tmp_path):
    """docs/method.md#threshold-and-renormalisation: with the residual's and the FFN's shares of the
    explained state on either side of the threshold, the kept part's edge carries 1, not its share.
    As drawn, the residual carries more; the last decoder FFN's output scaled by 3 carries more itself."""
    run, (_, layers) = runs["marian"], references["marian"]
    if ffn_gain != 1.0:
        folder = save_strong_model("marian", tmp_path / "marian")
        model = transformers.AutoModelForSeq2SeqLM.from_pretrained(folder)
        with torch.no_grad():
            model.get_decoder().layers[-1].fc2.weight.mul_(ffn_gain)
        model.save_pretrained(folder)
        run = llm_flow.load_model(folder).run_pair(SOURCE, TARGET)
        _, layers = reference_nodes(reference_model(folder), run)
    last = max(layer for stack, layer in layers if stack == "decoder")
    ffn, residual = shares(layers[("decoder", last)]["I"])  # the reference's shares of dec:I{last}_t
    target = max(range(run.n_decoder), key=lambda t: min(ffn[t], residual[t]))
    low = min(ffn[target], residual[target])
    assert low > 0.02  # the unrenormalised kept share is visibly below 1
    assert (ffn[target] > residual[target]) == (ffn_gain > 1)
    threshold = (low + 0.5) / 2
    graph = seq2seq_route(run, target, threshold, renormalize=True)
    after_cross, ffn_node, start = (f"dec:{kind}{last}_{target}" for kind in "CMI")
    kept = ffn_node if ffn[target] > residual[target] else after_cross
    assert {u: d["weight"] for u, _, d in graph.in_edges(start, data=True)} == pytest.approx({kept: 1.0}, abs=1e-12)
    if kept == ffn_node:  # the FFN node's one edge repeats its weight in the state after the layer
        assert {u: d["weight"] for u, _, d in graph.in_edges(ffn_node, data=True)} == pytest.approx({after_cross: 1.0})
