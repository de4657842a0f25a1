"""An independent reference for ALTI contributions: plain transformers modules, forward hooks,
float64, and the direct formula ``max(||y||_1 - ||y - z||_1, 0)``.

Nothing here goes through TransformerLens or llm-flow: activations come from hooks on the
Hugging Face modules themselves, weights from their parameters, and every part vector is
materialised (fine for the few tokens the tests use).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM


@dataclass
class ReferenceLayer:
    resid_pre: torch.Tensor  # [T, d]
    resid_mid: torch.Tensor | None
    resid_post: torch.Tensor
    attn_parts: torch.Tensor  # [T(query), T(source), H, d] (zero for source > query)
    attn_bias: torch.Tensor  # [T, d] what belongs to no part (b_O, post-normed)
    mlp_out: torch.Tensor  # [T, d]
    neuron_parts: torch.Tensor  # [T, d_mlp, d]
    neuron_bias: torch.Tensor  # [T, d]
    pattern: torch.Tensor  # [H, T, T] attention weights as transformers returns them
    neuron_acts: torch.Tensor  # [T, d_mlp] input of the FFN output projection
    # Post-LN blocks (BERT): the residual and FFN parts as they enter the normalised wholes
    attn_residual: torch.Tensor | None = None  # [T, d] else resid_pre
    ffn_residual: torch.Tensor | None = None  # [T, d] else resid_mid
    ffn_part: torch.Tensor | None = None  # [T, d] else mlp_out


def l1_proximity(whole: torch.Tensor, parts: torch.Tensor) -> torch.Tensor:
    """The formula of docs/method.md#proximity, literally."""
    return (whole.abs().sum(-1) - (whole - parts).abs().sum(-1)).clamp_min(0)


def _or(value: torch.Tensor | None, default: torch.Tensor) -> torch.Tensor:
    return default if value is None else value


ENCODER_TYPES = ("bert", "roberta")


def reference_model(folder: str):
    from transformers import AutoConfig, AutoModelForMaskedLM

    encoder = AutoConfig.from_pretrained(folder).model_type in ENCODER_TYPES
    auto = AutoModelForMaskedLM if encoder else AutoModelForCausalLM
    # eager experts: transformers' grouped matrix products have no float64 kernel
    model = auto.from_pretrained(
        folder, dtype=torch.float64, attn_implementation="eager", experts_implementation="eager"
    ).eval()
    return model.requires_grad_(False)


def reference_layers(folder: str, token_ids: list[int]) -> list[ReferenceLayer]:
    model = reference_model(folder)
    family = model.config.model_type
    grab = {"gpt2": _gpt2, "llama": _llama_like, "qwen2": _llama_like, "gemma2": _llama_like,
            "gpt_neox": _neox, "bert": _post_ln_encoder, "roberta": _post_ln_encoder}[family]  # fmt: skip
    return grab(model, torch.tensor([token_ids]))


def reference_contributions(layer: ReferenceLayer, parallel: bool):
    """(c_heads [T, T, H], c_res [T], c_ffn [T], c_res2 [T]) by the direct formula."""
    whole = layer.resid_post if parallel else layer.resid_mid
    prox_heads = l1_proximity(whole[:, None, None, :], layer.attn_parts)  # [T, T, H]
    prox_res = l1_proximity(whole, _or(layer.attn_residual, layer.resid_pre))
    total = prox_heads.sum((1, 2)) + prox_res
    if parallel:
        prox_ffn = l1_proximity(whole, layer.mlp_out)
        total = total + prox_ffn
        return prox_heads / total[:, None, None], prox_res / total, prox_ffn / total, prox_res / total
    prox_ffn = l1_proximity(layer.resid_post, _or(layer.ffn_part, layer.mlp_out))
    prox_res2 = l1_proximity(layer.resid_post, _or(layer.ffn_residual, layer.resid_mid))
    total2 = prox_ffn + prox_res2
    return prox_heads / total[:, None, None], prox_res / total, prox_ffn / total2, prox_res2 / total2


def assert_layer_matches(run, layer: int, ref: ReferenceLayer, atol: float) -> None:
    """llm-flow's attention and FFN contributions of `layer` equal the reference's."""
    import llm_flow

    expected = reference_contributions(ref, run.parallel)
    actual = (*llm_flow.attention_contributions(run, layer), *llm_flow.ffn_contributions(run, layer))
    for ours, theirs in zip(actual, expected):
        torch.testing.assert_close(ours.double(), theirs, atol=atol, rtol=0)


def reference_neurons(layer: ReferenceLayer, position: int, parallel: bool):
    """(c_neurons [d_mlp], c_rest) for one FFN node."""
    whole = layer.resid_post[position]
    rest = whole - layer.mlp_out[position] if parallel else _or(layer.ffn_residual, layer.resid_mid)[position]
    prox_n = l1_proximity(whole, layer.neuron_parts[position])
    prox_r = l1_proximity(whole, rest)
    total = prox_n.sum() + prox_r
    return prox_n / total, prox_r / total


class _Recorder:
    """Forward hooks that keep module inputs and outputs by label."""

    def __init__(self) -> None:
        self.saved: dict[str, torch.Tensor] = {}
        self.handles = []

    def output(self, module, label):
        def hook(_module, _args, out):
            out = out[0] if isinstance(out, tuple) else out
            self.saved[label] = out[0].detach()

        self.handles.append(module.register_forward_hook(hook))

    def input(self, module, label):
        def hook(_module, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            self.saved[label] = x[0].detach()

        self.handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))

    def remove(self):
        for handle in self.handles:
            handle.remove()


def _run(model, ids, recorder):
    with torch.no_grad():
        out = model(ids, output_attentions=True)
    recorder.remove()
    return [a[0] for a in out.attentions]  # per layer [H, T, T]


def _parts(pattern, values, w_o, gain=None):
    """z[i, j, h] = A[h, i, j] * gain_i ⊙ (v[j, kv(h)] @ W_O[h]): [T, T, H, d]."""
    n_heads = w_o.shape[0]
    values = values.repeat_interleave(n_heads // values.shape[1], dim=1)  # [T, H, dh]
    vo = torch.einsum("jhk,hkd->jhd", values, w_o)
    parts = pattern.permute(1, 2, 0)[..., None] * vo[None]  # [i, j, H, d]
    return parts if gain is None else parts * gain[:, None, None, :]


def _rms_gain(norm, x):
    """Gemma RMSNorm as a per-position linear map: x * (1 + w) / rms(x)."""
    rms = torch.sqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps)
    return (1.0 + norm.weight) / rms


def _gpt2(model, ids):
    rec = _Recorder()
    blocks = model.transformer.h
    for l, block in enumerate(blocks):
        rec.input(block, f"{l}.pre")
        rec.input(block.ln_2, f"{l}.mid")
        rec.output(block, f"{l}.post")
        rec.output(block.attn.c_attn, f"{l}.qkv")
        rec.output(block.mlp, f"{l}.mlp")
        rec.input(block.mlp.c_proj, f"{l}.acts")
    patterns = _run(model, ids, rec)
    layers = []
    n_heads = model.config.n_head
    for l, block in enumerate(blocks):
        s = rec.saved
        d = model.config.n_embd
        v = s[f"{l}.qkv"][:, 2 * d :].reshape(-1, n_heads, d // n_heads)
        w_o = block.attn.c_proj.weight.reshape(n_heads, d // n_heads, d)  # Conv1D: [in, out]
        T = v.shape[0]
        layers.append(ReferenceLayer(
            s[f"{l}.pre"], s[f"{l}.mid"], s[f"{l}.post"], _parts(patterns[l], v, w_o),
            block.attn.c_proj.bias.expand(T, d), s[f"{l}.mlp"],
            s[f"{l}.acts"][:, :, None] * block.mlp.c_proj.weight[None], block.mlp.c_proj.bias.expand(T, d),
            patterns[l], s[f"{l}.acts"],
        ))  # fmt: skip
    return layers


def _llama_like(model, ids):
    """Llama, Qwen2 and Gemma2 share module names; Gemma2 adds post-norms."""
    rec = _Recorder()
    layers_hf = model.model.layers
    gemma = model.config.model_type == "gemma2"
    for l, layer in enumerate(layers_hf):
        rec.input(layer, f"{l}.pre")
        rec.input(layer.pre_feedforward_layernorm if gemma else layer.post_attention_layernorm, f"{l}.mid")
        rec.output(layer, f"{l}.post")
        rec.output(layer.self_attn.v_proj, f"{l}.v")
        rec.input(layer.mlp.down_proj, f"{l}.acts")
        if gemma:
            rec.input(layer.post_attention_layernorm, f"{l}.attn_raw")
            rec.input(layer.post_feedforward_layernorm, f"{l}.mlp_raw")
            rec.output(layer.post_feedforward_layernorm, f"{l}.mlp")
        else:
            rec.output(layer.mlp, f"{l}.mlp")
    patterns = _run(model, ids, rec)
    cfg = model.config
    d, n_heads = cfg.hidden_size, cfg.num_attention_heads
    d_head = getattr(cfg, "head_dim", None) or d // n_heads
    out = []
    for l, layer in enumerate(layers_hf):
        s = rec.saved
        post = s[f"{l}.post"]
        T = post.shape[0]
        v = s[f"{l}.v"].reshape(T, -1, d_head)
        w_o = layer.self_attn.o_proj.weight.T.reshape(n_heads, d_head, d)
        attn_gain = _rms_gain(layer.post_attention_layernorm, s[f"{l}.attn_raw"]) if gemma else None
        mlp_gain = _rms_gain(layer.post_feedforward_layernorm, s[f"{l}.mlp_raw"]) if gemma else None
        neuron_parts = s[f"{l}.acts"][:, :, None] * layer.mlp.down_proj.weight.T[None]
        if gemma:
            neuron_parts = neuron_parts * mlp_gain[:, None, :]
        zeros = torch.zeros(T, d, dtype=post.dtype)
        out.append(ReferenceLayer(
            s[f"{l}.pre"], s[f"{l}.mid"], post, _parts(patterns[l], v, w_o, attn_gain), zeros,
            s[f"{l}.mlp"], neuron_parts, zeros, patterns[l], s[f"{l}.acts"],
        ))  # fmt: skip
    return out


def _neox(model, ids):
    rec = _Recorder()
    layers_hf = model.gpt_neox.layers
    for l, layer in enumerate(layers_hf):
        rec.input(layer, f"{l}.pre")
        rec.output(layer, f"{l}.post")
        rec.output(layer.attention.query_key_value, f"{l}.qkv")
        rec.output(layer.mlp, f"{l}.mlp")
        rec.input(layer.mlp.dense_4h_to_h, f"{l}.acts")
    patterns = _run(model, ids, rec)
    d, n_heads, d_head = _dims(model)
    out = []
    for l, layer in enumerate(layers_hf):
        s = rec.saved
        post = s[f"{l}.post"]
        T = post.shape[0]
        v = s[f"{l}.qkv"].reshape(T, n_heads, 3 * d_head)[..., 2 * d_head :]
        w_o = layer.attention.dense.weight.T.reshape(n_heads, d_head, d)
        out.append(ReferenceLayer(
            s[f"{l}.pre"], None, post, _parts(patterns[l], v, w_o),
            layer.attention.dense.bias.expand(T, d), s[f"{l}.mlp"],
            s[f"{l}.acts"][:, :, None] * layer.mlp.dense_4h_to_h.weight.T[None],
            layer.mlp.dense_4h_to_h.bias.expand(T, d), patterns[l], s[f"{l}.acts"],
        ))  # fmt: skip
    return out


def _post_ln_encoder(model, ids):
    """BERT and RoBERTa: LayerNorm after each residual add, linearised per position as
    ``x ↦ γ ⊙ (x − mean x) / σ`` with σ of the whole sum (docs/method.md#encoders)."""
    rec = _Recorder()
    layers_hf = model.base_model.encoder.layer
    for l, layer in enumerate(layers_hf):
        rec.input(layer, f"{l}.pre")
        rec.output(layer.attention.self.value, f"{l}.v")
        rec.input(layer.attention.output.LayerNorm, f"{l}.u1")
        rec.output(layer.attention.output.LayerNorm, f"{l}.mid")
        rec.input(layer.output.dense, f"{l}.acts")
        rec.output(layer.output.dense, f"{l}.mlp")
        rec.input(layer.output.LayerNorm, f"{l}.u2")
        rec.output(layer, f"{l}.post")
    patterns = _run(model, ids, rec)
    d, n_heads, d_head = _dims(model)
    out = []
    for l, layer in enumerate(layers_hf):
        s = rec.saved
        T = s[f"{l}.pre"].shape[0]
        norm1, norm2 = layer.attention.output.LayerNorm, layer.output.LayerNorm
        g1, g2 = _ln_gain(norm1, s[f"{l}.u1"]), _ln_gain(norm2, s[f"{l}.u2"])  # [T, d]
        v = s[f"{l}.v"].reshape(T, n_heads, d_head)
        w_o = layer.attention.output.dense.weight.T.reshape(n_heads, d_head, d)
        w_out = layer.output.dense.weight.T  # [d_mlp, d]
        neuron_parts = _center(s[f"{l}.acts"][:, :, None] * w_out[None]) * g2[:, None, :]
        out.append(ReferenceLayer(
            s[f"{l}.pre"], s[f"{l}.mid"], s[f"{l}.post"],
            _center(_parts(patterns[l], v, w_o)) * g1[:, None, None, :],
            _center(layer.attention.output.dense.bias) * g1 + norm1.bias,
            s[f"{l}.mlp"], neuron_parts, _center(layer.output.dense.bias) * g2 + norm2.bias,
            patterns[l], s[f"{l}.acts"],
            attn_residual=_center(s[f"{l}.pre"]) * g1,
            ffn_residual=_center(s[f"{l}.mid"]) * g2,
            ffn_part=_center(s[f"{l}.mlp"]) * g2,
        ))  # fmt: skip
    return out


def _dims(model) -> tuple[int, int, int]:
    """d_model, heads and d_head of a model without grouped-query attention."""
    cfg = model.config
    return cfg.hidden_size, cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads


def _center(x: torch.Tensor) -> torch.Tensor:
    return x - x.mean(-1, keepdim=True)


def _ln_gain(norm, u: torch.Tensor) -> torch.Tensor:
    """γ / σ(u) per position, σ = sqrt(var(u) + eps) as torch's LayerNorm computes it."""
    sigma = torch.sqrt(u.var(-1, unbiased=False, keepdim=True) + norm.eps)
    return norm.weight / sigma


def reference_unembed(model, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Logits of residual vectors through the model's own final norm and output layer."""
    family = model.config.model_type
    norm = {"gpt2": lambda: model.transformer.ln_f, "gpt_neox": lambda: model.gpt_neox.final_layer_norm}.get(
        family, lambda: model.model.norm
    )()
    with torch.no_grad():
        logits = model.get_output_embeddings()(norm(x) if normalize else x)
    cap = getattr(model.config, "final_logit_softcapping", None)
    return cap * torch.tanh(logits / cap) if cap else logits


def reference_projection(model, vector: torch.Tensor) -> torch.Tensor:
    """An update vector against the output embedding matrix: vector @ W_U."""
    return vector @ model.get_output_embeddings().weight.T


@dataclass
class ReferenceMoe:
    """One mixture-of-experts FFN node, from the plain modules in float64."""

    whole: torch.Tensor  # [d] resid_post[i]
    residual: torch.Tensor  # [d] resid_mid[i]
    mlp_out: torch.Tensor  # [d] what the layer added
    experts: list[int]  # chosen experts, by decreasing router weight (then -1: the shared one)
    weights: list[float]  # their router weights (the shared gate)
    outputs: torch.Tensor  # [k (+1), d] each expert's weighted output
    neurons: torch.Tensor  # [k f (+ f_s), d] each neuron's part, expert after expert


def reference_moe(folder: str, token_ids: list[int], layer: int, position: int) -> ReferenceMoe:
    """The router re-implemented from the config (softmax, top-k, optional renormalisation) and
    every expert computed from its own weight tensors."""
    model = reference_model(folder)
    block = model.model.layers[layer]
    rec = _Recorder()
    rec.input(block.post_attention_layernorm, "mid")
    rec.input(block.mlp, "x")
    rec.output(block.mlp, "mlp")
    rec.output(block, "post")
    _run(model, torch.tensor([token_ids]), rec)
    s, cfg, moe = rec.saved, model.config, block.mlp
    x = s["x"][position]
    probabilities = torch.softmax(x @ moe.gate.weight.T, -1)
    weights, experts = torch.topk(probabilities, cfg.num_experts_per_tok)
    if getattr(cfg, "norm_topk_prob", cfg.model_type == "mixtral"):
        weights = weights / weights.sum()
    outputs, neurons = [], []
    for expert, weight in zip(experts.tolist(), weights.tolist()):
        gate, up = (moe.experts.gate_up_proj[expert] @ x).chunk(2)
        acts = moe.experts.act_fn(gate) * up
        neurons.append(weight * acts[:, None] * moe.experts.down_proj[expert].T)
        outputs.append(neurons[-1].sum(0))
    experts, weights = experts.tolist(), weights.tolist()
    if getattr(moe, "shared_expert", None) is not None:
        shared = moe.shared_expert
        gate = float(torch.sigmoid(moe.shared_expert_gate(x)))
        acts = shared.act_fn(shared.gate_proj(x)) * shared.up_proj(x)
        neurons.append(gate * acts[:, None] * shared.down_proj.weight.T)
        outputs.append(neurons[-1].sum(0))
        experts.append(-1)
        weights.append(gate)
    return ReferenceMoe(
        s["post"][position], s["mid"][position], s["mlp"][position], experts, weights,
        torch.stack(outputs), torch.cat(neurons),
    )  # fmt: skip


# --- every stage of one block, for the Inside page ---------------------------------------------------

#: Per family: where each stage's numbers are read in plain transformers, as (module path, "in" or
#: "out"); paths are relative to the model, "{l}" is the layer. Absent entries: the family has no
#: such stage.
_STAGE_MODULES = {
    "gpt2": {
        "embed": "transformer.wte", "pos": "transformer.wpe", "block": "transformer.h.{l}",
        "ln1": "transformer.h.{l}.ln_1", "qkv": "transformer.h.{l}.attn.c_attn", "o": "transformer.h.{l}.attn.c_proj",
        "ln2": "transformer.h.{l}.ln_2", "up": "transformer.h.{l}.mlp.c_fc", "down": "transformer.h.{l}.mlp.c_proj",
        "act": "transformer.h.{l}.mlp.act", "final": "transformer.ln_f", "attn": "transformer.h.{l}.attn",
    },
    "gpt_neox": {
        "embed": "gpt_neox.embed_in", "block": "gpt_neox.layers.{l}", "ln1": "gpt_neox.layers.{l}.input_layernorm",
        "qkv": "gpt_neox.layers.{l}.attention.query_key_value", "o": "gpt_neox.layers.{l}.attention.dense",
        "ln2": "gpt_neox.layers.{l}.post_attention_layernorm", "up": "gpt_neox.layers.{l}.mlp.dense_h_to_4h",
        "down": "gpt_neox.layers.{l}.mlp.dense_4h_to_h", "act": "gpt_neox.layers.{l}.mlp.act",
        "final": "gpt_neox.final_layer_norm", "attn": "gpt_neox.layers.{l}.attention",
    },
    "llama": {
        "embed": "model.embed_tokens", "block": "model.layers.{l}", "ln1": "model.layers.{l}.input_layernorm",
        "q": "model.layers.{l}.self_attn.q_proj", "k": "model.layers.{l}.self_attn.k_proj",
        "v": "model.layers.{l}.self_attn.v_proj", "o": "model.layers.{l}.self_attn.o_proj",
        "ln2": "model.layers.{l}.post_attention_layernorm", "gate": "model.layers.{l}.mlp.gate_proj",
        "up": "model.layers.{l}.mlp.up_proj", "down": "model.layers.{l}.mlp.down_proj",
        "act": "model.layers.{l}.mlp.act_fn", "final": "model.norm", "attn": "model.layers.{l}.self_attn",
    },
}
_STAGE_MODULES["qwen2"] = _STAGE_MODULES["llama"]
_STAGE_MODULES["gemma2"] = {
    **_STAGE_MODULES["llama"], "ln2": "model.layers.{l}.pre_feedforward_layernorm",
    "post_attn": "model.layers.{l}.post_attention_layernorm", "post_mlp": "model.layers.{l}.post_feedforward_layernorm",
}


def reference_stages(folder: str, token_ids: list[int], layer: int):
    """What plain transformers computes at each stage of block `layer` (float64, eager
    attention): module inputs and outputs by forward hooks, the rotary embedding by the model's
    own ``apply_rotary_pos_emb`` on the cos/sin the attention received, the attention weights from
    ``output_attentions``. Returns (the model, its numbers by name: "<stage>.in" / "<stage>.out" for
    the modules of `_STAGE_MODULES`, q, k, v, z [T, heads, d_head], q_rot, k_rot, pattern, logits)."""
    import importlib

    model = reference_model(folder)
    family = model.config.model_type
    paths = {name: path.format(l=layer) for name, path in _STAGE_MODULES[family].items()}
    cfg = model.config
    n_heads = cfg.num_attention_heads
    d_head = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    saved: dict[str, torch.Tensor] = {}
    handles = []

    def out_hook(name):
        def hook(_module, _args, out):
            saved.setdefault(f"{name}.out", (out[0] if isinstance(out, tuple) else out)[0].detach())
        return hook

    def in_hook(name):
        def hook(_module, args, kwargs):
            saved.setdefault(f"{name}.in", (args[0] if args else kwargs["hidden_states"])[0].detach())
            if "position_embeddings" in kwargs and kwargs["position_embeddings"] is not None:
                saved.setdefault("cos", kwargs["position_embeddings"][0])
                saved.setdefault("sin", kwargs["position_embeddings"][1])
        return hook

    for name, path in paths.items():
        module = model.get_submodule(path)
        handles.append(module.register_forward_hook(out_hook(name)))
        handles.append(module.register_forward_pre_hook(in_hook(name), with_kwargs=True))
    after = model.get_submodule(_STAGE_MODULES[family]["block"].format(l=layer + 1)) if layer + 1 < cfg.num_hidden_layers else None
    if after is not None:
        handles.append(after.register_forward_pre_hook(in_hook("next_block"), with_kwargs=True))
    first = model.get_submodule(_STAGE_MODULES[family]["block"].format(l=0))
    handles.append(first.register_forward_pre_hook(in_hook("first_block"), with_kwargs=True))
    with torch.no_grad():
        out = model(torch.tensor([token_ids]), output_attentions=True)
    for handle in handles:
        handle.remove()
    T = len(token_ids)
    stages = dict(saved)
    stages["logits"] = out.logits[0]
    stages["pattern"] = out.attentions[layer][0]  # [H, T, T]
    if family == "gpt2":
        q, k, v = saved["qkv.out"].split(cfg.hidden_size, dim=-1)
    elif family == "gpt_neox":
        q, k, v = saved["qkv.out"].reshape(T, n_heads, 3 * d_head).chunk(3, dim=-1)
    else:
        q, k, v = saved["q.out"], saved["k.out"], saved["v.out"]
    q, k, v = (x.reshape(T, -1, d_head) for x in (q, k, v))
    stages.update(q=q, k=k, v=v, z=saved["o.in"].reshape(T, n_heads, d_head))
    if "cos" in saved:
        rotate = importlib.import_module(type(model).__module__).apply_rotary_pos_emb
        q_rot, k_rot = rotate(q.transpose(0, 1)[None], k.transpose(0, 1)[None], saved["cos"], saved["sin"])
        stages.update(q_rot=q_rot[0].transpose(0, 1), k_rot=k_rot[0].transpose(0, 1))
    attention = model.get_submodule(paths["attn"])
    stages["scaling"] = torch.tensor(getattr(attention, "scaling", None) or d_head**-0.5)
    return model, stages
