"""Interventions written independently of llm-flow and TransformerLens: plain `transformers`
modules in float64 with forward hooks that edit what a block adds to the residual stream.

An edit is a function ``(output [T, d], context) -> new output [T, d]`` for one layer's attention
or FFN output, where the context holds what that layer computed *in the same pass* (residual
states, attention weights, values, post-norm gain) and its weights, read from the HF modules.

Post-LN encoders (BERT, RoBERTa): the edits act on the outputs of the block's two LayerNorms,
the states ``A{l}`` and ``I{l}`` themselves, and ``through_norm`` maps a vector into them as the
norm does at fixed σ: ``γ / σ(u_i) ⊙ (x − mean x)`` with ``u_i`` the norm's input in this pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from tests.reference import ENCODER_TYPES, reference_model


@dataclass
class LayerContext:
    w_o: torch.Tensor  # [H, d_head, d]
    bias: torch.Tensor  # [d] attention output bias (zeros when the model has none)
    saved: dict[str, torch.Tensor] = field(default_factory=dict)  # resid_pre, resid_mid, pattern, v, gain
    post_ln: bool = False  # a post-LN encoder block: parts enter through a centring LayerNorm

    def part(self, query: int, source: int, head: int) -> torch.Tensor:
        """z[i, j, h] = A[h, i, j] (v[j, kv(h)] @ W_O[h]), times the post-norm gain if any (through
        ln1 on a post-LN block): [d]."""
        v = self.saved["v"]  # [T, n_kv, d_head]
        kv = head // (self.w_o.shape[0] // v.shape[1])
        z = self.saved["pattern"][head, query, source] * (v[source, kv] @ self.w_o[head])
        if self.post_ln:
            return self.through_norm(z, query)
        return z * self.saved["gain"][query] if "gain" in self.saved else z

    def through_norm(self, x: torch.Tensor, query: int, gain: str = "gain") -> torch.Tensor:
        """A post-LN block's norm at position `query` as a linear map (``gain``: "gain" for ln1,
        "ffn_gain" for ln2): [d]."""
        return self.saved[gain][query] * (x - x.mean())

    def attention_bias(self, query: int) -> torch.Tensor:
        return self.bias * self.saved["gain"][query] if "gain" in self.saved else self.bias


Edit = Callable[[torch.Tensor, LayerContext], torch.Tensor]


class HfModel:
    """One model folder loaded with AutoModelForCausalLM (AutoModelForMaskedLM for an encoder),
    and its modules by role. `headless`: an encoder saved without its masked-LM head predicts
    through its input embeddings (docs/method.md#encoders)."""

    def __init__(self, folder: str, headless: bool = False) -> None:
        self.model = reference_model(folder)
        self.family = self.model.config.model_type
        self.encoder = self.family in ENCODER_TYPES
        self.headless = headless
        cfg = self.model.config
        self.n_heads = cfg.num_attention_heads if hasattr(cfg, "num_attention_heads") else cfg.n_head

    def logits(self, ids: list[int], attention: dict[int, Edit] | None = None, ffn: dict[int, Edit] | None = None):
        """Logits [T, vocab] with the given per-layer edits."""
        attention, ffn = attention or {}, ffn or {}
        handles = []
        for layer in set(attention) | set(ffn):
            handles += self._hooks(layer, attention.get(layer), ffn.get(layer))
        try:
            with torch.no_grad():
                out = self.model(torch.tensor([ids]), output_attentions=True, output_hidden_states=self.headless)
        finally:
            for handle in handles:
                handle.remove()
        if self.headless:
            return out.hidden_states[-1][0] @ self.model.get_input_embeddings().weight.T
        return out.logits[0]

    def ffn_outputs(self, ids: list[int], layer: int) -> torch.Tensor:
        """What layer `layer`'s FFN adds to the residual in the unmodified pass: [T, d]."""
        kept = {}

        def grab(out, ctx):
            kept["out"] = (ctx.saved["mlp_out"] if self.encoder else out).clone()
            return out

        self.logits(ids, ffn={layer: grab})
        return kept["out"]

    # --- modules by role ----------------------------------------------------------------------

    def _hooks(self, layer: int, attn_edit: Edit | None, ffn_edit: Edit | None) -> list:
        if self.encoder:
            return self._encoder_hooks(layer, attn_edit, ffn_edit)
        m, family = self.model, self.family
        ctx = LayerContext(*self._weights(layer))
        saved = ctx.saved
        if family == "gpt2":
            block = m.transformer.h[layer]
            parts = dict(block=block, attn=block.attn, mid=block.ln_2, ffn=block.mlp)
        elif family == "gpt_neox":
            block = m.gpt_neox.layers[layer]
            parts = dict(block=block, attn=block.attention, mid=None, ffn=block.mlp)
        else:
            block = m.model.layers[layer]
            gemma = family == "gemma2"
            parts = dict(
                block=block, attn=block.self_attn,
                mid=block.pre_feedforward_layernorm if gemma else block.post_attention_layernorm,
                ffn=block.post_feedforward_layernorm if gemma else block.mlp,
                post_norm=block.post_attention_layernorm if gemma else None,
            )  # fmt: skip
        handles = [parts["block"].register_forward_pre_hook(_save_input(saved, "resid_pre"), with_kwargs=True)]
        handles.append(self._value_hook(block, saved))
        if parts["mid"] is not None:
            handles.append(parts["mid"].register_forward_pre_hook(_save_input(saved, "resid_mid"), with_kwargs=True))
        post_norm = parts.get("post_norm")

        def on_attention(module, args, out):
            saved["pattern"] = out[1][0]
            if attn_edit is None or post_norm is not None:
                return None
            return (attn_edit(out[0][0], ctx)[None], *out[1:])

        handles.append(parts["attn"].register_forward_hook(on_attention))
        if post_norm is not None:

            def gain(module, args):
                x = args[0][0]
                rms = torch.sqrt(x.pow(2).mean(-1, keepdim=True) + module.eps)
                saved["gain"] = (1.0 + module.weight) / rms  # Gemma RMSNorm as a linear map at fixed rms

            handles.append(post_norm.register_forward_pre_hook(gain))
            if attn_edit is not None:
                handles.append(post_norm.register_forward_hook(lambda mod, args, out: attn_edit(out[0], ctx)[None]))
        if ffn_edit is not None:
            handles.append(parts["ffn"].register_forward_hook(lambda mod, args, out: ffn_edit(out[0], ctx)[None]))
        return handles

    def _encoder_hooks(self, layer: int, attn_edit: Edit | None, ffn_edit: Edit | None) -> list:
        """BERT/RoBERTa: ``A{l}`` is ``attention.output.LayerNorm``'s output, ``I{l}`` that of
        ``output.LayerNorm``; each norm's gain is taken from its own input in this pass."""
        block = self.model.base_model.encoder.layer[layer]
        ctx = LayerContext(*self._weights(layer), post_ln=True)
        saved = ctx.saved
        attn_norm, ffn_norm = block.attention.output.LayerNorm, block.output.LayerNorm
        saved |= {"ln1_bias": attn_norm.bias, "ln2_bias": ffn_norm.bias}  # β of each norm: in no part
        d_head = self.model.config.hidden_size // self.n_heads

        def keep(name):
            def hook(module, args, out):
                saved[name] = (out[1] if name == "pattern" else out)[0]

            return hook

        def gain(name):
            def hook(module, args):
                u = args[0][0]
                sigma = torch.sqrt(u.var(-1, unbiased=False, keepdim=True) + module.eps)
                saved[name] = module.weight / sigma

            return hook

        def edit(fn):
            return lambda module, args, out: fn(out[0], ctx)[None]

        handles = [
            block.register_forward_pre_hook(_save_input(saved, "resid_pre"), with_kwargs=True),
            block.attention.self.value.register_forward_hook(
                lambda mod, args, out: saved.update(v=out[0].reshape(out.shape[1], self.n_heads, d_head))
            ),
            block.attention.self.register_forward_hook(keep("pattern")),
            attn_norm.register_forward_pre_hook(gain("gain")),
            block.intermediate.register_forward_pre_hook(_save_input(saved, "resid_mid"), with_kwargs=True),
            block.output.dense.register_forward_hook(keep("mlp_out")),
            ffn_norm.register_forward_pre_hook(gain("ffn_gain")),
        ]
        if attn_edit is not None:
            handles.append(attn_norm.register_forward_hook(edit(attn_edit)))
        if ffn_edit is not None:
            handles.append(ffn_norm.register_forward_hook(edit(ffn_edit)))
        return handles

    def _value_hook(self, block, saved):
        cfg = self.model.config
        if self.family == "gpt2":
            d = cfg.n_embd
            module = block.attn.c_attn

            def values(mod, args, out):
                saved["v"] = out[0][:, 2 * d :].reshape(out.shape[1], self.n_heads, -1)

        elif self.family == "gpt_neox":
            module = block.attention.query_key_value
            d_head = cfg.hidden_size // self.n_heads

            def values(mod, args, out):
                saved["v"] = out[0].reshape(out.shape[1], self.n_heads, 3 * d_head)[..., 2 * d_head :]

        else:
            module = block.self_attn.v_proj
            d_head = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads

            def values(mod, args, out):
                saved["v"] = out[0].reshape(out.shape[1], -1, d_head)

        return module.register_forward_hook(values)

    def _weights(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """W_O [H, d_head, d] and the attention output bias [d]."""
        m, n = self.model, self.n_heads
        if self.family == "gpt2":
            proj = m.transformer.h[layer].attn.c_proj
            weight = proj.weight  # Conv1D: [in, out]
        elif self.family == "gpt_neox":
            proj = m.gpt_neox.layers[layer].attention.dense
            weight = proj.weight.T
        elif self.encoder:
            proj = m.base_model.encoder.layer[layer].attention.output.dense
            weight = proj.weight.T
        else:
            proj = m.model.layers[layer].self_attn.o_proj
            weight = proj.weight.T
        d = weight.shape[1]
        bias = proj.bias if proj.bias is not None else torch.zeros(d, dtype=weight.dtype)
        return weight.reshape(n, -1, d), bias


def _save_input(saved: dict, name: str):
    def hook(module, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        saved[name] = x[0]

    return hook


def subtracting(triples) -> Edit:
    """The attention edit that takes each part z[i, j, h] (through the norm, in a post-LN
    block) out of what the layer adds at query i."""

    def edit(out, ctx):
        out = out.clone()
        for i, j, h in triples:
            out[i] -= ctx.part(i, j, h)
        return out

    return edit
