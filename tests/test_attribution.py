"""Input attribution checked against independent computations: gradients by `torch.autograd` on
freshly loaded plain `transformers` models, occlusion and integrated gradients' completeness by
direct forward passes, attention against `output_attentions`, ALTI rollout against a
composition of `tests/reference.py`'s float64 contributions; and, on SmolLM2, that removing the
top-attributed token hurts the prediction more than removing another one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from llm_flow.attribution import (
    METHODS,
    Attribution,
    attribute,
    attribute_sequence,
    get_method,
    load_attribution,
    prepare,
)
from llm_flow.errors import ArgumentError, PromptError
from tests.reference import reference_contributions, reference_layers

PROMPT = "The capital of France is Paris. When Mary and John went to"
CONTINUATION = " John, to"


@pytest.fixture(scope="module")
def plain(tiny_folders):
    """Fresh plain transformers models (float32, eager attention), nothing shared with llm-flow."""
    loaded = {}

    def get(family: str):
        if family not in loaded:
            model = AutoModelForCausalLM.from_pretrained(str(tiny_folders[family]), attn_implementation="eager")
            loaded[family] = model.eval().requires_grad_(False)
        return loaded[family]

    return get


@pytest.fixture(scope="module")
def limited(tiny_folders):
    """Tiny Llama with a 40-token limit."""
    import llm_flow

    return llm_flow.load_model(str(tiny_folders["llama"]), max_prompt_tokens=40)


def explained(model, ids, target, foil=None, function="probability", embeds=None):
    """f(target) (- f(foil)) at the last position, from ids or from given input embeddings."""
    if embeds is None:
        embeds = model.get_input_embeddings()(torch.tensor([ids]))
    logits = model(inputs_embeds=embeds).logits[0, -1]
    values = logits.softmax(-1) if function == "probability" else logits
    return values[target] - (values[foil] if foil is not None else 0)


def visible(result: Attribution, step: int) -> np.ndarray:
    row = result.scores[step]
    n = result.n_prompt + step
    assert not np.isnan(row[:n]).any() and np.isnan(row[n:]).all()
    return row[:n]


# --- gradients against torch.autograd ---------------------------------------------------------


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("foil", [None, " John"])
def test_saliency_and_input_x_gradient_equal_autograd(tiny_models, plain, family, foil):
    model, reference = tiny_models(family), plain(family)
    saliency = attribute(model, PROMPT, "saliency", continuation=CONTINUATION, foil=foil)
    ixg = attribute(model, PROMPT, "input_x_gradient", continuation=CONTINUATION, foil=foil)
    assert saliency.token_ids == ixg.token_ids and saliency.n_steps >= 3
    foil_id = None if foil is None else model.tokenizer(foil, add_special_tokens=False)["input_ids"][0]
    function = "probability" if foil is None else "logit"  # a foil explains the logit difference
    assert saliency.function == function
    ids = saliency.token_ids
    for step in range(saliency.n_steps):
        context = ids[: saliency.n_prompt + step]
        embeds = reference.get_input_embeddings()(torch.tensor([context])).detach().requires_grad_(True)
        value = explained(reference, None, ids[saliency.n_prompt + step], foil_id, function, embeds)
        (gradient,) = torch.autograd.grad(value, embeds)
        norms, products = gradient[0].norm(dim=-1).numpy(), (gradient * embeds)[0].sum(-1).detach().numpy()
        # float32 backward passes round each gradient to about 1e-7 of the largest terms summed
        # into it, so a score near 0 carries an error set by the largest score, not by itself
        # (llama: 3.61e-7 vs 3.69e-7 where the largest is 3.4e-4); 1e-4 of the largest, or 0.1 %.
        np.testing.assert_allclose(visible(saliency, step), norms, rtol=1e-3, atol=1e-4 * np.abs(norms).max())
        np.testing.assert_allclose(visible(ixg, step), products, rtol=1e-3, atol=1e-4 * np.abs(products).max())


#: Largest completeness gap allowed, as a fraction of the effect it bounds (|f(x) - f(baseline)|
#: of the step). The integral's quadrature error shrinks as points are added; at the step counts
#: below the measured gaps are at most 0.5 % (gpt2) and 0.05 % (llama) of the effect, so 1 %
#: leaves room for float32 rounding while any gap of the effect's own order fails.
COMPLETENESS = 0.01


@pytest.mark.parametrize("family, function, baseline, n_steps", [
    ("gpt2", "probability", "zeros", 64),
    ("gpt2", "logit", "mean", 64),
    # the tiny random Llama is far rougher along the path (large init, RMSNorm): more points
    # (at 256 its gaps were still 9 % of the smallest effect)
    ("llama", "logit", "mean", 512),
])  # fmt: skip
def test_integrated_gradients_completeness(tiny_models, plain, family, function, baseline, n_steps):
    """Scores of a step sum to f(x) - f(baseline) within `COMPLETENESS` of that difference, and
    closer than with 4 points. The baseline (zero or mean embeddings at every position but the
    first) is built here from the plain model's embedding table."""
    model, reference = tiny_models(family), plain(family)
    options = dict(continuation=CONTINUATION, function=function, baseline=baseline)
    coarse = attribute(model, PROMPT, "integrated_gradients", n_steps=4, **options)
    fine = attribute(model, PROMPT, "integrated_gradients", n_steps=n_steps, **options)
    ids = fine.token_ids
    coarse_errors, fine_errors, effects = [], [], []
    for step in range(fine.n_steps):
        context, target = ids[: fine.n_prompt + step], ids[fine.n_prompt + step]
        with torch.no_grad():
            table = reference.get_input_embeddings().weight
            reference_input = (table.mean(0) if baseline == "mean" else torch.zeros_like(table[0]))
            reference_input = reference_input.expand(1, len(context), -1).clone()
            reference_input[0, 0] = table[context[0]]
            at_input = explained(reference, context, target, function=function)
            at_baseline = explained(reference, None, target, function=function, embeds=reference_input)
        difference = float(at_input - at_baseline)
        effects.append(abs(difference))
        for result, errors in ((coarse, coarse_errors), (fine, fine_errors)):
            total = visible(result, step).sum()
            errors.append(abs(total - difference))
            # captum's convergence delta is that very gap
            assert result.deltas[step] == pytest.approx(total - difference, abs=1e-4 * max(1, abs(difference)))
    assert all(e <= COMPLETENESS * effect for e, effect in zip(fine_errors, effects)), (fine_errors, effects)
    assert sum(fine_errors) < sum(coarse_errors)


def test_occlusion_equals_direct_ablation(tiny_models, plain):
    model, reference = tiny_models("qwen2"), plain("qwen2")
    result = attribute(model, PROMPT, "occlusion", continuation=CONTINUATION, baseline="zeros", keep_first=False)
    ids = result.token_ids
    step = result.n_steps - 1
    context, target = ids[: result.n_prompt + step], ids[result.n_prompt + step]
    embeds = reference.get_input_embeddings()(torch.tensor([context]))
    expected = []
    with torch.no_grad():
        full = explained(reference, None, target, embeds=embeds)
        for position in range(len(context)):
            ablated = embeds.clone()
            ablated[0, position] = 0
            expected.append(float(full - explained(reference, None, target, embeds=ablated)))
    np.testing.assert_allclose(visible(result, step), expected, rtol=1e-4, atol=1e-6)
    windowed = attribute(model, PROMPT, "occlusion", continuation=CONTINUATION, window=3)  # EOS baseline
    row = visible(windowed, step)
    assert row[0] == 0 and row[1] != 0  # the first position is kept, the rest of its window is not
    assert all(row[p] == row[p - p % 3] for p in range(3, len(row)))  # one score per window of 3


def test_gradient_shap_is_reproducible_and_seeded(tiny_models):
    model = tiny_models("llama")
    first = attribute(model, PROMPT, "gradient_shap", continuation=" the", n_samples=6)
    again = attribute(model, PROMPT, "gradient_shap", continuation=" the", n_samples=6)
    other = attribute(model, PROMPT, "gradient_shap", continuation=" the", n_samples=6, seed=1)
    np.testing.assert_array_equal(first.scores, again.scores)
    assert not np.allclose(visible(first, 0), visible(other, 0))


# --- internals against transformers and the reference contributions ---------------------------


@pytest.mark.parametrize("layer, heads", [(0, "mean"), (-1, "max")])
def test_attention_equals_output_attentions(tiny_models, plain, layer, heads):
    model, reference = tiny_models("llama"), plain("llama")
    result = attribute(model, PROMPT, "attention", continuation=CONTINUATION, layer=layer, heads=heads)
    ids = result.token_ids
    with torch.no_grad():
        pattern = reference(torch.tensor([ids[:-1]]), output_attentions=True).attentions[layer][0]  # [H, T, T]
    pooled = pattern.mean(0) if heads == "mean" else pattern.max(0).values
    for step in range(result.n_steps):
        query = result.n_prompt + step - 1
        np.testing.assert_allclose(visible(result, step), pooled[query, : query + 1].numpy(), atol=1e-5)
    assert result.function is None and result.foil is None


@pytest.mark.parametrize("family", ["llama", "gpt_neox", "gemma2"])
def test_alti_rollout_equals_composed_reference(tiny_models, tiny_folders, family):
    """Composed here from the float64 reference contributions: per layer the attention part
    (heads summed, the residual's share on the diagonal), the FFN on the diagonal (sequential)
    or in the joint normalisation (parallel), multiplied layer after layer."""
    model = tiny_models(family)
    result = attribute(model, PROMPT, "alti_rollout", continuation=CONTINUATION)
    ids = result.token_ids[:-1]
    parallel = family == "gpt_neox"
    rollout = torch.eye(len(ids), dtype=torch.float64)
    for layer in reference_layers(str(tiny_folders[family]), ids):
        c_heads, c_res, c_ffn, c_res2 = reference_contributions(layer, parallel)
        attention = c_heads.sum(-1) + torch.diag(c_res)
        if parallel:
            mixing = attention + torch.diag(c_ffn)
        else:
            mixing = torch.diag(c_ffn + c_res2) @ attention
        rollout = mixing @ rollout
    for step in range(result.n_steps):
        query = result.n_prompt + step - 1
        row = visible(result, step)
        np.testing.assert_allclose(row, rollout[query, : query + 1].numpy(), atol=2e-5)
        assert row.sum() == pytest.approx(1.0, abs=1e-5)


# --- targets and step scores --------------------------------------------------------------------


def test_generated_continuation_is_greedy_and_step_scores_are_direct(tiny_models, plain):
    model, reference = tiny_models("gpt2"), plain("gpt2")
    result = attribute(model, PROMPT, "attention", generate=4, foil=" John")
    ids = model.encode(PROMPT)
    assert result.token_ids[: result.n_prompt] == ids and result.generated
    foil = model.tokenizer(" John", add_special_tokens=False)["input_ids"][0]
    with torch.no_grad():
        for step in range(result.n_steps):
            logits = reference(torch.tensor([ids])).logits[0, -1]
            target = int(logits.argmax())
            assert result.token_ids[result.n_prompt + step] == target
            probs = logits.softmax(-1)
            scores = {name: values[step] for name, values in result.step_scores.items()}
            assert scores["probability"] == pytest.approx(float(probs[target]), abs=1e-5)
            assert scores["logit"] == pytest.approx(float(logits[target]), abs=1e-4)
            assert scores["entropy"] == pytest.approx(float(-(probs * probs.log()).sum()), abs=1e-4)
            assert scores["probability_difference"] == pytest.approx(float(probs[target] - probs[foil]), abs=1e-5)
            assert scores["logit_difference"] == pytest.approx(float(logits[target] - logits[foil]), abs=1e-4)
            ids.append(target)
    assert result.targets == model.decode_tokens(result.token_ids[result.n_prompt :])


def test_words_sum_their_tokens(tiny_models):
    result = attribute(tiny_models("llama"), "The capital of France", "input_x_gradient",
                       continuation=" is Paris")  # fmt: skip
    words = result.by_words()
    # [0] is the BOS token; the last token ("is" of " Paris") is a target only, never a source
    assert words.sources[1:] == ["The", " capital", " of", " France", " is", " Par"]
    assert words.n_prompt_columns == 5 and words.level == "words"
    for column, (start, stop) in enumerate(words.spans):
        for step in range(result.n_steps):
            tokens = result.scores[step, start:stop]
            expected = np.nan if np.isnan(tokens).all() else np.nansum(tokens)
            np.testing.assert_equal(words.scores[step, column], expected)


def test_chat_template_wraps_the_prompt(tiny_models):
    model = tiny_models("llama")
    with pytest.raises(ArgumentError, match="has no chat template"):
        attribute(model, PROMPT, "attention", generate=1, chat_template=True)
    model.tokenizer.chat_template = "{% for m in messages %}<bos>{{ m['content'] }}<eos>{% endfor %}<bos>"
    try:
        result = attribute(model, "Hello", "attention", generate=1, chat_template=True)
    finally:
        model.tokenizer.chat_template = None
    plain_ids = model.tokenizer("Hello", add_special_tokens=False)["input_ids"]
    bos, eos = model.tokenizer.bos_token_id, model.tokenizer.eos_token_id
    assert result.token_ids[: result.n_prompt] == [bos, *plain_ids, eos, bos] and result.chat_template


# --- files -----------------------------------------------------------------------------------


def assert_same(a: Attribution, b: Attribution) -> None:
    for name in Attribution.__dataclass_fields__:
        left, right = getattr(a, name), getattr(b, name)
        if isinstance(left, np.ndarray):
            np.testing.assert_array_equal(left, right)  # NaNs in the same places
        else:
            assert left == right, name


def test_json_round_trip_and_csv(tiny_models, tmp_path):
    result = attribute(tiny_models("llama"), PROMPT, "integrated_gradients", continuation=CONTINUATION,
                       foil=" John", n_steps=8, baseline="mean")  # fmt: skip
    for kept in (result, result.by_words()):
        loaded = load_attribution(kept.save(tmp_path / f"{kept.level}.json"))
        assert_same(kept, loaded)
    table = __import__("pandas").read_csv(result.save(tmp_path / "result.csv"))
    assert len(table) == int((~np.isnan(result.scores)).sum())
    last = table[table["step"] == result.n_steps - 1]
    np.testing.assert_allclose(last["score"], visible(result, result.n_steps - 1))
    np.testing.assert_allclose(last["logit_difference"], result.step_scores["logit_difference"][-1], rtol=1e-6)
    with pytest.raises(ArgumentError, match="use .json or .csv"):
        result.save(tmp_path / "result.txt")
    (tmp_path / "bad.json").write_text('{"format": "something else"}')
    with pytest.raises(ArgumentError, match="not an llm-flow attribution"):
        load_attribution(tmp_path / "bad.json")


# --- bad input ---------------------------------------------------------------------------------


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(ArgumentError) as error:
        get_method("lime")
    assert all(name in str(error.value) for name in METHODS)
    assert get_method("Integrated-Gradients").name == "integrated_gradients"
    with pytest.raises(ArgumentError, match="its options: n_steps, baseline, keep_first, internal_batch_size"):
        get_method("integrated_gradients", steps=10)
    with pytest.raises(ArgumentError, match="n_steps must be an integer 2..1024"):
        get_method("integrated_gradients", n_steps=1)
    with pytest.raises(ArgumentError, match="baseline must be one of zeros, mean, eos"):
        get_method("occlusion", baseline="noise")
    with pytest.raises(ArgumentError, match="heads must be one of mean, max"):
        get_method("attention", heads="sum")


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(foil=" Mary"), ArgumentError, r"is 2 tokens \(' Mar', 'y'\); give a single token"),
    (dict(continuation=""), ArgumentError, "the continuation is empty"),
    (dict(generate=0), ArgumentError, "must be 1..64"),
    (dict(generate=2, continuation=" x"), ArgumentError, "not both"),
    (dict(generate=20), PromptError, "are 50 tokens long, over the configured limit"),
    (dict(function="log-probability", generate=1), ArgumentError, "function must be one of probability, logit"),
    (dict(method="attention", layer=7, generate=1), ArgumentError, "layer 7 is out of range"),
])  # fmt: skip
def test_bad_requests_say_what_to_change(limited, kwargs, error, message):
    method = kwargs.pop("method", "saliency")
    with pytest.raises(error, match=message):
        attribute(limited, PROMPT, method, **kwargs)  # the prompt is 30 tokens


# --- cost ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("method, options", [
    ("saliency", {}), ("input_x_gradient", {}), ("integrated_gradients", {"n_steps": 6}),
    ("gradient_shap", {"n_samples": 5}), ("occlusion", {"window": 1}), ("occlusion", {"window": 4}),
    ("attention", {}), ("alti_rollout", {}),
])  # fmt: skip
def test_work_counts_the_token_passes_the_method_runs(tiny_models, method, options):
    """The cost the app weighs before a long request equals what goes through the model: every
    sample of every forward pass of the plain transformers model on input embeddings (the step
    scores' own pass takes ids), counted by a hook, times its length (three times for methods
    with a backward pass)."""
    model = tiny_models("llama")
    sequence = prepare(model, PROMPT, continuation=CONTINUATION)
    chosen = get_method(method, **options)
    counted, samples = [], []

    def count(module, args, kwargs):
        if kwargs.get("inputs_embeds") is not None:  # methods pass embeddings; step scores pass ids
            counted.append(kwargs["inputs_embeds"].shape[0] * kwargs["inputs_embeds"].shape[1])
            samples.append(kwargs["inputs_embeds"].shape[0])

    handle = model.hf_model.register_forward_pre_hook(count, with_kwargs=True)
    try:
        attribute_sequence(model, sequence, chosen)
    finally:
        handle.remove()
    assert chosen.work(sequence) == sum(counted) * (3 if chosen.uses_gradients else 1)
    assert chosen.passes(sequence) == sum(samples)
    assert (chosen.work(sequence) == 0) == (method in ("attention", "alti_rollout"))


# --- a sanity check on the real model -----------------------------------------------------------

SANITY_PROMPTS = [
    "When Mary and John went to the store, John gave a drink to",
    "It was raining all morning, so we stayed inside and read books. The capital of France is",
    "Yesterday I bought some bread, milk and eggs. In the evening we played chess. Monday, Tuesday, Wednesday,",
    "The opposite of hot is cold, and the opposite of up is",
    "One, two, three, four,",
    "The Eiffel Tower is located in the city of",
    "She poured the water into the glass and then drank the",
    "def add(a, b):\n    return a",
]
# The claim for every method: on average over the prompts, deleting its top token hurts more
# than deleting another. The per-prompt claim is made for the perturbation methods only, chosen
# for what they compute and not for their results: their score is itself the drop when one
# token is taken away (occlusion replaces its embedding, the check deletes it), so on each prompt
# the check measures nearly what they score. (README, Input attribution, has the table for all
# methods; some others win on every prompt there too, which is not claimed.)
EVERY_PROMPT = {name for name, method in METHODS.items() if method.__module__ == "llm_flow.attribution.perturbation"}


@pytest.fixture(scope="module")
def deletions(smollm2):
    """Per prompt: the greedy next token, and how much its probability drops when each context
    token is deleted, computed on the plain transformers model. Positions 1..n-2 only: position
    0 is the attention sink (kept out of the baselines, so it scores 0), and deleting the last
    token moves the prediction to another position, which would make any method that points at
    it (attention, occlusion) win for free."""
    cases = []
    for prompt in SANITY_PROMPTS:
        sequence = prepare(smollm2, prompt, generate=1)
        ids, target = list(sequence.ids[:-1]), sequence.ids[-1]
        shortened = torch.tensor([ids[:j] + ids[j + 1 :] for j in range(1, len(ids) - 1)])
        with smollm2.lock, torch.no_grad():
            before = smollm2.hf_model(torch.tensor([ids]), logits_to_keep=1).logits[0, -1].softmax(-1)[target]
            after = smollm2.hf_model(shortened, logits_to_keep=1).logits[:, -1].softmax(-1)[:, target]
        cases.append((sequence, float(before), (before - after).numpy()))
    return cases


@pytest.mark.real_model
@pytest.mark.parametrize("method", sorted(METHODS))
def test_deleting_the_top_token_hurts_more_than_deleting_another(smollm2, deletions, method):
    """Delete the top-scored context token: the greedy next token's probability drops more than
    when a random other context token is deleted (expected drop: the mean over all of them), on
    average over the prompts for every method, and on every prompt for the methods in
    EVERY_PROMPT (those that score a token by removing it)."""
    top_drops, other_drops = [], []
    for sequence, before, drops in deletions:
        result = attribute_sequence(smollm2, sequence, method)
        top = int(np.argmax(result.scores[0, 1 : sequence.n_prompt - 1]))
        top_drops.append(drops[top])
        other_drops.append(np.delete(drops, top).mean())
        print(f"{method} {sequence.prompt[-28:]!r} -> {result.targets[0]!r} p={before:.3f}: deleting the top "
              f"token {result.tokens[top + 1]!r} drops it by {drops[top]:.3f}, another by {other_drops[-1]:.3f} on average")
    assert np.mean(top_drops) > np.mean(other_drops)
    if method in EVERY_PROMPT:
        assert all(np.greater(top_drops, other_drops)), list(zip(top_drops, other_drops))


def test_target_never_names_a_token_id_in_the_attribution_package():
    """Elsewhere "target" is a position (the graph's explained token); here the token a step
    explains is its *target token* (`Sequence.target_token_id`), so the bare name is unused."""
    import ast

    from tests.conftest import REPO

    bare = []
    for path in sorted((REPO / "llm_flow" / "attribution").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            name = getattr(node, "arg", None) or getattr(node, "id", None) or getattr(node, "attr", None)
            if isinstance(node, ast.FunctionDef):
                name = node.name
            if name == "target":
                bare.append(f"{path.name}:{node.lineno}")
    assert not bare, bare
