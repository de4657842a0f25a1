"""The sampling pipeline against a float64 computation from the definitions of temperature, top-k
and top-p, against the scores plain `generate(do_sample=True)` draws from, and made of
`transformers`' own warpers."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from llm_flow.errors import ArgumentError
from llm_flow.figures.playground import sampling_figure
from llm_flow.views.sampling import SamplingSettings, choose, sampling_stages, seeded_generator

VOCAB = 500


def random_logits(seed: int, ties: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if ties:  # few distinct values: many tokens share the k-th score and the top-p boundary
        return torch.randint(-4, 5, (VOCAB,), generator=g).float()
    return torch.randn(VOCAB, generator=g) * 3


SETTINGS = [
    (1.0, 0, 1.0),
    (0.7, 0, 1.0),
    (1.5, 50, 1.0),
    (1.0, 1, 1.0),
    (1.0, 40, 0.9),
    (0.5, 0, 0.5),
    (2.0, 10, 0.95),
    (1.0, 0, 0.0),
    (0.3, 1000, 0.99),  # top-k above the vocabulary size
]


def by_definition(logits: torch.Tensor, temperature: float, top_k: int, top_p: float):
    """Float64, from the definitions: top-k keeps the tokens scoring at least the k-th highest
    score; top-p keeps, most probable first, each token whose more probable tokens hold less than
    p of the probability (the smallest such set reaching p), the most probable always. Returns
    (kept by top-k, kept by both, final probabilities)."""
    scores = logits.double() / temperature
    order = scores.argsort(descending=True)
    by_k = torch.ones_like(scores, dtype=torch.bool)
    if top_k:
        by_k = scores >= scores[order[min(top_k, len(scores)) - 1]]
    probs = torch.softmax(scores.masked_fill(~by_k, -math.inf), -1)
    by_p = by_k.clone()
    if top_p < 1:
        above = probs[order].cumsum(0) - probs[order]  # mass of the more probable tokens
        keep = above < top_p
        keep[0] = True
        by_p = torch.zeros_like(by_k).scatter(0, order, keep) & by_k
    final = torch.softmax(scores.masked_fill(~by_p, -math.inf), -1)
    return by_k, by_p, final


@pytest.mark.parametrize("temperature,top_k,top_p", SETTINGS)
def test_stages_equal_a_float64_computation_from_the_definitions(temperature, top_k, top_p):
    for seed in range(5):
        logits = random_logits(seed)  # distinct values: the definitions leave no tie to break
        stages = sampling_stages(logits, SamplingSettings(temperature, top_k, top_p))
        by_k, by_p, final = by_definition(logits, temperature, top_k, top_p)
        assert torch.equal(stages.cut_by_top_k, ~by_k)
        assert torch.equal(stages.cut_by_top_p, by_k & ~by_p) and torch.equal(stages.kept, by_p)
        torch.testing.assert_close(stages.probs.double(), final, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(stages.scaled.double(), logits.double() / temperature, atol=1e-5, rtol=1e-6)
        assert torch.isinf(stages.after_top_p).eq(~by_p).all() and torch.isinf(stages.after_top_k).eq(~by_k).all()
        assert math.isclose(float(stages.probs.sum()), 1.0, rel_tol=1e-5)


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.4, 40, 0.9), (0.7, 0, 0.8), (1.0, 5, 1.0), (2.0, 0, 1.0)])
def test_stages_are_what_generate_samples_from(tiny_folders, temperature, top_k, top_p):
    """Plain `generate(do_sample=True)` on a tiny model reports, per step, the logits it saw and
    the warped scores it drew from: the stages of those logits are exactly those scores."""
    model = AutoModelForCausalLM.from_pretrained(str(tiny_folders["gpt2"])).eval()
    ids = torch.tensor([[0, 5, 17, 42, 9]])
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, max_new_tokens=4,
                             temperature=temperature, top_k=top_k, top_p=top_p, output_scores=True,
                             output_logits=True, return_dict_in_generate=True)  # fmt: skip
    for logits, scores in zip(out.logits, out.scores):
        stages = sampling_stages(logits[0], SamplingSettings(temperature, top_k, top_p))
        assert torch.equal(stages.after_top_p, scores[0])


@pytest.mark.parametrize("ties", [False, True])
def test_the_stages_are_transformers_own_warpers(monkeypatch, ties):
    """Not a copy of them: a release that changes a rule changes the page as it changes generate.
    Each warper is called once, on the previous stage, and its output is the stage."""
    calls = []
    for warper in (TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper):
        real = warper.__call__

        def spy(self, input_ids, scores, real=real, name=warper.__name__):
            out = real(self, input_ids, scores)
            calls.append((name, scores.clone(), out.clone()))
            return out

        monkeypatch.setattr(warper, "__call__", spy)
    stages = sampling_stages(random_logits(4, ties), SamplingSettings(1.3, 20, 0.9))
    assert [name for name, _, _ in calls] == ["TemperatureLogitsWarper", "TopKLogitsWarper", "TopPLogitsWarper"]
    (_, before_t, scaled), (_, before_k, after_k), (_, before_p, after_p) = calls
    assert torch.equal(before_t[0], stages.logits) and torch.equal(scaled[0], stages.scaled)
    assert torch.equal(before_k, scaled) and torch.equal(after_k[0], stages.after_top_k)
    assert torch.equal(before_p, after_k) and torch.equal(after_p[0], stages.after_top_p)
    # The cut masks are exactly the tokens each filter set to -inf, and nothing else.
    assert torch.equal(stages.cut_by_top_k, torch.isinf(stages.after_top_k) & ~torch.isinf(stages.scaled))
    assert torch.equal(stages.cut_by_top_p, torch.isinf(stages.after_top_p) & ~torch.isinf(stages.after_top_k))
    assert stages.n_kept == int((stages.probs > 0).sum()) >= 1
    calls.clear()
    sampling_stages(random_logits(4), SamplingSettings(1.0, 0, 1.0))
    assert calls == []  # generate adds no warper for these settings, and neither do the stages


def test_top_k_keeps_every_token_tied_with_the_kth():
    logits = torch.tensor([3.0, 1.0, 2.0, 2.0, 2.0, 0.0])
    stages = sampling_stages(logits, SamplingSettings(top_k=2))
    assert stages.kept.tolist() == [True, False, True, True, True, False]


def test_top_p_one_and_top_k_zero_cut_nothing():
    logits = torch.tensor([0.0, -200.0, 5.0, 1.0])  # token 1 has a float32 probability of 0
    stages = sampling_stages(logits, SamplingSettings(top_k=0, top_p=1.0))
    assert not stages.cut_by_top_k.any() and not stages.cut_by_top_p.any()
    assert torch.equal(stages.probs, torch.softmax(logits, -1))


def test_top_p_zero_and_top_k_one_keep_only_the_best():
    logits = random_logits(7)
    for settings in (SamplingSettings(top_p=0.0), SamplingSettings(top_k=1)):
        stages = sampling_stages(logits, settings)
        assert stages.kept.nonzero().flatten().tolist() == [int(logits.argmax())]
        assert float(stages.probs[logits.argmax()]) == 1.0


def test_nucleus_is_the_smallest_set_reaching_top_p():
    """Direct formula: sort descending, keep tokens until the cumulative probability reaches p."""
    logits = random_logits(3)
    probs = torch.softmax(logits, -1)
    stages = sampling_stages(logits, SamplingSettings(top_p=0.8))
    ordered = probs.sort(descending=True).values
    n_needed = int((ordered.cumsum(0) < 0.8).sum()) + 1
    assert stages.n_kept == n_needed
    assert float(probs[stages.kept].sum()) >= 0.8 > float(ordered[: n_needed - 1].sum())


def test_temperature_zero_is_greedy():
    logits = torch.tensor([1.0, 4.0, 4.0, -2.0])  # a tie: argmax takes the first, as generate does
    stages = sampling_stages(logits, SamplingSettings(temperature=0, top_k=3, top_p=0.5))
    assert stages.probs.tolist() == [0.0, 1.0, 0.0, 0.0]
    assert stages.cut_by_greedy.tolist() == [True, False, True, True]
    assert not stages.cut_by_top_k.any() and not stages.cut_by_top_p.any()
    assert choose(stages) == 1 == int(torch.argmax(logits))
    # Greedy draws consume no randomness.
    generator = seeded_generator(0)
    state = generator.get_state()
    choose(stages, generator)
    assert torch.equal(generator.get_state(), state)


def test_seeded_sampling_is_reproducible_and_matches_torch_manual_seed():
    stages = sampling_stages(random_logits(1), SamplingSettings(temperature=1.3, top_k=100, top_p=0.95))
    first = [choose(stages, seeded_generator(11)) for _ in range(3)]
    generator = seeded_generator(11)
    sequence = [choose(stages, generator) for _ in range(20)]
    again = seeded_generator(11)
    assert [choose(stages, again) for _ in range(20)] == sequence
    assert first == [sequence[0]] * 3
    assert len(set(sequence)) > 1  # the draws are random, not the argmax every time
    assert all(bool(stages.kept[t]) for t in sequence)
    torch.manual_seed(11)  # what generate() uses: the global generator
    assert [int(torch.multinomial(stages.probs[None], 1)[0, 0]) for _ in range(20)] == sequence


def test_sampled_frequencies_follow_the_final_distribution():
    logits = torch.tensor([2.0, 1.0, 0.5, -1.0, -3.0])
    stages = sampling_stages(logits, SamplingSettings(temperature=0.8, top_k=3))
    generator = seeded_generator(0)
    draws = torch.tensor([choose(stages, generator) for _ in range(4000)])
    frequencies = torch.bincount(draws, minlength=5).float() / len(draws)
    assert torch.allclose(frequencies, stages.probs, atol=0.03)
    assert frequencies[3:].sum() == 0


@pytest.mark.parametrize(
    "kwargs",
    [dict(temperature=-0.1), dict(temperature=float("nan")), dict(top_k=-1), dict(top_k=2.5),
     dict(top_p=1.5), dict(top_p=-0.1)],
)  # fmt: skip
def test_bad_settings_are_refused_with_a_message(kwargs):
    with pytest.raises(ArgumentError, match="temperature|top-k|top-p"):
        SamplingSettings(**kwargs)


def test_bad_seed_and_shape_are_refused():
    with pytest.raises(ArgumentError, match="seed"):
        seeded_generator(-3)
    with pytest.raises(ArgumentError, match="one position"):
        sampling_stages(torch.zeros(2, 5), SamplingSettings())


def test_stage_figure_greys_what_each_filter_cut():
    logits = random_logits(2)
    stages = sampling_stages(logits, SamplingSettings(temperature=1.5, top_k=6, top_p=0.5))
    figure = sampling_figure(stages, lambda ids: [f"t{i}" for i in ids], n=12, chosen=int(logits.argmax()))
    shown = torch.topk(logits, 12).indices.tolist()
    _, tempered, top_k, top_p = figure.data
    assert list(top_k.customdata) == shown
    assert [c == "#d9d9d9" for c in top_k.marker.color] == stages.cut_by_top_k[shown].tolist()
    expected_words = ["–" if k else "cut" if p else None for k, p in
                      zip(stages.cut_by_top_k[shown].tolist(), stages.cut_by_top_p[shown].tolist())]  # fmt: skip
    assert [w if w in ("–", "cut") else None for w in top_p.text] == expected_words
    kept = [i for i in shown if stages.kept[i]]
    assert [x for x, i in zip(top_p.x, shown) if stages.kept[i]] == pytest.approx(stages.probs[kept].tolist())
    assert list(tempered.x) == pytest.approx(torch.softmax(logits / 1.5, -1)[shown].tolist(), rel=1e-5)
    assert top_p.marker.line.width[0] > 0 and not any(top_p.marker.line.width[1:])  # the chosen token


def test_the_settings_read_as_the_sliders_set_them():
    assert SamplingSettings(0.7, 5, 0.9).describe() == "temperature 0.7, top-k 5, top-p 0.9"
    assert SamplingSettings().describe() == "temperature 1, top-k off, top-p off"
    assert SamplingSettings(temperature=0, top_k=5).describe() == "greedy (temperature 0: always the most likely token)"


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.7, 40, 0.9), (1.5, 3, 1.0), (0.0, 10, 0.5)])
def test_the_table_holds_every_tokens_numbers_from_the_definitions(temperature, top_k, top_p):
    """`to_frame()` (the notebook's table): highest logit first, the model's softmax, the
    probability of being drawn and the filter that cut each token, all from `by_definition`."""
    logits = random_logits(5)
    stages = sampling_stages(logits, SamplingSettings(temperature, top_k, top_p), lambda ids: [f"t{i}" for i in ids])
    frame = stages.to_frame()
    order = sorted(range(VOCAB), key=lambda i: -float(logits[i]))
    assert frame["token_id"].tolist() == order and frame["token"].tolist() == [f"t{i}" for i in order]
    assert frame["logit"].tolist() == logits[order].tolist()
    assert frame["model_probability"].tolist() == pytest.approx(torch.softmax(logits.double(), -1)[order].tolist(), rel=1e-5)
    if temperature == 0:
        best = int(logits.argmax())
        assert frame["probability"].tolist() == [1.0] + [0.0] * (VOCAB - 1) and order[0] == best
        assert frame["cut_by"].tolist() == [""] + ["greedy"] * (VOCAB - 1)
        return
    by_k, by_p, final = by_definition(logits, temperature, top_k, top_p)
    assert frame["probability"].tolist() == pytest.approx(final[order].tolist(), abs=1e-6)
    expected_cut = ["top-k" if not by_k[i] else "top-p" if not by_p[i] else "" for i in order]
    assert frame["cut_by"].tolist() == expected_cut and "top-k" in expected_cut
    summary = stages.summary()
    assert summary["tokens that can be drawn"] == f"{int(by_p.sum()):,} of {VOCAB}"
    assert summary["settings"] == SamplingSettings(temperature, top_k, top_p).describe()
    assert summary["most likely"]["token_id"].tolist() == order[:10]


def test_tokens_without_a_tokenizer_are_named_by_id_and_the_figure_takes_its_arguments():
    logits = random_logits(6)
    stages = sampling_stages(logits, SamplingSettings(temperature=1.2, top_k=8))
    assert stages.to_frame()["token"].tolist()[:3] == [f"#{i}" for i in torch.topk(logits, 3).indices.tolist()]
    chosen = int(torch.topk(logits, 3).indices[2])
    figure = stages.figure(n=7, chosen=chosen)
    top_p = figure.data[-1]
    assert list(top_p.customdata) == torch.topk(logits, 7).indices.tolist()
    assert [w > 0 for w in top_p.marker.line.width] == [i == 2 for i in range(7)]


def test_edge_cases_a_page_can_reach():
    """Tied logits listed by token id; a token the model already gave -inf is not top-k's cut;
    one token left is drawn; greedy stages keep the raw logits; the figure shows 15 tokens."""
    tied = sampling_stages(torch.tensor([1.0, 3.0, 1.0, 3.0, 1.0]), SamplingSettings(temperature=0.5))
    assert tied.to_frame()["token_id"].tolist() == [1, 3, 0, 2, 4]
    masked = sampling_stages(torch.tensor([2.0, -math.inf, 1.0, 0.0]), SamplingSettings(top_k=2))
    assert masked.cut_by_top_k.tolist() == [False, False, False, True]
    assert masked.to_frame()["cut_by"].tolist() == ["", "", "top-k", ""]
    one_left = sampling_stages(random_logits(8), SamplingSettings(temperature=1.3, top_k=1))
    assert choose(one_left, seeded_generator(0)) == int(random_logits(8).argmax())
    logits = random_logits(9)
    greedy = sampling_stages(logits, SamplingSettings(temperature=0))
    for stage in (greedy.scaled, greedy.after_top_k, greedy.after_top_p):
        assert torch.equal(stage, logits)
    assert len(sampling_stages(logits, SamplingSettings()).figure().data[-1].customdata) == 15
