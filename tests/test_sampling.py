"""The sampling pipeline against `transformers`' own logits warpers, applied as `generate` applies them."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from llm_flow.errors import ArgumentError
from llm_flow.figures.playground import sampling_figure
from llm_flow.views.sampling import SamplingSettings, choose, sampling_stages, seeded_generator

VOCAB = 500


def warped(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """What `generate(do_sample=True)` feeds to softmax: the warpers it adds for these settings,
    in its order (temperature != 1, top_k != 0, top_p < 1)."""
    warpers = LogitsProcessorList()
    if temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(float(temperature)))
    if top_k != 0:
        warpers.append(TopKLogitsWarper(top_k=top_k, min_tokens_to_keep=1))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p=top_p, min_tokens_to_keep=1))
    scores = logits.float()[None]
    return warpers(torch.zeros(1, 1, dtype=torch.long), scores)[0]


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


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("temperature,top_k,top_p", SETTINGS)
def test_stages_equal_the_transformers_warpers(temperature, top_k, top_p, ties):
    for seed in range(5):
        logits = random_logits(seed, ties)
        stages = sampling_stages(logits, SamplingSettings(temperature, top_k, top_p))
        expected = warped(logits, temperature, top_k, top_p)
        assert torch.equal(stages.after_top_p, expected)
        assert torch.equal(stages.probs, torch.softmax(expected, -1))
        assert torch.equal(stages.after_top_k, warped(logits, temperature, top_k, 1.0))
        assert torch.equal(stages.scaled, warped(logits, temperature, 0, 1.0))
        # The cut masks are exactly the tokens each filter set to -inf, and nothing else.
        after_temperature = torch.isinf(stages.scaled)
        by_k = torch.isinf(stages.after_top_k) & ~after_temperature
        by_p = torch.isinf(stages.after_top_p) & ~torch.isinf(stages.after_top_k)
        assert torch.equal(stages.cut_by_top_k, by_k) and torch.equal(stages.cut_by_top_p, by_p)
        assert stages.n_kept == int((stages.probs > 0).sum()) >= 1
        assert math.isclose(float(stages.probs.sum()), 1.0, rel_tol=1e-5)


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
