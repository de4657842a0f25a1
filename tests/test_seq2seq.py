"""Encoder–decoders (Marian, T5, BART, mBART) loaded by llm-flow: a source and a target (typed or
written greedily) give the three attentions, rebuilt from the queries and keys a run keeps, and
they are what plain `transformers` returns (eager attention) for the same token ids; everything
only decoder-only models have is refused with the reason. Tiny random models saved to folders,
loaded the way users load them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

import llm_flow
from llm_flow.cli import main
from llm_flow.errors import ArgumentError, UnsupportedModelError
from llm_flow.models.seq2seq import Seq2SeqLlm
from llm_flow.models.seq2seq_capture import QueryKeyCapture
from llm_flow.models.seq2seq_layout import Seq2SeqLayout, seq2seq_layout
from llm_flow.routes.seq2seq import _blocks
from llm_flow.notebook import head_view, model_view, neuron_view
from tests.tiny_models import build_model, save_tiny_model

FAMILIES = ["marian", "t5", "bart"]
ALL_FAMILIES = [*FAMILIES, "mbart", "mt5"]
SOURCE = "The capital of France is Paris."
TARGET = "Paris is the capital"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("seq2seq")
    return {family: save_tiny_model(family, root / family) for family in ALL_FAMILIES}


@pytest.fixture(scope="module")
def loaded(folders):
    return {family: llm_flow.load_model(str(folder)) for family, folder in folders.items()}


def plain(folder, run):
    """The folder's model as plain transformers loads it, on the run's own ids."""
    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(folder, attn_implementation="eager").eval()
    with torch.no_grad():
        return model(input_ids=run.source_tokens[None], decoder_input_ids=run.decoder_tokens[None], output_attentions=True)


def assert_transformers_own(folder, run) -> None:
    """Every layer's rebuilt weights of the three attentions equal plain transformers' eager
    ``output_attentions`` on the same weights and ids, and so do the logits."""
    reference = plain(folder, run)
    for stack, theirs in (("encoder", reference.encoder_attentions), ("decoder", reference.decoder_attentions),
                          ("cross", reference.cross_attentions)):  # fmt: skip
        assert run.n_layers_of(stack) == len(theirs)
        for layer, expected in enumerate(theirs):
            np.testing.assert_allclose(run.pattern(stack, layer).numpy(), expected[0].numpy(), atol=1e-6)
    assert run.pattern("cross", 0).shape == (run.n_heads_of("cross"), run.n_decoder, run.n_source)
    # float32 SDPA against eager: logits of mT5's size (tens) differ in their last bits
    np.testing.assert_allclose(run.logits.numpy(), reference.logits[0].numpy(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_the_three_attentions_and_logits_are_transformers_own(family, folders, loaded):
    model = loaded[family]
    assert isinstance(model, Seq2SeqLlm) and model.info.encoder_layers == 2 and model.info.n_layers == 2
    run = model.run_pair(SOURCE, TARGET)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folders[family])
    assert run.source_tokens.tolist() == tokenizer(SOURCE).input_ids
    assert run.target_ids == tokenizer(text_target=TARGET).input_ids
    assert run.decoder_tokens[0] == transformers.AutoConfig.from_pretrained(folders[family]).decoder_start_token_id
    assert_transformers_own(folders[family], run)
    # a longer pair: T5's relative position bias past its exact buckets and its maximum distance (128)
    assert_transformers_own(folders[family], model.run_pair_ids(list(range(5, 175)), list(range(7, 47))))


@pytest.mark.parametrize("family", ["t5", "marian"])
def test_a_run_keeps_queries_and_keys_that_grow_linearly_with_the_source(family, loaded):
    model = loaded[family]
    target = list(range(7, 27))
    runs = [model.run_pair_ids(list(range(5, 5 + n)), target) for n in (40, 80, 160)]
    sizes = [run.nbytes for run in runs]
    assert sizes[2] - sizes[1] == 2 * (sizes[1] - sizes[0]) > 0  # an [S, S] or [T, S] pattern would not be linear
    heads, d_head, n_source, n_decoder = model.info.n_heads, model.info.d_head, 160, len(target) + 1
    for stack, n_queries, n_keys in (("encoder", n_source, n_source), ("decoder", n_decoder, n_decoder),
                                     ("cross", n_decoder, n_source)):  # fmt: skip
        for layer in runs[2].attention_of(stack):
            assert (layer.queries.shape, layer.keys.shape) == ((n_queries, heads, d_head), (n_keys, heads, d_head))
    # a pattern asked for is kept with the run and counted, until three others push it out
    run = runs[0]
    first = run.pattern("encoder", 0)
    assert run.nbytes == sizes[0] + first.numel() * first.element_size()
    assert run.pattern("encoder", 0) is first
    others = [run.pattern(stack, 1) for stack in ("encoder", "decoder", "cross")]
    assert run.nbytes == sizes[0] + sum(p.numel() * p.element_size() for p in others)
    with pytest.raises(ArgumentError, match="the cross has layers 0..1"):
        run.pattern("cross", 2)
    with pytest.raises(ArgumentError, match="unknown attention 'self'"):
        run.pattern("self", 0)


def test_a_run_attends_with_sdpa_and_leaves_the_model_eager(loaded, monkeypatch):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    calls = []

    def counted(module, query, key, *args, **kwargs):
        calls.append((tuple(query.shape), tuple(key.shape)))
        return sdpa_attention_forward(module, query, key, *args, **kwargs)

    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS, "sdpa", counted)
    model = loaded["t5"]
    run = model.run_pair_ids(list(range(5, 15)), list(range(7, 12)))
    heads, d_head = model.info.n_heads, model.info.d_head
    source, decoder = (1, heads, 10, d_head), (1, heads, 6, d_head)  # [batch, heads, tokens, d_head]
    enc, dec, cross = (source, source), (decoder, decoder), (decoder, source)
    assert sorted(calls) == sorted([enc, enc, dec, dec, cross, cross])
    assert model.hf_seq2seq.config._attn_implementation == "eager"  # the route pass reads output_attentions
    assert run.n_source == 10


@pytest.mark.parametrize("family", FAMILIES)
def test_a_target_written_greedily_is_the_argmax_of_each_step(family, loaded):
    model = loaded[family]
    run = model.run_pair(SOURCE, max_new_tokens=5)
    assert run.target is None and 1 <= len(run.target_ids) <= 5
    # teacher-forced over the written target, each written token is the previous step's argmax,
    # but for the end-of-sequence the model's own settings force at the length limit (Marian)
    written, greedy = run.target_ids, run.logits[:-1].argmax(-1).tolist()
    forced = model.hf_seq2seq.generation_config.forced_eos_token_id
    if len(written) == 5 and forced is not None:
        assert written[-1] == forced
        written, greedy = written[:-1], greedy[:-1]
    assert greedy == written


def test_the_notebook_draws_a_run_in_three_tabs(folders, loaded):
    run = loaded["marian"].run_pair(SOURCE, TARGET)
    reference = plain(folders["marian"], run)
    page = model_view(run, html_action="return")
    assert page.tabs == ["Encoder", "Decoder", "Cross"]
    stacked = torch.stack([t[0] for t in reference.cross_attentions]).numpy()  # [L, H, T, S]
    n_layers, n_heads, rows, cols = stacked.shape
    np.testing.assert_allclose(page.figures[2].data[0].z,
                               stacked.transpose(0, 2, 1, 3).reshape(n_layers * rows, n_heads * cols), atol=1e-6)  # fmt: skip
    page = head_view(run, layer=1, html_action="return")
    assert [f.layout.title.text.split(":")[0] for f in page.figures] == ["Encoder", "Decoder", "Cross"]
    with pytest.raises(ArgumentError, match="not available for encoder–decoders"):
        head_view(run, weighting="alti")


def test_the_cli_writes_three_tabs_and_their_numbers(folders, tmp_path, capsys):
    html, csv = tmp_path / "model.html", tmp_path / "model.csv"
    code = main(["attention", "--model", str(folders["t5"]), "--prompt", SOURCE, "--target", TARGET,
                 "--view", "model", "--html", str(html), "--csv", str(csv)])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "encoder–decoder: 2 encoder and 2 decoder layers" in printed and "Strongest links" in printed
    page = html.read_text()
    assert page.count("Plotly.newPlot") == 3 and ">Cross</button>" in page
    import pandas as pd

    table = pd.read_csv(csv, keep_default_na=False)
    assert set(table["attention"]) == {"encoder", "decoder", "cross"}
    cross = table[table["attention"] == "cross"]
    model = llm_flow.load_model(str(folders["t5"]))
    run = model.run_pair(SOURCE, TARGET)
    for row in cross.sample(20, random_state=0).itertuples():
        weight = run.pattern("cross", row.layer)[int(row.head.split()[1]), row.query, row.source]
        assert abs(row.weight - float(weight)) < 1e-6
        assert row.source_token == run.source_str_tokens[row.source]
    for extra, message in ((["--png", str(tmp_path / "x.png")], "choose it with --stack"),
                           (["--weight", "alti"], "leave out --view neuron")):  # fmt: skip
        assert main(["attention", "--model", str(folders["t5"]), "--prompt", SOURCE, "--view", "model", *extra]) != 0
        assert message in capsys.readouterr().err


def test_decoder_only_capabilities_are_refused_with_the_reason(loaded):
    model = loaded["bart"]
    for call in (lambda: model.run(SOURCE), lambda: model.hf_model, lambda: model.bridge,
                 lambda: model.unembed(torch.zeros(64)), lambda: model.attention_output_gram(0),
                 lambda: neuron_view(model, SOURCE)):  # fmt: skip
        with pytest.raises(UnsupportedModelError, match="BartForConditionalGeneration is an encoder–decoder"):
            call()
    with pytest.raises(llm_flow.PromptError, match="target text is empty"):
        model.run_pair(SOURCE, "  ")
    with pytest.raises(ArgumentError, match="1..256"):
        model.run_pair(SOURCE, max_new_tokens=0)


def test_unchecked_encoder_decoders_are_refused_at_load(tmp_path):
    """In memory, and from a folder before any weight is read."""
    from transformers import PegasusConfig, PegasusForConditionalGeneration

    _, tokenizer = build_model("t5")
    config = PegasusConfig(vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1,
                           encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32)  # fmt: skip
    model = PegasusForConditionalGeneration(config)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    for source in (model, str(tmp_path)):
        with pytest.raises(UnsupportedModelError) as error:
            llm_flow.load_model(source, tokenizer=tokenizer if source is model else None)
        message = str(error.value)
        assert "PegasusForConditionalGeneration is an encoder–decoder llm-flow has not been checked on" in message
        assert "Marian, T5" in message and "\n" not in message


def test_an_in_memory_model_loads_too():
    model, tokenizer = build_model("t5")
    loaded = llm_flow.load_model(model, tokenizer=tokenizer)
    assert isinstance(loaded, Seq2SeqLlm) and loaded.run_pair(SOURCE, TARGET).n_source == len(tokenizer(SOURCE).input_ids)


def t5_style(model) -> bool:
    """T5-style ``block[l]`` of sublayers (projections q, k, v, o) rather than BART-style
    ``layers[l]`` (q_proj, k_proj, v_proj, out_proj), as the model's own modules are built."""
    encoder = model.get_encoder()
    t5 = hasattr(encoder, "block")
    attention = encoder.block[0].layer[0].SelfAttention if t5 else encoder.layers[0].self_attn
    children = {name for name, _ in attention.named_children()}
    assert children >= ({"q", "k", "v", "o"} if t5 else {"q_proj", "k_proj", "v_proj", "out_proj"}), children
    assert hasattr(encoder, "layers") != t5
    return t5


def post_ln(model) -> bool:
    """Whether a decoder layer's output is its last LayerNorm's output, as plain `transformers` runs it."""
    t5 = t5_style(model)
    layer = model.get_decoder().block[0] if t5 else model.get_decoder().layers[0]
    norm = layer.layer[-1].layer_norm if t5 else layer.final_layer_norm
    seen = {}

    def keep(name):
        def hook(module, args, out):
            seen[name] = out[0] if isinstance(out, tuple) else out  # returns None: the output stays the model's
        return hook

    hooks = [norm.register_forward_hook(keep("norm")), layer.register_forward_hook(keep("layer"))]
    with torch.no_grad():
        model(input_ids=torch.tensor([[5, 6, 7, 2]]), decoder_input_ids=torch.tensor([[0, 8, 9]]))
    for hook in hooks:
        hook.remove()
    return torch.equal(seen["norm"], seen["layer"])


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_the_model_panel_says_where_the_layer_norms_sit(family, folders, loaded):
    """Post-LN (Marian, BART) as plain `transformers` runs the saved model; mBART, T5 and mT5
    normalise before each block."""
    after = post_ln(transformers.AutoModelForSeq2SeqLM.from_pretrained(folders[family]).eval())
    assert loaded[family].info.post_ln == after == (family in ("marian", "bart"))
    wording = "LayerNorm after each residual add" if after else "normalised before each block"
    assert wording in llm_flow.wording.block_kind(loaded[family].info)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_the_layout_is_decided_from_the_config_as_the_modules_are_built(family):
    """One decision, from the model type alone, that every reader of the modules shares."""
    model, _ = build_model(family)
    assert seq2seq_layout(model.config) == Seq2SeqLayout(t5_blocks=t5_style(model), post_ln=post_ln(model))


def test_a_key_transformers_does_not_read_leaves_bart_post_ln():
    """Some BART configs carry fairseq's ``normalize_before``; transformers' BART layers ignore it."""
    model, _ = build_model("bart")
    model = type(model)(type(model.config)(**{**model.config.to_dict(), "normalize_before": True})).eval()
    assert post_ln(model) and seq2seq_layout(model.config).post_ln


def test_an_unchecked_model_type_is_refused_by_every_reader_of_the_modules():
    """Not read as the nearest family (Pegasus has BART's module names, not its layout checks),
    and never an AttributeError."""
    from transformers import PegasusConfig, PegasusForConditionalGeneration

    config = PegasusConfig(vocab_size=64, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                           decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32)  # fmt: skip
    model = PegasusForConditionalGeneration(config)
    message = ("model type 'pegasus' is an encoder–decoder llm-flow has not been checked on; "
               "it explains Marian, T5, mT5, BART, mBART")  # fmt: skip
    # the layout, then a run's query/key capture and the route contributions' blocks
    for read in (lambda: seq2seq_layout(config), lambda: QueryKeyCapture(model), lambda: _blocks(model)):
        with pytest.raises(UnsupportedModelError) as refused:
            read()
        assert str(refused.value) == message
