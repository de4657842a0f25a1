"""Faithfulness of circuits: edge ablation into destination nodes against plain `transformers`
with hooks (tests/hf_interventions.py, float64), f at the ends of the budget axis, EAP against
exact patching on a model made linear, EAP-IG's completeness, and ALTI routes as budgets."""

from __future__ import annotations

import dataclasses
import importlib.util

import pandas as pd
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import llm_flow
from llm_flow.errors import ArgumentError
from llm_flow.faithfulness import (
    AblationSpec,
    Alti,
    Eap,
    EapIg,
    Edges,
    Random,
    area,
    budget_curve,
    faithfulness,
    get_scorer,
    prepare,
    smallest_circuit,
    top_k,
)
from llm_flow.faithfulness.edges import ATTENTION, FFN, RESIDUAL
from llm_flow.faithfulness.gradients import node_gradients
from llm_flow.faithfulness.pairs import Pair, read_pairs
from llm_flow.faithfulness.sets import evaluate_pairs
from llm_flow.views.tokens import single_token
from tests.conftest import REPO
from tests.hf_interventions import HfModel
from tests.tiny_models import FAMILIES, tiny_tokenizer

CLEAN = "When Mary and John went to the store, John gave a drink to"
COUNTERFACTUAL = "When John and Mary went to the store, John gave a drink to"  # same tokens, names swapped
REFERENCE = [  # mean ablation: two cover every position of CLEAN, the short one only the first ones
    "When John and Mary went to the park, Mary gave a ball to John and said thanks for it.",
    "The capital of France is Paris. The capital of Italy is Rome. One, two, three, four.",
    "One, two, three, four.",
]
ATOL = 1e-4  # float32 TransformerLens pass vs float64 HF (as test_interventions)


@pytest.fixture(scope="module")
def hf(tiny_folders):
    return {family: HfModel(str(tiny_folders[family])) for family in FAMILIES}


def _problem(model, mode: str = "patching", prompt: str = CLEAN):
    run = model.run(prompt)
    spec = {"patching": AblationSpec("patching", counterfactual=COUNTERFACTUAL),
            "mean": AblationSpec("mean", reference=REFERENCE), "zero": AblationSpec("zero")}[mode]  # fmt: skip
    return prepare(run, " John", " a", spec)


def _without(problem, index: int) -> torch.Tensor:
    kept = torch.ones(len(problem.edges), dtype=torch.bool)
    kept[index] = False
    return kept


def _grab(seen: dict, vector):
    """An HF edit that changes nothing and keeps ``vector(out, ctx)`` in ``seen["value"]``."""

    def edit(out, ctx):
        seen["value"] = vector(out, ctx)
        return out

    return edit


def _close(actual: torch.Tensor, expected: torch.Tensor, atol: float = ATOL) -> None:
    diff = (actual.double() - expected.double()).abs().max().item()
    assert diff < atol, f"max logit difference {diff:.2e}"


# --- ablation into destination nodes ---------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_patching_nothing_is_the_clean_run_and_everything_the_counterfactual(tiny_models, hf, family):
    problem = _problem(tiny_models(family))
    run = problem.run
    everything = dataclasses.replace(problem, edges=Edges.every(run))
    none = torch.zeros(len(everything.edges), dtype=torch.bool)
    counterfactual = run.model.run(COUNTERFACTUAL)
    patched = everything.logits(none)
    _close(patched, counterfactual.logits, atol=1e-5)
    _close(patched, hf[family].logits(counterfactual.tokens.tolist()))
    _close(everything.logits(~none), run.logits, atol=1e-5)
    assert (counterfactual.logits - run.logits).abs().max() > 100 * ATOL  # the two runs differ


@pytest.mark.parametrize("family", ["gpt2", "llama", "gpt_neox", "gemma2"])
def test_patching_one_attention_edge_replaces_its_parts(tiny_models, hf, family):
    """Edge j -> A{l}_i (I{l}_i for parallel blocks): every head's z[i, j, h] as this pass
    computes it out, the counterfactual run's in (and the residual too when j == i)."""
    problem = _problem(tiny_models(family))
    run, heads = problem.run, problem.run.n_heads
    ids, cf_ids = run.tokens.tolist(), problem.values.run.tokens.tolist()
    layer, i = 1, run.n_tokens - 3
    for j in (4, i):  # another token, and the edge that carries the residual too
        index = problem.edges.find(ATTENTION, layer, i, j)
        logits = problem.logits(_without(problem, index))

        def vector(ctx):
            parts = sum(ctx.part(i, j, h) for h in range(heads))
            return parts + ctx.saved["resid_pre"][i] if j == i else parts

        seen = {}
        hf[family].logits(cf_ids, attention={layer: _grab(seen, lambda out, ctx: vector(ctx))})

        def patch(out, ctx):
            out = out.clone()
            out[i] += seen["value"] - vector(ctx)
            return out

        _close(logits, hf[family].logits(ids, attention={layer: patch}))
        assert (logits - run.logits).abs().max() > 100 * ATOL


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma2"])
def test_mean_ablation_replaces_a_part_by_its_position_matched_mean(tiny_models, hf, family):
    """One attention edge early in the prompt (all three references reach it), the last row's
    residual and FFN edges (the short reference does not): each becomes the mean over the
    references that have a token there, computed here from separate HF passes."""
    problem = _problem(tiny_models(family), "mean")
    run, heads, model = problem.run, problem.run.n_heads, problem.model
    ids, last = run.tokens.tolist(), run.n_tokens - 1
    references = [model.encode(text)[: run.n_tokens] for text in REFERENCE]
    assert len(references[2]) < run.n_tokens <= min(len(r) for r in references[:2])

    def mean_of(position: int, grab, where: str, layer: int) -> torch.Tensor:
        vectors = []
        for ref in references:
            if len(ref) > position:
                seen = {}
                hf[family].logits(ref, **{where: {layer: _grab(seen, grab)}})
                vectors.append(seen["value"])
        return torch.stack(vectors).mean(0)

    layer, i, j = 1, 6, 2
    attention_vector = lambda out, ctx: sum(ctx.part(i, j, h) for h in range(heads))  # noqa: E731
    mean = mean_of(i, attention_vector, "attention", layer)

    def attention_edit(out, ctx):
        out = out.clone()
        out[i] += mean - attention_vector(out, ctx)
        return out

    logits = problem.logits(_without(problem, problem.edges.find(ATTENTION, layer, i, j)))
    _close(logits, hf[family].logits(ids, attention={layer: attention_edit}))

    top = run.n_layers - 1
    for kind, grab in ((FFN, lambda out, ctx: out[last]), (RESIDUAL, lambda out, ctx: ctx.saved["resid_mid"][last])):
        mean = mean_of(last, grab, "ffn", top)

        def ffn_edit(out, ctx, grab=grab, mean=mean):
            out = out.clone()
            out[last] += mean - grab(out, ctx)
            return out

        logits = problem.logits(_without(problem, problem.edges.find(kind, top, last)))
        _close(logits, hf[family].logits(ids, ffn={top: ffn_edit}))
        assert (logits - run.logits).abs().max() > 100 * ATOL


@pytest.mark.parametrize("mode", ["patching", "mean", "zero"])
def test_faithfulness_is_one_for_the_full_graph_and_zero_for_nothing(tiny_models, mode):
    problem = _problem(tiny_models("llama"), mode)
    every = torch.ones(len(problem.edges), dtype=torch.bool)
    full, empty = faithfulness(problem, every), faithfulness(problem, ~every)
    assert abs(full.faithfulness - 1) < 1e-5 and abs(full.completeness) < 1e-12
    assert empty.faithfulness == 0 and abs(empty.completeness - 1) < 1e-5
    assert abs(problem.full - problem.empty) > 0.05  # the ablation changes the metric
    curve = budget_curve(problem, Random(), budgets=(0.001, 0.5, 1.0))
    assert curve.edges[0] == len(problem.edges) // 1000 and curve.edges[-1] == len(problem.edges)
    assert abs(curve.faithfulness[-1] - 1) < 1e-5


def test_a_route_graph_is_scored_by_its_own_edges(tiny_models):
    """f of a route graph == f of the mask of its units; its complement's f is its completeness."""
    problem = _problem(tiny_models("llama"))
    graph = llm_flow.build_graph(problem.run, threshold=0.05)
    kept = problem.edges.mask_of_graph(graph)
    assert 0 < int(kept.sum()) < len(problem.edges)
    result = faithfulness(problem, graph)
    assert result.faithfulness == problem.normalised(problem.metric(kept))
    assert result.completeness == problem.normalised(problem.metric(~kept))
    assert result.edges == int(kept.sum())


def test_cpr_and_cmd_are_trapezoids_on_the_budget_axis():
    budgets = (0.001, 0.5, 1.0)
    assert area(budgets, (1.0, 1.0, 1.0)) == pytest.approx(0.999)
    assert area(budgets, (0.0, 0.5, 1.0)) == pytest.approx(0.499 * 0.25 + 0.5 * 0.75)


# --- scorers ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def linear_model(tmp_path_factory):
    """GPT-2 made linear: no activation function, norms that only centre (weight √eps, eps so
    large that the variance vanishes next to it), zero queries and keys (uniform attention).
    The metric is then an affine function of every node, and EAP is exact."""
    folder = tmp_path_factory.mktemp("linear-gpt2")
    tokenizer = tiny_tokenizer()
    config = GPT2Config(n_embd=64, n_layer=3, n_head=4, n_positions=256, vocab_size=len(tokenizer),
                        activation_function="linear", layer_norm_epsilon=1e12, initializer_range=0.3,
                        bos_token_id=0, eos_token_id=1, pad_token_id=2)  # fmt: skip
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.c_attn.weight[:, : 2 * 64] = 0
            block.attn.c_attn.bias[: 2 * 64] = 0
        for norm in [model.transformer.ln_f, *(n for b in model.transformer.h for n in (b.ln_1, b.ln_2))]:
            norm.weight.fill_(1e6)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return llm_flow.load_model(str(folder))


@pytest.mark.parametrize("mode", ["patching", "zero"])
def test_eap_is_exact_on_a_linear_model(linear_model, mode):
    problem = _problem(linear_model, mode)
    scores = Eap().scores(problem)
    generator = torch.Generator().manual_seed(0)
    picks = torch.randperm(len(problem.edges), generator=generator)[:30].tolist()
    picks += [int(torch.nonzero(problem.edges.kind == kind)[-1]) for kind in (ATTENTION, RESIDUAL, FFN)]
    picks += scores.abs().topk(5).indices.tolist()
    noise = 2e-6 * abs(problem.full)  # float32 rounding of a metric in the thousands (no variance norm)
    for index in picks:
        exact = problem.metric(_without(problem, index)) - problem.full
        assert -float(scores[index]) == pytest.approx(exact, rel=1e-4, abs=noise), problem.edges.names(index)
    assert scores.abs().max() > 1000 * noise
    # gradients are the same everywhere on a linear model: EAP-IG equals EAP
    torch.testing.assert_close(EapIg(steps=3).scores(problem), scores, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "gemma2"])
def test_eap_ig_completeness_on_the_input(tiny_models, family):
    """Input-embedding gradients averaged along the path, times the input change, add up to the
    effect of patching the whole input as the steps grow (integrated gradients)."""
    problem = _problem(tiny_models(family))
    run, counterfactual = problem.run, problem.values.run
    total = float(problem.contrast.value(run.logits[-1]) - problem.contrast.value(counterfactual.logits[-1]))
    change = run.layer(0).resid_pre.float() - counterfactual.layer(0).resid_pre.float()
    errors = {}
    for steps in (4, 64):
        grads = node_gradients(problem, steps)
        errors[steps] = abs(float((change * grads.embeddings).sum()) - total)
    assert abs(total) > 0.1
    assert errors[64] < 0.01 * abs(total) and errors[64] < 0.1 * errors[4]


@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
def test_alti_threshold_ranking_is_the_pruners_routes(tiny_models, family):
    """The top edges by the threshold selection's score are exactly the route `build_graph`
    keeps at a threshold: every route is one of ALTI's budget circuits."""
    problem = _problem(tiny_models(family))
    scores = Alti(selection="threshold").scores(problem)
    for threshold in (0.02, 0.05, 0.1, 0.3):
        route = problem.edges.mask_of_graph(llm_flow.build_graph(problem.run, threshold=threshold))
        assert torch.equal(route, scores > threshold), threshold
        assert 0 < int(route.sum())


def test_smallest_alti_route_is_a_route_and_reaches_the_target(tiny_models):
    problem = _problem(tiny_models("gpt2"))
    found = smallest_circuit(problem, Alti(selection="threshold"), target=0.8)
    assert found.faithfulness >= 0.8 and found.edges < len(problem.edges)
    route = llm_flow.build_graph(problem.run, threshold=found.threshold)
    assert torch.equal(problem.edges.mask_of_graph(route), found.kept)
    assert faithfulness(problem, route).faithfulness == pytest.approx(found.faithfulness)


def test_edges_patching_cannot_change_are_inert_and_alti_can_rank_them_last(tiny_models):
    model = tiny_models("llama")
    later = CLEAN.replace("store,", "store.")  # the same tokens up to the comma
    clean_ids, later_ids = model.encode(CLEAN), model.encode(later)
    first = next(n for n, (a, b) in enumerate(zip(clean_ids, later_ids)) if a != b)
    assert len(clean_ids) == len(later_ids) and 5 < first < len(clean_ids) - 5
    problem = prepare(model.run(CLEAN), " John", " a", AblationSpec("patching", counterfactual=later))
    inert = problem.inert
    assert 0 < int(inert.sum()) < len(inert)
    # keeping or ablating them gives the same pass; one edge into the first differing token does not
    circuit = torch.rand(len(inert), generator=torch.Generator().manual_seed(1)) < 0.5
    with_inert, without = problem.logits(circuit | inert), problem.logits(circuit & ~inert)
    # float32 noise only: the patched values come from the counterfactual Run's rows, rebuilt in
    # other batch shapes than the pass's own (1e-7 relative); one changed edge moves them > 1e-4
    assert (with_inert - without).abs().max() < 3e-5
    changed = int(torch.nonzero((problem.edges.position == first) & ~circuit)[0])
    assert (problem.logits(circuit | inert) - problem.logits(circuit | inert | (torch.arange(len(inert)) == changed))).abs().max() > 1e-4
    for other in ("mean", "zero"):
        assert not bool(_problem(model, other).inert.any())
    plain, last = Alti().scores(problem), Alti(changed_only=True).scores(problem)
    assert Alti(changed_only=True).key == "alti[changed_only=True]" and bool((last >= 0).all())
    assert torch.equal(top_k(last, int((~inert).sum())), ~inert)  # every changed edge first
    assert torch.equal(last[inert], plain[inert].double())  # ALTI's own scores within each group
    assert torch.allclose(last[~inert] - 1, plain[~inert].double(), rtol=0, atol=1e-15)


def test_signed_scorers_rank_twice_and_unsigned_once(tiny_models):
    problem = _problem(tiny_models("llama"))
    budgets = (0.01, 0.1, 1.0)
    eap = budget_curve(problem, Eap(), budgets=budgets)
    assert eap.faithfulness != eap.faithfulness_absolute
    alti = budget_curve(problem, Alti(), budgets=budgets)
    assert alti.faithfulness == alti.faithfulness_absolute
    frame = alti.to_frame()
    assert list(frame.columns[:6]) == ["scorer", "ablation", "budget", "edges", "metric", "faithfulness"]
    assert frame["edges"].tolist() == [len(problem.edges) // 100, len(problem.edges) // 10, len(problem.edges)]


# --- errors ----------------------------------------------------------------------------------


def test_patching_refuses_a_counterfactual_of_another_length(tiny_models):
    run = tiny_models("llama").run(CLEAN)
    with pytest.raises(ArgumentError, match=r"prompt is 32 tokens, the counterfactual 33 tokens"):
        prepare(run, " John", " a", AblationSpec("patching", counterfactual=CLEAN + " John"))


def test_bad_settings_are_refused_with_what_to_change(tiny_models):
    run = tiny_models("llama").run(CLEAN)
    with pytest.raises(ArgumentError, match="needs a counterfactual"):
        AblationSpec("patching")
    with pytest.raises(ArgumentError, match="ablation must be one of"):
        AblationSpec("resample")
    with pytest.raises(ArgumentError, match="reference prompts at least as long"):
        prepare(run, " John", " a", AblationSpec("mean", reference=["One, two."]))
    with pytest.raises(ArgumentError, match="is 2 tokens"):
        prepare(run, " Mary", " a", AblationSpec("zero"))
    with pytest.raises(ArgumentError, match="same token"):
        prepare(run, " John", " John", AblationSpec("zero"))
    with pytest.raises(ArgumentError, match="unknown edge scorer"):
        get_scorer("ig")
    with pytest.raises(ArgumentError, match="steps must be"):
        get_scorer("eap_ig", steps=0)
    problem = prepare(run, " John", " a", AblationSpec("zero"))
    with pytest.raises(ArgumentError, match="bool tensor with one entry per edge"):
        faithfulness(problem, torch.ones(3, dtype=torch.bool))
    with pytest.raises(ArgumentError, match="explains token 5"):
        faithfulness(problem, llm_flow.build_graph(run, target=5))


# --- the pairs that ship -----------------------------------------------------------------------


def test_shipped_pairs_have_equal_lengths_and_smollm2_answers_them_right(smollm2):
    paths = sorted((REPO / "config" / "datasets").glob("pairs_*.jsonl"))
    assert [p.name for p in paths] == ["pairs_capitals.jsonl", "pairs_ioi.jsonl", "pairs_years.jsonl"]
    for path in paths:
        pairs = read_pairs(path)
        assert len(pairs) >= 40 and len({p.clean for p in pairs}) == len(pairs)
        by_length: dict[int, list] = {}
        for pair in pairs:
            ids = smollm2.encode(pair.clean)
            assert len(ids) == len(smollm2.encode(pair.counterfactual)), pair
            tokens = single_token(smollm2, pair.answer), single_token(smollm2, pair.foil)
            by_length.setdefault(len(ids), []).append((ids, tokens, pair))
        for group in by_length.values():  # one batched pass per prompt length
            with torch.no_grad():
                logits = smollm2.hf_model(torch.tensor([ids for ids, _, _ in group])).logits[:, -1]
            for row, (_, (answer, foil), pair) in zip(logits, group):
                assert row[answer] > row[foil], pair


def test_a_set_of_pairs_averages_per_pair_and_pools_metrics_as_mib(tiny_models):
    pairs = [Pair("a", CLEAN, COUNTERFACTUAL, " John", " a"), Pair("b", COUNTERFACTUAL, CLEAN, " John", " a"),
             Pair("c", CLEAN, COUNTERFACTUAL, " Mary", " a")]  # fmt: skip
    result = evaluate_pairs(tiny_models("llama"), pairs, [Random(), Alti()], "mean", budgets=(0.01, 0.5, 1.0))
    assert [r.pair.pair_id for r in result.evaluated] == ["a", "b"] and "2 tokens" in result.results[2].error
    row = result.summary().set_index("scorer").loc["random"]
    curves = [r.curves["random"] for r in result.evaluated]
    assert row["cpr_mean"] == pytest.approx(sum(c.cpr for c in curves) / 2)
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    full, empty = mean([c.full for c in curves]), mean([c.empty for c in curves])
    pooled = [(mean([c.metric[k] for c in curves]) - empty) / (full - empty) for k in range(3)]
    assert result.pooled("random")[0] == pytest.approx(pooled)
    assert row["cpr_pooled"] == pytest.approx(area((0.01, 0.5, 1.0), pooled))
    frame = result.frame()
    assert len(frame) == 2 * 2 * 3 and list(frame.columns[:3]) == ["pair", "task", "scorer"]


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason='Ray is not installed (pip install "llm-flow[scale]")')
def test_the_ray_engine_gives_the_in_process_curves(tiny_folders, tiny_models):
    import ray

    pairs = [Pair("a", CLEAN, COUNTERFACTUAL, " John", " a", task="names"), Pair("b", COUNTERFACTUAL, CLEAN, " John", " a"),
             Pair("c", CLEAN, COUNTERFACTUAL, " Mary", " a"), Pair("d", CLEAN, COUNTERFACTUAL + " John", " John", " a")]  # fmt: skip
    scorers = [Alti(), Eap(), EapIg(steps=2), Random(seed=4)]
    budgets = (0.01, 0.1, 0.5, 1.0)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        for mode in ("patching", "mean"):
            here = evaluate_pairs(tiny_models("llama"), pairs, scorers, mode, budgets=budgets)
            there = evaluate_pairs(str(tiny_folders["llama"]), pairs, scorers, mode, budgets=budgets, engine="ray", workers=2)
            assert [r.pair for r in there.results] == pairs  # in the file's order, tasks kept
            assert [r.error for r in there.results] == [r.error for r in here.results]
            assert len(there.evaluated) == (2 if mode == "patching" else 3)  # c: 2 tokens; d: lengths differ
            for mine, theirs in zip(here.evaluated, there.evaluated):
                assert mine.curves.keys() == theirs.curves.keys()
                for key, curve in mine.curves.items():
                    other = theirs.curves[key]
                    assert (other.edges, other.budgets, other.scorer) == (curve.edges, curve.budgets, curve.scorer)
                    for name in ("metric", "faithfulness", "metric_absolute", "faithfulness_absolute"):
                        assert getattr(other, name) == pytest.approx(getattr(curve, name), rel=1e-4, abs=1e-5), (mode, key, name)
            pd.testing.assert_frame_equal(there.summary(), here.summary(), rtol=1e-4, atol=1e-5)
        with pytest.raises(ArgumentError, match="pass its name or a ModelSpec"):
            evaluate_pairs(tiny_models("llama"), pairs, scorers, engine="ray")
    finally:
        ray.shutdown()
