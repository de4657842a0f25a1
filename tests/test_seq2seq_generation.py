"""An encoder–decoder writing its target greedily or sampled (temperature, top-k, top-p, seed):
the tokens are those plain `transformers` ``generate`` writes on the same weights, and each
token's probability is a float64 computation from the definitions on the teacher-forced logits."""

from __future__ import annotations

import pytest
import torch
import transformers

import llm_flow
from llm_flow.errors import ArgumentError, PromptError
from llm_flow.views.sampling import SamplingSettings, seeded_generator
from llm_flow.views.seq2seq_generation import write_target
from tests.test_sampling import by_definition
from tests.tiny_models import save_tiny_model

FAMILIES = ["marian", "t5"]
SOURCE = "The capital of France is Paris."
SAMPLED = [(1.0, 0, 1.0), (1.3, 50, 0.9), (0.7, 5, 1.0), (2.0, 0, 0.8)]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("seq2seq_generation")
    made = {}
    for family in FAMILIES:
        folder = save_tiny_model(family, root / family)
        plain = transformers.AutoModelForSeq2SeqLM.from_pretrained(folder, attn_implementation="eager").eval()
        made[family] = (llm_flow.load_model(str(folder)), plain)
    return made


def plain_generate(plain, source_ids: list[int], n: int, **sampling) -> list[int]:
    """What plain transformers writes: the model's own generation config, one beam."""
    config = transformers.GenerationConfig.from_dict({
        **plain.generation_config.to_dict(), "num_beams": 1, "max_new_tokens": n, "max_length": None,
        "min_length": 0, **sampling,
    })  # fmt: skip
    with torch.no_grad():
        return plain.generate(torch.tensor([source_ids]), generation_config=config)[0, 1:].tolist()


@pytest.mark.parametrize("family", FAMILIES)
def test_temperature_zero_writes_what_greedy_generate_writes(family, models):
    model, plain = models[family]
    written = write_target(model, SOURCE, 12, SamplingSettings(0.0))
    ids = model.encode(SOURCE)
    assert written.ids == plain_generate(plain, ids, 12, do_sample=False)
    assert written.ids == model.generate_target(ids, 12) == model.run_pair(SOURCE, max_new_tokens=12).target_ids
    assert [t.position for t in written.tokens] == list(range(1, len(written.ids) + 1))  # decoder positions


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("temperature,top_k,top_p", SAMPLED)
def test_seeded_sampling_draws_what_generate_draws_after_manual_seed(family, models, temperature, top_k, top_p):
    model, plain = models[family]
    ids = model.encode(SOURCE)
    written = write_target(model, SOURCE, 10, SamplingSettings(temperature, top_k, top_p), seeded_generator(7))
    torch.manual_seed(7)
    theirs = plain_generate(plain, ids, 10, do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p)
    assert written.ids == theirs
    greedy = plain_generate(plain, ids, 10, do_sample=False)
    assert written.ids != greedy  # not vacuous: a random model's sampled target is not its greedy one


@pytest.mark.parametrize("family", FAMILIES)
def test_each_token_probability_is_the_warped_softmax_of_the_teacher_forced_logits(family, models):
    model, plain = models[family]
    temperature, top_k, top_p = 1.3, 50, 0.9
    written = write_target(model, SOURCE, 8, SamplingSettings(temperature, top_k, top_p), seeded_generator(3))
    decoder = [model.decoder_start_token_id, *written.ids]
    with torch.no_grad():
        logits = plain(input_ids=torch.tensor([model.encode(SOURCE)]), decoder_input_ids=torch.tensor([decoder])).logits[0]
    forced = plain.generation_config.forced_eos_token_id
    steps = written.tokens[:-1] if forced is not None else written.tokens  # the last step is forced to end
    assert len(steps) >= 5
    for step, token in enumerate(steps):
        _, _, final = by_definition(logits[step], temperature, top_k, top_p)
        assert token.probability == pytest.approx(float(final[token.token_id]), abs=1e-5)
        model_probability = float(torch.softmax(logits[step].double(), -1)[token.token_id])
        assert token.model_probability == pytest.approx(model_probability, abs=1e-5)
    assert any(abs(t.probability - t.model_probability) > 1e-3 for t in steps)  # the warpers changed something


def test_bad_requests_are_refused_with_what_to_change(models):
    model, _ = models["marian"]
    with pytest.raises(PromptError, match="empty"):
        write_target(model, "   ", 5)
    with pytest.raises(ArgumentError, match="1..256"):
        write_target(model, SOURCE, 0)
    model.max_prompt_tokens = 8
    try:
        with pytest.raises(PromptError, match="the source is .* shorten it"):
            write_target(model, SOURCE * 5, 5)
    finally:
        model.max_prompt_tokens = None
