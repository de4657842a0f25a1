"""ALTI+ on encoder–decoders (docs/method.md#encoderdecoders): the
contributions of every attention block of the encoder (self), and of the decoder (self and
cross), and their rollout into each target token's shares of the source tokens and the target
prefix (Ferrando et al. 2022, *Towards Opening the Black Box of Neural Machine Translation*).

One pass of the plain `transformers` model with forward hooks records, per attention block, the
residual that enters it, the input its values are computed from (the encoder's final state for
cross-attention) and the state it produces; the attention weights come from the same pass
(``output_attentions``). Post-LN blocks (Marian, BART) are linearised per position as under
*Encoders*; pre-norm blocks (T5, mBART) add their output to the residual. Every block's parts are
checked to add up to the state the model produced, so an architecture whose modules are not
what this reads is refused, not drawn.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from llm_flow.errors import UnsupportedModelError
from llm_flow.models.seq2seq import Seq2SeqLlm

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
class Seq2SeqContributions:
    """Every attention block of one source and decoder sequence."""

    encoder: list[BlockContributions]  # per encoder layer, [S, S, H]
    decoder_self: list[BlockContributions]  # per decoder layer, [T, T, H]
    cross: list[BlockContributions]  # per decoder layer, [T, S, H]

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
    found: dict[str, list[BlockContributions]] = {"encoder": [], "decoder": [], "cross": []}
    for (stack, layer, kind), spec in blocks.items():
        which = "encoder" if stack == "encoder" else ("cross" if kind == "cross" else "decoder")
        name = f"{seq2seq.info.architecture} {stack} layer {layer} {'cross-attention' if kind == 'cross' else 'self-attention'}"
        found[which].append(_block(spec, records[(stack, layer, kind)], weights[which][layer][0], name))
    return Seq2SeqContributions(found["encoder"], found["decoder"], found["cross"])


@dataclass(frozen=True)
class _Spec:
    """Where one attention block lives: its attention module, its LayerNorm and how they sit."""

    attention: torch.nn.Module
    norm: torch.nn.Module | None  # post-LN: the LayerNorm after the residual add; pre-norm BART-like: before
    sublayer: torch.nn.Module | None  # T5: the sublayer whose input is the residual and output the state
    post_ln: bool


def _blocks(hf) -> dict[tuple[str, int, str], _Spec]:
    kind = hf.config.model_type
    out: dict[tuple[str, int, str], _Spec] = {}
    if kind in ("t5", "mt5"):
        for stack, owner in (("encoder", hf.get_encoder()), ("decoder", hf.get_decoder())):
            for layer, block in enumerate(owner.block):
                out[(stack, layer, "self")] = _Spec(block.layer[0].SelfAttention, None, block.layer[0], False)
                if stack == "decoder":
                    out[(stack, layer, "cross")] = _Spec(block.layer[1].EncDecAttention, None, block.layer[1], False)
        return out
    post_ln = not getattr(hf.config, "normalize_before", False) and kind in ("marian", "bart")
    for stack, owner in (("encoder", hf.get_encoder()), ("decoder", hf.get_decoder())):
        for layer, block in enumerate(owner.layers):
            out[(stack, layer, "self")] = _Spec(block.self_attn, block.self_attn_layer_norm, None, post_ln)
            if stack == "decoder":
                out[(stack, layer, "cross")] = _Spec(block.encoder_attn, block.encoder_attn_layer_norm, None, post_ln)
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


def _projections(attention) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None, int]:
    """W_V [H·dh, d], b_V, W_O [d, H·dh], b_O and the head count of a BART-like or T5 attention."""
    if hasattr(attention, "v_proj"):
        return (attention.v_proj.weight, attention.v_proj.bias, attention.out_proj.weight, attention.out_proj.bias,
                attention.num_heads)  # fmt: skip
    return attention.v.weight, None, attention.o.weight, None, attention.n_heads


def _block(spec: _Spec, record: dict, pattern: torch.Tensor, name: str) -> BlockContributions:
    """Contributions of one block from what the hooks recorded, its parts checked to add up."""
    w_v, b_v, w_o, b_o, n_heads = (t if not isinstance(t, torch.Tensor) else t.double() for t in _projections(spec.attention))
    query_input = record["query_input"][0].double()
    value_input = (record["kv"] if record["kv"] is not None else record["query_input"])[0].double()
    d_head = w_v.shape[0] // n_heads
    values = value_input @ w_v.T + (0 if b_v is None else b_v)  # [K, H·dh]
    moved = torch.einsum("khe,dhe->khd", values.view(-1, n_heads, d_head), w_o.view(-1, n_heads, d_head))  # [K, H, d]
    parts = torch.einsum("hqk,khd->qkhd", pattern.double(), moved)  # [Q, K, H, d]
    bias = torch.zeros(parts.shape[-1], dtype=torch.float64) if b_o is None else b_o.double()
    if spec.sublayer is not None:  # T5: state = residual + attention output
        residual, whole = record["residual"][0].double(), record["whole"][0].double()
        extra = bias.expand_as(residual)
    elif spec.post_ln:  # state = LN(residual + attention output), linearised per position
        residual, whole = query_input, record["norm_output"][0].double()
        u = record["norm_input"][0].double()
        gain = spec.norm.weight.double() / torch.sqrt(u.var(-1, unbiased=False, keepdim=True) + spec.norm.eps)  # [Q, d]

        def linear(x: torch.Tensor) -> torch.Tensor:
            return (x - x.mean(-1, keepdim=True)) * gain.view(gain.shape[0], *([1] * (x.dim() - 2)), -1)

        parts, residual = linear(parts), linear(residual)
        extra = linear(bias.expand_as(residual)) + spec.norm.bias.double()
    else:  # pre-norm BART-like (mBART): the LayerNorm's input is the residual
        residual = record["norm_input"][0].double()
        whole = residual + record["attention_out"][0].double()
        extra = bias.expand_as(residual)
    error = float((parts.sum((1, 2)) + residual + extra - whole).abs().max())
    if error > TOLERANCE * (1 + float(whole.abs().max())):
        raise UnsupportedModelError(
            f"{name}: the attention parts do not add up to the state the model produced (off by {error:.2g}), "
            "so llm-flow cannot decompose this architecture"
        )
    norm = whole.abs().sum(-1)  # [Q]
    prox_heads = (norm[:, None, None] - (whole[:, None, None, :] - parts).abs().sum(-1)).clamp_min(0)  # [Q, K, H]
    prox_residual = (norm - (whole - residual).abs().sum(-1)).clamp_min(0)
    total = prox_heads.sum((1, 2)) + prox_residual
    total = torch.where(total > 0, total, torch.ones_like(total))
    return BlockContributions((prox_heads / total[:, None, None]).numpy(), (prox_residual / total).numpy())
