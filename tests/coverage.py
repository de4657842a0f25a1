"""Which architectures llm-flow explains, capability by capability, measured on tiny random models.

Every architecture TransformerLens's bridge lists, plus the families users bring from BertViz,
Inseq and the LLM Transparency Tool, is built from a shrunken default config (no hub, no
weights), loaded through `llm_flow.load_model`, and each capability is checked against an
independent computation: the plain `transformers` model (a copy taken before llm-flow touched
it) with ``output_hidden_states`` / ``output_attentions`` and its own ``generate``. Each cell
ends as supported, refused with llm-flow's reason, or not built (transformers cannot build the
class from a small config); anything else is a bug the test reports.
"""

from __future__ import annotations

import copy
import re
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import transformers
from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES

import llm_flow
from llm_flow.models.families import is_encoder
from llm_flow.models.seq2seq import Seq2SeqLlm
from llm_flow.routes.contributions import attention_parts, ffn_parts
from tests.reference import l1_proximity
from tests.tiny_models import tiny_tokenizer, tiny_wordpiece_tokenizer

PROMPT = "The capital of France is Paris. When Mary and John went [MASK]"
CAPABILITIES = ("load", "routes", "attention", "neuron view", "attribution", "generation")
# Families our users bring (issue 20) that the bridge does not list by class name.
EXTRA = ("AlbertForMaskedLM", "BertModel", "DistilBertForMaskedLM")
# The families the issue names, in the order the README lists them.
README_FAMILIES = {
    "GPT-2": "GPT2LMHeadModel", "GPT-Neo": "GPTNeoForCausalLM", "GPT-J": "GPTJForCausalLM",
    "GPT-NeoX / Pythia": "GPTNeoXForCausalLM", "OPT": "OPTForCausalLM", "BLOOM": "BloomForCausalLM",
    "Falcon": "FalconForCausalLM", "GPT-BigCode": "GPTBigCodeForCausalLM", "Phi": "PhiForCausalLM",
    "Phi-3": "Phi3ForCausalLM", "Llama": "LlamaForCausalLM", "Mistral": "MistralForCausalLM",
    "Qwen2": "Qwen2ForCausalLM", "Qwen3": "Qwen3ForCausalLM", "Gemma": "GemmaForCausalLM",
    "Gemma 2": "Gemma2ForCausalLM", "Gemma 3": "Gemma3ForCausalLM", "OLMo": "OlmoForCausalLM",
    "OLMo 2": "Olmo2ForCausalLM", "StableLM": "StableLmForCausalLM", "Cohere": "CohereForCausalLM",
    "Granite": "GraniteForCausalLM", "BERT": "BertForMaskedLM", "MiniLM (BERT, no MLM head)": "BertModel",
    "RoBERTa": "RobertaForMaskedLM", "DistilBERT": "DistilBertForMaskedLM", "ALBERT": "AlbertForMaskedLM",
    "Mixtral": "MixtralForCausalLM", "Qwen2-MoE": "Qwen2MoeForCausalLM", "Qwen3-MoE": "Qwen3MoeForCausalLM",
    "OLMoE": "OlmoeForCausalLM", "T5": "T5ForConditionalGeneration", "Marian": "MarianMTModel",
    "BART": "BartForConditionalGeneration", "mBART": "MBartForConditionalGeneration",
}  # fmt: skip

# Attribute names of sizes across transformers configs, and the tiny value each gets.
_SIZES = dict(
    hidden_size=64, d_model=64, n_embd=64, embed_dim=64, dim=64, embedding_size=64, word_embed_proj_dim=64,
    num_hidden_layers=2, n_layer=2, num_layers=2, n_layers=2, encoder_layers=2, decoder_layers=2,
    num_decoder_layers=2, num_attention_heads=4, n_head=4, n_heads=4, num_heads=4,
    encoder_attention_heads=4, decoder_attention_heads=4, num_key_value_heads=2, multi_query_group_num=2,
    intermediate_size=96, ffn_dim=96, d_ff=96, n_inner=96, hidden_dim=96, encoder_ffn_dim=96,
    decoder_ffn_dim=96, d_kv=16, head_dim=16, rotary_dim=8, max_position_embeddings=256, n_positions=256,
    num_local_experts=4, num_experts=4, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=48,
    shared_expert_intermediate_size=64, initializer_range=0.3,
)  # fmt: skip
_MAX_PARAMETERS = 5_000_000  # a shrunken config still larger than this keeps a part we cannot shrink
_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Cell:
    status: str  # "yes", "refused", "not built" or "crash" (a bug: the test fails on it)
    reason: str = ""


@dataclass
class Row:
    architecture: str
    cells: dict[str, Cell] = field(default_factory=dict)


def architectures() -> list[str]:
    return sorted(set(SUPPORTED_ARCHITECTURES) | set(EXTRA))


def tiny_config(model_class: type, vocab: int) -> transformers.PretrainedConfig:
    """The class's default config with every known size shrunk (sub-configs too)."""
    config = model_class.config_class()
    _shrink(config, vocab)
    config.architectures = [model_class.__name__]
    return config


def _shrink(config: transformers.PretrainedConfig, vocab: int) -> None:
    ids = dict(pad_token_id=2, bos_token_id=0, eos_token_id=1, decoder_start_token_id=2)
    for name, value in {**_SIZES, "vocab_size": vocab, **ids}.items():
        if getattr(config, name, None) is not None or (name in ids and hasattr(config, name)):
            try:
                setattr(config, name, value)
            except AttributeError:  # a size derived from others (a property)
                pass
    if getattr(config, "is_encoder_decoder", False):  # T5's config only has it when a checkpoint sets it
        config.decoder_start_token_id = ids["decoder_start_token_id"]
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = list(config.layer_types)[: config.num_hidden_layers]
    for key in getattr(config, "sub_configs", {}):
        sub = getattr(config, key, None)
        if isinstance(sub, transformers.PretrainedConfig):
            _shrink(sub, vocab)


def build(name: str, tokenizer) -> tuple[torch.nn.Module | None, str]:
    """A tiny random model of class `name` with eager attention, or None and why not."""
    model_class = getattr(transformers, name, None)
    if model_class is None:
        return None, f"transformers {transformers.__version__} has no class {name} (remote code only)"
    try:
        config = tiny_config(model_class, len(tokenizer))
        with torch.device("meta"):
            size = sum(p.numel() for p in model_class._from_config(config).parameters())
        if size > _MAX_PARAMETERS:
            return None, f"its default config keeps {size / 1e6:.0f}M parameters after shrinking (a vision or audio tower)"
        torch.manual_seed(0)
        return model_class._from_config(config, attn_implementation="eager").eval(), ""
    except Exception as exc:  # transformers raises anything for a config it cannot build
        return None, f"transformers cannot build it from a small config ({type(exc).__name__}: {_first_line(exc)})"


def check(name: str) -> Row:
    """Every capability of architecture `name`."""
    row = Row(name)
    model_class = getattr(transformers, name, None)
    encoder = model_class is not None and is_encoder(model_class.config_class())
    tokenizer = tiny_wordpiece_tokenizer() if encoder else tiny_tokenizer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf_model, why = build(name, tokenizer)
        if hf_model is None:
            row.cells = {capability: Cell("not built", why) for capability in CAPABILITIES}
            return row
        reference = copy.deepcopy(hf_model)
        load = _attempt(lambda: llm_flow.load_model(hf_model, tokenizer=tokenizer), name)
        row.cells["load"] = load[0]
        if load[1] is None:
            for capability in CAPABILITIES[1:]:
                row.cells[capability] = Cell("refused", "not loaded")
            return row
        model = load[1]
        if isinstance(model, Seq2SeqLlm):
            row.cells.update(_seq2seq(model, reference, name))
            return row
        run = model.run(PROMPT)
        with torch.no_grad():
            out = reference(run.tokens[None], output_hidden_states=True, output_attentions=True)
        checks = {
            "routes": lambda: _routes(run, out),
            "attention": lambda: _attention(run, out),
            "neuron view": lambda: _neuron_view(run),
            "attribution": lambda: _attribution(model),
            "generation": lambda: _generation(model, reference, run),
        }
        for capability, function in checks.items():
            row.cells[capability] = _attempt(function, name)[0]
    return row


def _seq2seq(model: Seq2SeqLlm, reference, name: str) -> dict[str, Cell]:
    """An encoder–decoder's capabilities: its routes against the float64 formulas, its three
    attentions against `output_attentions`, its greedy target against `generate` with one beam;
    the rest is refused by llm-flow or crashes."""
    source_ids = model.encode(PROMPT)

    def attention() -> None:
        run = model.run_pair_ids(source_ids, source_ids[:5])
        with torch.no_grad():
            out = reference(input_ids=run.source_tokens[None], decoder_input_ids=run.decoder_tokens[None],
                            output_attentions=True)  # fmt: skip
        for stack, expected in (("encoder", out.encoder_attentions), ("decoder", out.decoder_attentions),
                                ("cross", out.cross_attentions)):  # fmt: skip
            _close(run.patterns(stack), torch.stack([layer[0] for layer in expected]), f"{stack} attention weights")

    def generation() -> None:
        ours = model.generate_target(source_ids, 4)
        with torch.no_grad():
            theirs = reference.generate(torch.tensor([source_ids]), max_new_tokens=4, do_sample=False, num_beams=1)
        assert ours == theirs[0, 1:].tolist(), "greedy tokens differ from transformers' generate"

    def attribution() -> None:
        from llm_flow.attribution.api import attribute

        for method in ("input_x_gradient", "alti_rollout"):  # ALTI+ on an encoder–decoder
            result = attribute(model, PROMPT, method, generate=1)
            assert np.isfinite(result.scores[0, : result.n_prompt]).all(), f"{method} gave non-finite scores"

    def routes() -> None:
        """Every block's shares equal the formulas in float64 on the plain model
        (tests/test_seq2seq_routes.py's reference), and a route across the two stacks is drawn."""
        from llm_flow.routes.seq2seq import run_contributions
        from tests.test_seq2seq_routes import assert_shares_match, reference_nodes

        run = model.run_pair_ids(source_ids, source_ids[:5])
        double = copy.deepcopy(reference).double().requires_grad_(False)
        assert_shares_match(run_contributions(run), reference_nodes(double, run)[1])
        assert llm_flow.seq2seq_route(run, -1, 0.001).number_of_edges() > 0, "an empty route"

    checks = {
        "routes": routes,
        "attention": attention,
        "neuron view": lambda: model.run(PROMPT),
        "attribution": attribution,
        "generation": generation,
    }
    return {capability: _attempt(function, name)[0] for capability, function in checks.items()}


def _attempt(function, name: str) -> tuple[Cell, object]:
    try:
        return Cell("yes"), function()
    except llm_flow.LlmFlowError as exc:
        return Cell("refused", _reason(str(exc), name)), None
    except AssertionError as exc:
        return Cell("crash", f"wrong answer: {_first_line(exc)}"), None
    except Exception as exc:
        return Cell("crash", f"{type(exc).__name__}: {_first_line(exc)}"), None


def _routes(run, out) -> None:
    """The states are the model's own, and contributions equal the literal formula (float64)."""
    for layer in range(run.n_layers):
        _close(run.layer(layer).resid_pre, out.hidden_states[layer][0], f"layer {layer} input")
    if run.model.info.no_lm_head:  # a sentence encoder: the last state against the input embeddings
        embeddings = run.model.hf_model.get_input_embeddings().weight
        _close(run.logits, out.hidden_states[-1][0] @ embeddings.T, "logits")
    else:
        _close(run.logits, out.logits[0], "logits")
    for layer in range(run.n_layers):
        c_heads, c_res = llm_flow.attention_contributions(run, layer)
        c_ffn, _ = llm_flow.ffn_contributions(run, layer)
        for position in range(run.n_tokens):
            heads, residual, ffn = _direct(run, layer, position)
            _close(c_heads[position, : heads.shape[0]], heads, f"layer {layer} head contributions")
            _close(c_res[position], residual, f"layer {layer} residual contribution")
            _close(c_ffn[position], ffn, f"layer {layer} FFN contribution")
    assert llm_flow.build_graph(run, threshold=0.02).number_of_edges() > 0, "an empty route"


def _direct(run, layer: int, position: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """docs/method.md by the letter, from the materialised parts in float64."""
    parts = attention_parts(run, layer, position)
    whole = parts.whole.double()
    prox_heads = l1_proximity(whole, parts.pieces.double())
    prox_res = l1_proximity(whole, parts.residual.double())
    total = prox_heads.sum() + prox_res
    if parts.ffn is not None:  # parallel blocks: one joint normalisation
        prox_ffn = l1_proximity(whole, parts.ffn.double())
        total = total + prox_ffn
        return prox_heads / total, prox_res / total, prox_ffn / total
    ffn = ffn_parts(run, layer, position)
    prox_ffn = l1_proximity(ffn.whole.double(), ffn.ffn.double())
    prox_res2 = l1_proximity(ffn.whole.double(), ffn.residual.double())
    return prox_heads / total, prox_res / total, prox_ffn / (prox_ffn + prox_res2)


def _attention(run, out) -> None:
    for layer, expected in enumerate(out.attentions):
        _close(run.layer(layer).pattern.dense(), expected[0], f"layer {layer} attention weights")


def _neuron_view(run) -> None:
    from llm_flow.views.attention_scores import neuron_view

    for layer in range(run.n_layers):
        neuron_view(run, layer, 0, run.n_tokens - 1)


def _attribution(model) -> None:
    from llm_flow.attribution.api import attribute

    prompt = PROMPT
    if model.info.bidirectional:  # an encoder's attribution explains its prediction at a mask
        prompt = f"{PROMPT} {model.tokenizer.mask_token}."
    for method in ("input_x_gradient", "alti_rollout"):
        result = attribute(model, prompt, method, generate=1)
        assert np.isfinite(np.asarray(result.scores, dtype=float)).all(), f"{method} gave non-finite scores"


def _generation(model, reference, run) -> None:
    from llm_flow.views.generation import generate
    from llm_flow.views.sampling import SamplingSettings

    ours = generate(model, PROMPT, 4, SamplingSettings(temperature=0)).ids
    with torch.no_grad():
        theirs = reference.generate(run.tokens[None], max_new_tokens=4, do_sample=False)[0].tolist()
    assert list(ours) == theirs[: len(ours)], "greedy tokens differ from transformers' generate"


def _close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    actual, expected = actual.double().cpu(), expected.double().cpu()
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} against {tuple(expected.shape)}"
    error = float((actual - expected).abs().max()) if actual.numel() else 0.0
    assert error <= _TOLERANCE * (1 + float(expected.abs().max())), f"{what} differ by {error:.2g}"


def _reason(message: str, name: str) -> str:
    """llm-flow's message without the model name it starts with or the run's own numbers."""
    message = message.removeprefix(f"{name}: ")
    return re.sub(r" \((off by|largest difference)[^)]*\)", "", message)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip() or type(exc).__name__).splitlines()[0][:200]


_MARK = {"yes": "✓", "refused": "✗", "not built": "–", "crash": "CRASH"}


def table(rows: list[Row]) -> str:
    """Markdown: one row per architecture, ✓ / ✗ (refused) / – (not built), and why not."""
    lines = [
        "| Architecture | " + " | ".join(CAPABILITIES) + " | Why not |",
        "|---" * (len(CAPABILITIES) + 2) + "|",
    ]
    for row in rows:
        marks = [_MARK[row.cells[c].status] for c in CAPABILITIES]
        lines.append(f"| {row.architecture} | " + " | ".join(marks) + f" | {_why(row)} |")
    return "\n".join(lines) + "\n"


def readme_table(rows: dict[str, Row]) -> str:
    """The README's short table: the families the issue names, ✓ / ✗ per capability."""
    lines = ["| Family | Class | " + " | ".join(CAPABILITIES) + " |", "|---" * (len(CAPABILITIES) + 2) + "|"]
    for family, name in README_FAMILIES.items():
        marks = [_MARK[rows[name].cells[c].status] for c in CAPABILITIES]
        lines.append(f"| {family} | {name} | " + " | ".join(marks) + " |")
    return "\n".join(lines) + "\n"


def _why(row: Row) -> str:
    load = row.cells["load"]
    if load.status != "yes":
        return load.reason.replace("|", "/")
    reasons = [f"{c}: {row.cells[c].reason}" for c in CAPABILITIES[1:] if row.cells[c].status != "yes"]
    return "; ".join(reasons).replace("|", "/")
