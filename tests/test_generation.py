"""Generation against plain `transformers` `generate` on models loaded without llm-flow
(`AutoModelForCausalLM.from_pretrained` on the same folder): the expected tokens and
probabilities come from it, never from llm-flow's own model or sampling code."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

import llm_flow
from llm_flow.config import load_config
from llm_flow.errors import ArgumentError, PromptError
from llm_flow.models.gguf import converted_folder
from llm_flow.models.packaged import packaged_file
from llm_flow.views.generation import (
    STOP_COUNT,
    STOP_EOS,
    STOP_LIMIT,
    GeneratedToken,
    Generation,
    generate,
    predicting_positions,
    round_trips,
    start,
    step,
)
from llm_flow.views.sampling import SamplingSettings, seeded_generator
from tests.conftest import REPO
from tests.tiny_models import FAMILIES

PROMPT = "The capital of France is"


def plain_model(folder) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(str(folder)).eval()


def plain_generate(model, ids, n, **kwargs):
    """`generate` on a model llm-flow never touched: the ids after the prompt (and, with
    ``return_dict_in_generate``, generate's whole output)."""
    inputs = torch.tensor([ids])
    with torch.no_grad():
        out = model.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=n, **kwargs)
    sequences = out.sequences if kwargs.get("return_dict_in_generate") else out
    new = sequences[0, len(ids) :].tolist()
    return (new, out) if kwargs.get("return_dict_in_generate") else new


@pytest.fixture(scope="module")
def smollm2_folder():
    """The converted SmolLM2 folder llm-flow loads, for a plain `transformers` model of it."""
    entry = load_config(REPO / "config" / "local.json").models["smollm2-135m"]
    return converted_folder(packaged_file(entry.source))


def loaded_and_plain(name, tiny_models, tiny_folders, request):
    if name == "smollm2":
        return request.getfixturevalue("smollm2"), plain_model(request.getfixturevalue("smollm2_folder"))
    return tiny_models(name), plain_model(tiny_folders[name])


MODELS = [*FAMILIES, pytest.param("smollm2", marks=pytest.mark.real_model)]
SAMPLED = dict(temperature=1.4, top_k=40, top_p=0.9)


@pytest.mark.parametrize("name", MODELS)
def test_greedy_generation_equals_transformers_generate(tiny_models, tiny_folders, request, name):
    model, plain = loaded_and_plain(name, tiny_models, tiny_folders, request)
    generation = generate(model, PROMPT, 12, SamplingSettings(temperature=0))
    expected = plain_generate(plain, model.encode(PROMPT), 12, do_sample=False)
    assert [t.token_id for t in generation.tokens] == expected
    assert generation.prompt_ids == tuple(model.encode(PROMPT))
    assert all(t.probability == 1.0 for t in generation.tokens)
    assert all(t.rank == 1 for t in generation.tokens)  # greedy: always the model's top token
    if name == "smollm2":
        assert generation.continuation.startswith(" Paris.\n\nThe answer")  # issue 18: was " Paris-----"


@pytest.mark.parametrize("name", MODELS)
def test_seeded_sampling_equals_transformers_generate_with_the_same_seed(tiny_models, tiny_folders, request, name):
    model, plain = loaded_and_plain(name, tiny_models, tiny_folders, request)
    ours = generate(model, PROMPT, 10, SamplingSettings(**SAMPLED), seeded_generator(5))
    torch.manual_seed(5)
    expected = plain_generate(plain, model.encode(PROMPT), 10, do_sample=True, **SAMPLED)
    assert [t.token_id for t in ours.tokens] == expected
    again = generate(model, PROMPT, 10, SamplingSettings(**SAMPLED), seeded_generator(5))
    assert again.tokens == ours.tokens
    other = generate(model, PROMPT, 10, SamplingSettings(**SAMPLED), seeded_generator(6))
    if any(t.probability < 0.9 for t in ours.tokens):  # the tiny Gemma 2 is nearly certain of every token
        assert other.tokens != ours.tokens


@pytest.mark.parametrize("family", ["qwen2", "gemma2"])
def test_probabilities_of_generated_tokens_are_those_generate_sampled_from(tiny_models, tiny_folders, family):
    """p drawn and p model of each token against plain `generate`'s own per-step scores: the
    logits it saw and the warped scores it sampled from (``output_logits``, ``output_scores``)."""
    model, plain = tiny_models(family), plain_model(tiny_folders[family])
    settings = dict(temperature=0.8, top_k=20)
    generation = generate(model, PROMPT, 4, SamplingSettings(**settings), seeded_generator(1))
    torch.manual_seed(1)
    expected, out = plain_generate(plain, model.encode(PROMPT), 4, do_sample=True, output_scores=True,
                                   output_logits=True, return_dict_in_generate=True, **settings)  # fmt: skip
    assert [t.token_id for t in generation.tokens] == expected
    for token, logits, scores in zip(generation.tokens, out.logits, out.scores):
        logits, warped = logits[0], scores[0]
        assert token.model_probability == pytest.approx(float(torch.softmax(logits, -1)[token.token_id]), abs=1e-5)
        assert token.probability == pytest.approx(float(torch.softmax(warped, -1)[token.token_id]), abs=1e-5)
        assert token.rank == int((logits > logits[token.token_id]).sum()) + 1  # ranks count from 1
        assert token.token == model.decode_tokens([token.token_id])[0]
    assert len({t.probability for t in generation.tokens}) > 1  # not all drawn with certainty


def test_a_step_draws_from_the_runs_last_logits(tiny_models):
    model = tiny_models("llama")
    settings = SamplingSettings(temperature=1.2, top_p=0.95)
    run = model.run(PROMPT)
    stages, generation = step(run, settings, seeded_generator(3))
    assert torch.equal(stages.logits, run.position_logits(-1))
    assert generation.prompt_ids == tuple(run.tokens.tolist()) and generation.stop is None
    assert_same_draws(generation.tokens, generate(model, PROMPT, 1, settings, seeded_generator(3)).tokens)


def assert_same_draws(stepped, generated) -> None:
    """The same tokens at the same positions; probabilities to float precision (generate computes
    the last position's logits alone, a Run every position's, so the last bits may differ)."""
    assert [(t.token_id, t.position, t.rank, t.eos) for t in stepped] == [
        (t.token_id, t.position, t.rank, t.eos) for t in generated
    ]
    for a, b in zip(stepped, generated):
        assert a.probability == pytest.approx(b.probability, rel=1e-4, abs=1e-7)
        assert a.model_probability == pytest.approx(b.model_probability, rel=1e-4, abs=1e-7)


@pytest.mark.parametrize("family", FAMILIES)
def test_stepping_n_times_draws_what_generating_n_draws(tiny_models, family):
    """The Playground's *Step* pressed N times and *Generate N*, with one seeded generator. Each
    step analyses the ids so far (`run_ids`: the tiny tokenizer does not read its stray bytes back)."""
    model = tiny_models(family)
    settings = SamplingSettings(temperature=1.5, top_k=50, top_p=0.95)
    at_once = generate(model, PROMPT, 6, settings, seeded_generator(3))
    generator, run, stepped = seeded_generator(3), model.run(PROMPT), []
    for _ in range(6):
        _, generation = step(run, settings, generator)
        stepped.append(generation.tokens[-1])
        run = model.run_ids(list(generation.ids), generation.text)
    assert_same_draws(stepped, at_once.tokens)


def test_stepping_through_runs_equals_generating_at_once(smollm2):
    """`step` draws from each new Run's last logits; with one generator it repeats `generate`.

    A real tokenizer: the random tiny models emit stray bytes whose text does not tokenise back."""
    settings = SamplingSettings(temperature=0.8, top_k=50, top_p=0.95)
    at_once = generate(smollm2, PROMPT, 3, settings, seeded_generator(3))
    assert round_trips(smollm2, at_once), at_once.text
    generator = seeded_generator(3)
    run = smollm2.run(PROMPT)
    stepped = []
    for _ in range(3):
        _, generation = step(run, settings, generator)
        stepped.append(generation.tokens[-1].token_id)
        run = smollm2.run(generation.text)
    assert stepped == [t.token_id for t in at_once.tokens]
    assert run.tokens.tolist() == list(at_once.ids)
    assert predicting_positions(run, at_once) == [t.position - 1 for t in at_once.tokens]


def test_generation_stops_at_eos(tiny_folders):
    model = llm_flow.load_model(str(tiny_folders["gpt2"]))
    greedy = [t.token_id for t in generate(model, PROMPT, 6, SamplingSettings(temperature=0)).tokens]
    stop_token = greedy[2]  # declare the third greedy token an end-of-sequence token
    model.hf_model.generation_config.eos_token_id = [1, stop_token]
    generation = generate(model, PROMPT, 6, SamplingSettings(temperature=0))
    assert [t.token_id for t in generation.tokens] == greedy[:3]
    assert generation.stop == STOP_EOS and generation.ended and generation.tokens[-1].eos
    # The EOS token is reported but is not part of the text to analyse.
    without_eos = generate(model, PROMPT, 2, SamplingSettings(temperature=0))
    assert generation.text == without_eos.text
    plain = plain_model(tiny_folders["gpt2"])
    plain.generation_config.eos_token_id = [1, stop_token]
    assert plain_generate(plain, model.encode(PROMPT), 6, do_sample=False) == greedy[:3]
    with pytest.raises(PromptError, match="end-of-sequence"):
        generate(model, generation, 2, SamplingSettings(temperature=0))


def test_generation_respects_the_prompt_length_limit(tiny_folders):
    model = llm_flow.load_model(str(tiny_folders["llama"]))
    n_prompt = len(model.encode(PROMPT))
    model.max_prompt_tokens = n_prompt + 3
    generation = generate(model, PROMPT, 10, SamplingSettings(temperature=0))
    assert len(generation.tokens) == 3 and generation.stop == STOP_LIMIT
    assert generate(model, PROMPT, 2, SamplingSettings(temperature=0)).stop == STOP_COUNT
    model.max_prompt_tokens = n_prompt
    with pytest.raises(PromptError, match=rf"{n_prompt + 1} tokens long.*limits.max_prompt_tokens.*nothing more"):
        generate(model, PROMPT, 1)
    with pytest.raises(PromptError, match="shorten"):
        step(model.run(PROMPT), SamplingSettings())
    with pytest.raises(ArgumentError, match="at least 1"):
        generate(model, "Hello", 0)
    with pytest.raises(PromptError, match="empty"):
        start(model, "  ")


def test_continuing_a_generation(tiny_models):
    model = tiny_models("gpt_neox")
    greedy = SamplingSettings(temperature=0)
    first = generate(model, PROMPT, 3, greedy)
    continued = generate(model, first, 4, greedy)
    assert continued.tokens[:3] == first.tokens
    assert continued.ids == generate(model, PROMPT, 7, greedy).ids
    assert [t.position for t in continued.tokens] == list(range(len(first.prompt_ids), len(continued.ids)))


def test_a_retokenised_text_disowns_the_positions_after_the_change(tiny_models):
    """Generated pieces the tokenizer merges when it reads the text again are not explained by
    positions of the re-analysed Run."""
    model = tiny_models("llama")
    prompt_ids = tuple(model.encode(PROMPT))
    merged = model.encode(" capital")[1:]  # [bos, ...] -> ["Ġcap", "ital"]
    pieces = model.tokenizer.convert_tokens_to_ids(["Ġ", "c", "a", "p", "ital"])
    assert model.tokenizer.decode(pieces) == " capital" and len(merged) < len(pieces)
    tokens = tuple(
        GeneratedToken(t, model.decode_tokens([t])[0], len(prompt_ids) + k, 1.0, 0.1, 3)
        for k, t in enumerate(pieces)
    )
    generation = Generation(PROMPT, prompt_ids, tokens, continuation=" capital")
    assert not round_trips(model, generation)
    run = model.run(generation.text)
    assert run.tokens.tolist() == [*prompt_ids, *merged]
    # The first piece was predicted by the last prompt token (same context); the others were not.
    assert predicting_positions(run, generation) == [len(prompt_ids) - 1, None, None, None, None]


def test_analysis_generation_and_attribution_ask_the_model_for_one_length_limit(tiny_folders, monkeypatch):
    """The limit lives in `TransparentLlm.token_limit` alone: a model that reports another limit
    is refused at that limit by every consumer, with the limit's own name in the message."""
    from llm_flow.attribution import prepare

    model = llm_flow.load_model(str(tiny_folders["gpt2"]))
    n_prompt = len(model.encode(PROMPT))
    monkeypatch.setattr(model, "token_limit", lambda: (n_prompt + 2, "the test's limit"))
    model.run(PROMPT)  # at or under the limit: accepted
    longer = PROMPT + " Paris and"
    with pytest.raises(PromptError, match=rf"{len(model.encode(longer))} tokens long, over the test's limit of {n_prompt + 2}"):
        model.run(longer)
    generation = generate(model, PROMPT, 5, SamplingSettings(temperature=0))
    assert len(generation.tokens) == 2 and generation.stop == STOP_LIMIT
    with pytest.raises(PromptError, match="the test's limit.*nothing more can be generated"):
        generate(model, generation, 1)
    assert prepare(model, PROMPT, generate=2).n_steps == 2
    with pytest.raises(PromptError, match=rf"are {n_prompt + 3} tokens long, over the test's limit"):
        prepare(model, PROMPT, generate=3)
