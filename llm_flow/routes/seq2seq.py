"""ALTI+ on encoder–decoders (docs/method.md#encoderdecoders): the
contributions of every attention block of the encoder (self), and of the decoder (self and
cross), of every FFN block of both stacks, and the rollout of the attention blocks into each
target token's shares of the source tokens and the target prefix (Ferrando et al. 2022,
*Towards Opening the Black Box of Neural Machine Translation*).

One pass of the plain `transformers` model with forward hooks records, per block, the residual
that enters it, what the block adds (for attention: the input its values are computed from, the
encoder's final state for cross-attention) and the state it produces; the attention weights come
from the same pass (``output_attentions``). Post-LN blocks (Marian, BART) are linearised per
position as under *Encoders*; pre-norm blocks (T5, mBART) add their output to the residual. Every
block's parts are checked to add up to the state the model produced, so an architecture whose
modules are not what this reads is refused, not drawn.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from llm_flow.errors import UnsupportedModelError
from llm_flow.models.seq2seq import Seq2SeqLlm
from llm_flow.models.seq2seq_layout import Seq2SeqLayout, seq2seq_layout
from llm_flow.routes.proximity import head_proximities

if TYPE_CHECKING:
    from llm_flow.models.seq2seq_run import Seq2SeqRun

#: Largest error, relative to the state's size, of the parts' sum before a block is refused.
TOLERANCE = 1e-4


@dataclass(frozen=True)
class BlockContributions:
    """One attention block: ``heads[i, j, h]`` is the share of source ``j`` through head ``h``
    in query ``i``'s state after the block, ``residual[i]`` the residual's; each row sums to 1."""

    heads: np.ndarray  # [Q, K, H] float64
    residual: np.ndarray  # [Q] float64

    def tokens(self) -> np.ndarray:
        """[Q, K]: heads summed."""
        return self.heads.sum(-1)

    def mixing(self) -> np.ndarray:
        """[Q, Q] for a self-attention block: heads summed, the residual on the diagonal."""
        out = self.tokens().copy()
        out[np.diag_indices_from(out)] += self.residual
        return out


@dataclass(frozen=True)
class FfnContributions:
    """One FFN block: ``ffn[i]`` is the FFN output's share of position ``i``'s state after the
    block, ``residual[i]`` the residual's; they sum to 1 (0 and 0 for a state neither is close to)."""

    ffn: np.ndarray  # [Q] float64
    residual: np.ndarray  # [Q] float64


@dataclass(frozen=True)
class Seq2SeqContributions:
    """Every block of one source and decoder sequence."""

    encoder: list[BlockContributions]  # per encoder layer, [S, S, H]
    decoder_self: list[BlockContributions]  # per decoder layer, [T, T, H]
    cross: list[BlockContributions]  # per decoder layer, [T, S, H]
    encoder_ffn: list[FfnContributions]  # per encoder layer, [S]
    decoder_ffn: list[FfnContributions]  # per decoder layer, [T]

    def rollout(self) -> np.ndarray:
        """ALTI+ [T, S + T]: each decoder position's shares of the source tokens and of the
        decoder's tokens (itself and the prefix), rows summing to 1 (docs/method.md)."""
        encoder = np.eye(self.encoder[0].residual.shape[0])
        for block in self.encoder:
            encoder = block.mixing() @ encoder
        n_target = self.cross[0].residual.shape[0]
        n_source = encoder.shape[0]
        rollout = np.concatenate([np.zeros((n_target, n_source)), np.eye(n_target)], axis=1)
        for own, cross in zip(self.decoder_self, self.cross):
            mixed = cross.residual[:, None] * own.mixing()  # what self-attention wrote, through the cross block's residual
            through = mixed @ rollout
            through[:, :n_source] += cross.tokens() @ encoder
            rollout = through
        return rollout


def seq2seq_contributions(seq2seq: Seq2SeqLlm, source_ids: list[int], target_ids: list[int]) -> Seq2SeqContributions:
    """The contributions of every attention block for the source and ``[start] + target``."""
    hf = seq2seq.hf_seq2seq
    blocks = _blocks(hf)
    device = next(hf.parameters()).device
    records: dict[tuple[str, int, str], dict[str, torch.Tensor]] = {key: {} for key in blocks}
    with seq2seq.lock, torch.no_grad(), _recording(blocks, records):
        outputs = hf(
            input_ids=torch.tensor([source_ids], device=device),
            decoder_input_ids=torch.tensor([[seq2seq.decoder_start_token_id, *target_ids]], device=device),
            output_attentions=True, return_dict=True, use_cache=False,
        )  # fmt: skip
    weights = {"encoder": outputs.encoder_attentions, "decoder": outputs.decoder_attentions, "cross": outputs.cross_attentions}
    found: dict[str, list] = {"encoder": [], "decoder": [], "cross": [], "encoder_ffn": [], "decoder_ffn": []}
    for (stack, layer, kind), spec in blocks.items():
        name = f"{seq2seq.info.architecture} {stack} layer {layer} {_BLOCK_NAMES[kind]}"
        if kind == "ffn":
            found[f"{stack}_ffn"].append(_ffn_block(spec, records[(stack, layer, kind)], name))
            continue
        which = "encoder" if stack == "encoder" else ("cross" if kind == "cross" else "decoder")
        found[which].append(_block(spec, records[(stack, layer, kind)], weights[which][layer][0], name))
    return Seq2SeqContributions(found["encoder"], found["decoder"], found["cross"], found["encoder_ffn"], found["decoder_ffn"])


_BLOCK_NAMES = {"self": "self-attention", "cross": "cross-attention", "ffn": "FFN"}


def decoder_states(seq2seq: Seq2SeqLlm, source_ids: list[int], target_ids: list[int]) -> dict[tuple[str, int], torch.Tensor]:
    """The decoder's residual states that a route's decoder nodes stand for, from one pass with
    the hooks the contributions use: ``("X", -1)`` the first layer's input, ``("A", l)`` after
    self-attention, ``("C", l)`` after cross-attention, ``("I", l)`` after the layer; each [T, d]."""
    hf = seq2seq.hf_seq2seq
    blocks = {key: spec for key, spec in _blocks(hf).items() if key[0] == "decoder"}
    records: dict[tuple[str, int, str], dict[str, torch.Tensor]] = {key: {} for key in blocks}
    device = next(hf.parameters()).device
    with seq2seq.lock, torch.no_grad(), _recording(blocks, records):
        hf(input_ids=torch.tensor([source_ids], device=device),
           decoder_input_ids=torch.tensor([[seq2seq.decoder_start_token_id, *target_ids]], device=device),
           return_dict=True, use_cache=False)  # fmt: skip
    states = {}
    for (_, layer, kind), spec in blocks.items():
        record = records[("decoder", layer, kind)]
        states[({"self": "A", "cross": "C", "ffn": "I"}[kind], layer)] = _state_after(spec, record)[0].detach().cpu()
        if kind == "self" and layer == 0:
            before = record["residual"] if spec.sublayer is not None else record["query_input" if spec.post_ln else "norm_input"]
            states[("X", -1)] = before[0].detach().cpu()
    return states


def _state_after(spec: _Spec | _FfnSpec, record: dict) -> torch.Tensor:
    """The state a block produced, as `_block` and `_ffn_block` read it: [1, T, d]."""
    if isinstance(spec, _FfnSpec):
        return record["whole"]
    if spec.sublayer is not None:
        return record["whole"]
    if spec.post_ln:
        return record["norm_output"]
    return record["norm_input"] + record["attention_out"]


def run_contributions(run: "Seq2SeqRun") -> Seq2SeqContributions:
    """`seq2seq_contributions` of a run's own tokens, kept with the run (a run is immutable, so
    every route drawn on it, at any threshold or target, shares them; counted in its bytes)."""
    return run.derived(
        ContributionsOf(), lambda: seq2seq_contributions(run.model, run.source_tokens.tolist(), run.target_ids)
    )


@dataclass(frozen=True)
class ContributionsOf:
    """Key of a run's contributions in its derived store (they depend on nothing but the run)."""


@dataclass(frozen=True)
class _Spec:
    """Where one attention block lives: its attention module, its LayerNorm and how they sit."""

    attention: torch.nn.Module
    norm: torch.nn.Module | None  # post-LN: the LayerNorm after the residual add; pre-norm BART-like: before
    sublayer: torch.nn.Module | None  # T5: the sublayer whose input is the residual and output the state
    layout: Seq2SeqLayout

    @property
    def post_ln(self) -> bool:
        return self.layout.post_ln


@dataclass(frozen=True)
class _FfnSpec:
    """Where one FFN block lives: the modules whose input is the residual entering it, whose
    output is ``mlp_out`` and whose output is the state after it."""

    entry: torch.nn.Module  # input: the residual (T5's FF sublayer; fc1 post-LN; the pre-norm LayerNorm)
    mlp: torch.nn.Module  # output: mlp_out, output bias included (fc2, T5's DenseReluDense)
    exit: torch.nn.Module  # output: the state after the block (the FF sublayer, the post-LN norm, the layer)
    norm: torch.nn.Module | None  # post-LN: the LayerNorm whose input is residual + mlp_out


def _blocks(hf) -> dict[tuple[str, int, str], _Spec | _FfnSpec]:
    layout = seq2seq_layout(hf.config)
    out: dict[tuple[str, int, str], _Spec | _FfnSpec] = {}
    if layout.t5_blocks:
        for stack, owner in (("encoder", hf.get_encoder()), ("decoder", hf.get_decoder())):
            for layer, block in enumerate(owner.block):
                out[(stack, layer, "self")] = _Spec(block.layer[0].SelfAttention, None, block.layer[0], layout)
                if stack == "decoder":
                    out[(stack, layer, "cross")] = _Spec(block.layer[1].EncDecAttention, None, block.layer[1], layout)
                ff = block.layer[-1]
                out[(stack, layer, "ffn")] = _FfnSpec(ff, ff.DenseReluDense, ff, None)
        return out
    for stack, owner in (("encoder", hf.get_encoder()), ("decoder", hf.get_decoder())):
        for layer, block in enumerate(owner.layers):
            out[(stack, layer, "self")] = _Spec(block.self_attn, block.self_attn_layer_norm, None, layout)
            if stack == "decoder":
                out[(stack, layer, "cross")] = _Spec(block.encoder_attn, block.encoder_attn_layer_norm, None, layout)
            norm = block.final_layer_norm
            out[(stack, layer, "ffn")] = (
                _FfnSpec(block.fc1, block.fc2, norm, norm) if layout.post_ln else _FfnSpec(norm, block.fc2, block, None)
            )
    return out


@contextmanager
def _recording(blocks: dict, records: dict) -> Iterator[None]:
    """Hooks that keep, per block: the attention's input and key/value input, and the residual
    and state (from the LayerNorm or T5's sublayer)."""
    handles = []

    def keep(record: dict, names: tuple[str, ...]):
        def hook(module, args, kwargs, output=None):
            values = {"input": args[0] if args else kwargs.get("hidden_states"),
                      "kv": kwargs.get("key_value_states"), "output": output}  # fmt: skip
            for name in names:
                source, _, target = name.partition("->")
                value = values[source]
                if isinstance(value, tuple):
                    value = value[0]
                record[target] = value
        return hook

    try:
        for key, spec in blocks.items():
            record = records[key]
            if isinstance(spec, _FfnSpec):
                handles.append(spec.entry.register_forward_pre_hook(keep(record, ("input->residual",)), with_kwargs=True))
                handles.append(spec.mlp.register_forward_hook(keep(record, ("output->mlp_out",)), with_kwargs=True))
                handles.append(spec.exit.register_forward_hook(keep(record, ("output->whole",)), with_kwargs=True))
                if spec.norm is not None:
                    handles.append(spec.norm.register_forward_pre_hook(keep(record, ("input->norm_input",)), with_kwargs=True))
                continue
            handles.append(spec.attention.register_forward_pre_hook(
                keep(record, ("input->query_input", "kv->kv")), with_kwargs=True))  # fmt: skip
            handles.append(spec.attention.register_forward_hook(
                keep(record, ("output->attention_out",)), with_kwargs=True))  # fmt: skip
            if spec.sublayer is not None:
                handles.append(spec.sublayer.register_forward_hook(
                    keep(record, ("input->residual", "output->whole")), with_kwargs=True))  # fmt: skip
            else:
                handles.append(spec.norm.register_forward_hook(
                    keep(record, ("input->norm_input", "output->norm_output")), with_kwargs=True))  # fmt: skip
        yield
    finally:
        for handle in handles:
            handle.remove()


def _projections(spec: _Spec) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None, int]:
    """W_V [H·dh, d], b_V, W_O [d, H·dh], b_O and the head count of a T5 or BART-like attention."""
    attention = spec.attention
    if spec.layout.t5_blocks:
        return attention.v.weight, None, attention.o.weight, None, attention.n_heads
    return (attention.v_proj.weight, attention.v_proj.bias, attention.out_proj.weight, attention.out_proj.bias,
            attention.num_heads)  # fmt: skip


def _block(spec: _Spec, record: dict, pattern: torch.Tensor, name: str) -> BlockContributions:
    """Contributions of one block from what the hooks recorded, its parts checked to add up.

    The parts ``z[q, k, h] = A[h, q, k] · g[q] ⊙ C(moved[k, h])`` (post-LN; ``moved`` alone
    otherwise) go to the factored proximity kernel (routes/proximity.py) in float32, which is exact
    without cancellation; the sum check stays in float64."""
    w_v, b_v, w_o, b_o, n_heads = (t if not isinstance(t, torch.Tensor) else t.double() for t in _projections(spec))
    query_input = record["query_input"][0].double()
    value_input = (record["kv"] if record["kv"] is not None else record["query_input"])[0].double()
    d_head = w_v.shape[0] // n_heads
    values = value_input @ w_v.T + (0 if b_v is None else b_v)  # [K, H·dh]
    moved = torch.einsum("khe,dhe->khd", values.view(-1, n_heads, d_head), w_o.view(-1, n_heads, d_head))  # [K, H, d]
    bias = torch.zeros(moved.shape[-1], dtype=torch.float64) if b_o is None else b_o.double()
    gain = None  # [Q, d], post-LN only
    if spec.sublayer is not None:  # T5: state = residual + attention output
        residual, whole = record["residual"][0].double(), record["whole"][0].double()
        extra = bias.expand_as(residual)
    elif spec.post_ln:  # state = LN(residual + attention output), linearised per position
        residual, whole = query_input, record["norm_output"][0].double()
        gain = _gain(spec.norm, record["norm_input"][0].double())
        moved = _centred(moved)  # centring commutes with the scalar A: once per source, not per query
        residual = _centred(residual) * gain
        extra = _centred(bias.expand_as(residual)) * gain + spec.norm.bias.double()
    else:  # pre-norm BART-like (mBART): the LayerNorm's input is the residual
        residual = record["norm_input"][0].double()
        whole = residual + record["attention_out"][0].double()
        extra = bias.expand_as(residual)
    weights = pattern.double()  # [H, Q, K]
    summed = torch.einsum("hqk,khd->qd", weights, moved)  # Σ over sources and heads of the parts
    _check_sum(whole, (summed if gain is None else summed * gain) + residual + extra, name)
    # The decoder's proximity kernel, every source a part of every row (a decoder self-attention's
    # hidden sources have weight 0, so their parts are 0): no [Q, K, H, d] is ever built.
    n_query, n_key = weights.shape[1], moved.shape[0]
    every_source = torch.full((n_query,), n_key - 1)
    prox_heads = head_proximities(whole, gain, moved, weights.transpose(0, 1), every_source).double()  # [Q, K, H]
    prox_residual = _proximity(whole, residual)
    total = _safe(prox_heads.sum((1, 2)) + prox_residual)
    return BlockContributions((prox_heads / total[:, None, None]).numpy(), (prox_residual / total).numpy())


def _ffn_block(spec: _FfnSpec, record: dict, name: str) -> FfnContributions:
    """Shares of one FFN block (output bias inside ``mlp_out``; a post-LN norm's β in no part)."""
    residual, mlp_out, whole = (record[key][0].double() for key in ("residual", "mlp_out", "whole"))  # [Q, d]
    extra = torch.zeros_like(whole)
    if spec.norm is not None:
        gain = _gain(spec.norm, record["norm_input"][0].double())
        residual, mlp_out = _centred(residual) * gain, _centred(mlp_out) * gain
        extra = spec.norm.bias.double().expand_as(whole)
    _check_sum(whole, residual + mlp_out + extra, name)
    prox_ffn, prox_residual = _proximity(whole, mlp_out), _proximity(whole, residual)
    total = _safe(prox_ffn + prox_residual)
    return FfnContributions((prox_ffn / total).numpy(), (prox_residual / total).numpy())


def _gain(norm: torch.nn.Module, u: torch.Tensor) -> torch.Tensor:
    """[Q, d]: the post-LN LayerNorm at its input `u` [Q, d] is the linear map
    ``g ⊙ (x − mean x)`` per position plus β (docs/method.md#encoders); this is ``g = γ / σ(u)``."""
    return norm.weight.double() / torch.sqrt(u.var(-1, unbiased=False, keepdim=True) + norm.eps)


def _centred(x: torch.Tensor) -> torch.Tensor:
    return x - x.mean(-1, keepdim=True)


def _check_sum(whole: torch.Tensor, summed: torch.Tensor, name: str) -> None:
    """Refuse a block whose parts do not add up to the state the model produced."""
    error = float((summed - whole).abs().max())
    if error > TOLERANCE * (1 + float(whole.abs().max())):
        raise UnsupportedModelError(
            f"{name}: the parts do not add up to the state the model produced (off by {error:.2g}), "
            "so llm-flow cannot decompose this architecture"
        )


def _proximity(whole: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
    """max(||y||₁ − ||y − z||₁, 0) per position: [Q]."""
    return (whole.abs().sum(-1) - (whole - part).abs().sum(-1)).clamp_min(0)


def _safe(total: torch.Tensor) -> torch.Tensor:
    return torch.where(total > 0, total, torch.ones_like(total))
