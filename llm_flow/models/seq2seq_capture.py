"""An encoder–decoder's pass on its fast attention that keeps what rebuilds its three attentions.

A Run of a decoder-only model keeps each layer's queries and keys, never its [H, T, T] pattern
(`llm_flow.models.query_keys`); an encoder–decoder keeps the same for its three attentions: the
encoder's self-attention (no mask: one sequence, no padding), the decoder's (causal) and the
cross-attention (no mask; the decoder's queries, the source's keys). They are recorded by forward
hooks on the attention's query and key projections (``q_proj``/``k_proj``, T5's ``q``/``k``), so
they do not depend on the attention function, and the pass runs on SDPA (``transformers`` returns
attention weights only from eager attention, which makes every [H, Q, K] pattern of the pass).

What turns them into weights is each module's own: ``scaling`` (BART, Marian and mBART apply
d_head^-0.5 to q·k inside the attention function, not to the projection; T5 applies none), and
for T5 the relative position bias that the first layer of each self-attention stack computes and
the others reuse (`compute_bias`), kept by distance (`RelativeBias`); T5's cross-attention has none.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from transformers import PreTrainedModel

from llm_flow.models.query_keys import AttentionRule, QueryKeyPattern, RelativeBias
from llm_flow.models.seq2seq_layout import Seq2SeqLayout, seq2seq_layout
from llm_flow.validation import SEQ2SEQ_STACKS as STACKS


def attention_modules(hf: PreTrainedModel, layout: Seq2SeqLayout) -> dict[str, list[torch.nn.Module]]:
    """Each stack's attention module per layer ("encoder", "decoder", "cross")."""
    encoder, decoder = hf.get_encoder(), hf.get_decoder()
    if layout.t5_blocks:  # [self-attention, (cross-attention,) FFN] per block
        return {
            "encoder": [block.layer[0].SelfAttention for block in encoder.block],
            "decoder": [block.layer[0].SelfAttention for block in decoder.block],
            "cross": [block.layer[1].EncDecAttention for block in decoder.block],
        }
    return {
        "encoder": [layer.self_attn for layer in encoder.layers],
        "decoder": [layer.self_attn for layer in decoder.layers],
        "cross": [layer.encoder_attn for layer in decoder.layers],
    }


class QueryKeyCapture:
    """The queries and keys of one pass of `hf`, per stack and layer: `recording()` around the
    pass, `patterns()` after it."""

    def __init__(self, hf: PreTrainedModel) -> None:
        self.hf = hf
        self.layout = seq2seq_layout(hf.config)
        self.modules = attention_modules(hf, self.layout)
        self._kept: dict[tuple[str, int, str], torch.Tensor] = {}  # (stack, layer, "q" or "k") -> [n, H, d_head]

    @contextmanager
    def recording(self) -> Iterator[None]:
        """While inside, a pass of `hf` (one sequence) fills the capture and attends with SDPA where
        the architecture supports it (eager otherwise: the weights it makes are dropped all the same).

        The caller holds the model's lock: the attention switch is seen by every user of the model,
        which is eager otherwise (the route pass reads ``output_attentions``)."""
        handles = []
        try:
            for stack, modules in self.modules.items():
                for layer, attention in enumerate(modules):
                    query, key, n_heads = _projections(attention, self.layout)
                    handles.append(query.register_forward_hook(self._keeper((stack, layer, "q"), n_heads)))
                    handles.append(key.register_forward_hook(self._keeper((stack, layer, "k"), n_heads)))
            with _sdpa(self.hf):
                yield
        finally:
            for handle in handles:
                handle.remove()

    def _keeper(self, key: tuple[str, int, str], n_heads: int):
        def keep(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
            self._kept[key] = output[0].detach().view(output.shape[1], n_heads, -1)  # [n, H, d_head]

        return keep

    def patterns(self) -> dict[str, tuple[QueryKeyPattern, ...]]:
        """Per stack, one `QueryKeyPattern` per layer, with the module's own scale and bias."""
        out = {}
        for stack in STACKS:
            modules = self.modules[stack]
            n_queries, n_keys = self._kept[(stack, 0, "q")].shape[0], self._kept[(stack, 0, "k")].shape[0]
            bias = _relative_bias(modules[0], n_queries, n_keys) if stack != "cross" else None
            out[stack] = tuple(
                QueryKeyPattern(
                    self._kept[(stack, layer, "q")], self._kept[(stack, layer, "k")],
                    AttentionRule(scaling=float(attention.scaling), causal=stack == "decoder"), bias,
                )  # fmt: skip
                for layer, attention in enumerate(modules)
            )
        return out


def _projections(attention: torch.nn.Module, layout: Seq2SeqLayout) -> tuple[torch.nn.Module, torch.nn.Module, int]:
    """The query and key projections of a T5 or BART-like attention, and its head count."""
    if layout.t5_blocks:
        return attention.q, attention.k, attention.n_heads
    return attention.q_proj, attention.k_proj, attention.num_heads


def _relative_bias(attention: torch.nn.Module, n_queries: int, n_keys: int) -> RelativeBias | None:
    """T5's relative position bias of a self-attention stack, by distance j - i from -(Q - 1) to
    K - 1: the module's own `compute_bias` for one query row placed Q - 1 tokens in, over Q + K - 1
    keys (its bias depends on j - i alone). None for a module without one."""
    if not getattr(attention, "has_relative_attention_bias", False):
        return None
    row = attention.compute_bias(1, n_queries + n_keys - 1, past_seen_tokens=n_queries - 1)  # [1, H, 1, Q + K - 1]
    return RelativeBias(row[0, :, 0].contiguous(), n_queries)


@contextmanager
def _sdpa(hf: PreTrainedModel) -> Iterator[None]:
    """`hf` attends with SDPA while inside, where its architecture supports it."""
    before = hf.config._attn_implementation
    if not hf._supports_sdpa or before == "sdpa":
        yield
        return
    hf.set_attn_implementation("sdpa")
    try:
        yield
    finally:
        hf.set_attn_implementation(before)
