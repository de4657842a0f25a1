"""Inside the model: one prediction walked through stage by stage, with the model's own numbers.

For the active Run, a token position ``i``, a layer ``l`` and a head ``h``: the tokens, the
embedding, block ``l`` in the order the model computes it (pre- or post-norms, parallel
attention and MLP, grouped-query key/value heads, rotary on q and k, gated MLPs, Gemma's
soft-capping and post-norms), then the final norm, the logits and the sampling pipeline of the
Playground (`llm_flow.views.sampling`). Every stage holds the chosen token's vectors (a compact
strip) and the matrices of a window of tokens around it (shown when the stage is expanded).

Nothing here re-runs the model but block ``l`` alone, called on the Run's own ``resid_pre``
(`llm_flow.views.block_pass`), and the embeddings. Each number is what a hook saw in that call
or a step the page spells out (x̂ of a norm, the scaled and masked scores, gate ⊙ up); each
spelled-out step is checked against what the model computed next before it is shown, so a
model whose arithmetic differs is refused with the reason instead of shown wrongly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import numpy as np
import torch

from llm_flow.validation import INSIDE_WINDOW
from llm_flow.errors import ArgumentError, UnsupportedModelError
from llm_flow.models.run import Run
from llm_flow.views import block_pass
from llm_flow.views.attention import TokenWindow, check_head, check_layer, token_window
from llm_flow.routes.contributions import contribution_rows
from llm_flow.views.anatomy import LayerAnatomy, shared_anatomy
from llm_flow.views.attention_scores import masked_scores, query_keys
from llm_flow.views.sampling import SamplingSettings, SamplingStages, choose, sampling_stages, seeded_generator
from llm_flow.views.tokens import display_token

#: Tokens shown around the chosen one (matrices are window x window at most).
WINDOW = INSIDE_WINDOW
#: Vocabulary tokens shown in the logit and probability strips.
TOP_TOKENS = 12

_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-9}
_HALF_TOLERANCE = 2e-2
#: Activation modules by class name: (name in labels, name in formulas).
_ACTIVATIONS = {
    "SiLUActivation": ("SiLU", r"\operatorname{SiLU}"), "SiLU": ("SiLU", r"\operatorname{SiLU}"),
    "GELUTanh": ("GELU (tanh)", r"\operatorname{GELU}_{\tanh}"), "PytorchGELUTanh": ("GELU (tanh)", r"\operatorname{GELU}_{\tanh}"),
    "NewGELUActivation": ("GELU (tanh)", r"\operatorname{GELU}_{\tanh}"), "GELUActivation": ("GELU", r"\operatorname{GELU}"),
    "GELU": ("GELU", r"\operatorname{GELU}"), "ReLU": ("ReLU", r"\operatorname{ReLU}"),
}  # fmt: skip


@dataclass(frozen=True, eq=False)
class Matrix:
    """Numbers shown as one heat strip: a vector is a matrix of one row."""

    name: str  # what the numbers are
    values: np.ndarray  # [rows, columns] float32; -inf where the model masks
    rows: tuple[str, ...]  # one label per row: a token ("5: Paris"), a head, or what the row is
    columns: tuple[str, ...] | None = None  # one label per column; None: dimensions 0..n-1
    highlight: int | None = None  # the row of the chosen token (or head)
    marked: int | None = None  # a column to outline: the chosen token among columns of tokens
    kind: str = "signed"  # "signed": colours around 0; "probability": 0..1; "ids": token ids, no scale


@dataclass(frozen=True, eq=False)
class Stage:
    key: str  # one of llm_flow.validation.INSIDE_STAGES
    group: str  # "input", "block" or "output": where the stage sits in the model
    title: str
    formula: str  # LaTeX
    sentence: str  # what the stage does, in one sentence
    notice: str  # what to notice in these very numbers
    strip: tuple[Matrix, ...]  # the chosen token's vectors
    detail: tuple[Matrix, ...]  # the window's matrices (the expanded stage)


@dataclass(frozen=True, eq=False)
class Walkthrough:
    """One prediction, stage by stage, for one layer and head."""

    model: str
    architecture: str
    layer: int
    head: int
    kv_head: int  # the key/value head that serves `head` (grouped-query attention)
    position: int
    token: str
    window: TokenWindow
    settings: SamplingSettings
    seed: int
    sampling: SamplingStages  # the chosen position's logits through the Playground's pipeline
    drawn: int  # the token a draw with `seed` picks (the argmax when greedy)
    labels: dict[int, str]  # decoded vocabulary tokens the output stages name
    stages: tuple[Stage, ...]

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(stage.key for stage in self.stages)

    def stage(self, key: str) -> Stage:
        for stage in self.stages:
            if stage.key == key:
                return stage
        raise ArgumentError(f"this model has no stage {key!r} (its stages: {', '.join(self.keys)})")

    def decode(self, ids: list[int]) -> list[str]:
        """Labels of vocabulary ids the walk-through names (for the sampling figure)."""
        return [self.labels[i] for i in ids]


@dataclass(frozen=True)
class WalkthroughOf:
    """Key of a walk-through in a Run's derived store: every argument `walkthrough` takes."""

    keep: ClassVar[int] = 8
    layer: int
    head: int
    position: int
    window: int
    temperature: float
    top_k: int
    top_p: float
    seed: int


@dataclass(frozen=True)
class BlockRowsOf:
    """Key of what block `layer` computed for positions start..stop-1 (one block call)."""

    keep: ClassVar[int] = 4
    layer: int
    start: int
    stop: int


def shared_walkthrough(
    run: Run, layer: int, head: int, position: int = -1, window: int = WINDOW,
    settings: SamplingSettings = SamplingSettings(), seed: int = 0,
) -> Walkthrough:  # fmt: skip
    """`walkthrough`, kept with the Run (the page redraws it on every rerun, for every session)."""
    layer, head, position = check_layer(run, layer), check_head(run, head), run.position(position)
    key = WalkthroughOf(layer, head, position, window, settings.temperature, settings.top_k, settings.top_p, seed)
    return run.derived(key, partial(walkthrough, run, layer, head, position, window, settings, seed))


def walkthrough(
    run: Run, layer: int, head: int, position: int = -1, window: int = WINDOW,
    settings: SamplingSettings = SamplingSettings(), seed: int = 0,
) -> Walkthrough:  # fmt: skip
    """Every stage of the prediction at `position`, through block `layer` and head `head`, over a
    window of `window` tokens around `position` (the whole prompt when it is shorter)."""
    layer, head, position = check_layer(run, layer), check_head(run, head), run.position(position)
    span = token_window(run, position, window)
    info = run.model.info
    kv_head = head // (info.n_heads // info.n_kv_heads)
    context = _Context(run, layer, head, kv_head, position, span)
    rows = block_rows(run, layer, span)
    stages = [_tokens_stage(context), _embedding_stage(context)]
    stages += _block_stages(context, rows)
    logits = run.position_logits(position)
    sampling = sampling_stages(logits, settings)
    stages += _output_stages(context, sampling)
    drawn = choose(sampling, seeded_generator(seed, logits.device))
    named = {*torch.topk(logits, min(40, info.vocab_size)).indices.tolist(), drawn}
    labels = dict(zip(sorted(named), run.model.decode_tokens(sorted(named))))
    return Walkthrough(
        model=run.model.name, architecture=info.architecture, layer=layer, head=head, kv_head=kv_head,
        position=position, token=run.str_tokens[position], window=span, settings=settings, seed=seed,
        sampling=sampling, drawn=drawn, labels=labels, stages=tuple(stages),
    )  # fmt: skip


@dataclass(frozen=True)
class Overview:
    """The whole model at one position, as shares: what the overview's flow is sized by.

    Each layer's output is split into the residual carried in, the attention and the FFN by the
    ALTI shares of the anatomy strip (`llm_flow.views.anatomy`); layer 0's attention share is
    split further over the source tokens it read (the window's, and those before it together)."""

    position: int
    token: str
    prediction: str  # the model's top next token
    probability: float
    parallel: bool
    layers: tuple[LayerAnatomy, ...]
    sources: tuple[tuple[int | None, str, float], ...]  # (position or None: before the window, label, share)


def overview(run: Run, position: int = -1, window: int = WINDOW) -> Overview:
    """The overview at `position` (kept with the Run through the anatomy and contribution rows)."""
    position = run.position(position)
    result = shared_anatomy(run, position)
    span = token_window(run, position, window)
    first = result.layers[0]
    heads = contribution_rows(run, 0, [position])[0].heads.sum(-1).float()  # [position + 1] over sources
    shares = heads / heads.sum() * (first.attention or 0.0) if float(heads.sum()) > 0 else heads
    sources: list[tuple[int | None, str, float]] = []
    before = float(shares[: span.start].sum())
    if span.start > 0:
        sources.append((None, f"tokens 0–{span.start - 1}", before))
    for j in range(span.start, position + 1):
        sources.append((j, f"{j}: {display_token(run.str_tokens[j])}", float(shares[j])))
    final = result.rows[-1]
    return Overview(
        position=position, token=run.str_tokens[position], prediction=result.target,
        probability=final.target_probability, parallel=result.parallel, layers=result.layers, sources=tuple(sources),
    )  # fmt: skip


# --- what block `layer` computed ----------------------------------------------------------------

#: Hook points of a block whose values the stages show (relative to ``blocks.{l}.``); a model
#: fires the ones it has (no gate without a gated MLP, no post-norms but Gemma's).
_BLOCK_HOOKS = (
    "ln1.hook_scale", "ln1.hook_out", "attn.q.hook_out", "attn.k.hook_out", "attn.v.hook_out",
    "attn.o.hook_in", "attn.o.hook_out", "ln1_post.hook_scale", "ln1_post.hook_out",
    "ln2.hook_in", "ln2.hook_scale", "ln2.hook_out", "mlp.in.hook_out", "mlp.gate.hook_out",
    "mlp.out.hook_in", "mlp.out.hook_out", "ln2_post.hook_scale", "ln2_post.hook_out", "hook_out",
)  # fmt: skip


def block_rows(run: Run, layer: int, span: TokenWindow) -> dict[str, torch.Tensor]:
    """What block `layer` computed at the window's positions, by hook name (float32, CPU,
    batchless, [W, ...]): one call of the block alone, kept with the Run."""
    return run.derived(BlockRowsOf(layer, span.start, span.stop), partial(_capture_block, run, layer, span))


def _capture_block(run: Run, layer: int, span: TokenWindow) -> dict[str, torch.Tensor]:
    """Block `layer` on the Run's ``resid_pre``, with the other inputs of the first block that
    reproduces the layer's output (see `block_pass.input_sources`)."""
    bridge = run.model.bridge
    expected = run.layer(layer).resid_post[span.start : span.stop].float().cpu()
    error = float("inf")
    for source in block_pass.input_sources(run, layer):
        store: dict[str, torch.Tensor] = {}

        def keep(short: str) -> Callable:
            def hook(tensor: torch.Tensor, hook) -> None:
                if short not in store:
                    store[short] = tensor[0, span.start : span.stop].detach().float().cpu().clone()

            return hook

        names = [(f"blocks.{layer}.{short}", short) for short in _BLOCK_HOOKS]
        hooks = [(name, keep(short)) for name, short in names if name in bridge.hook_dict]
        block_pass.call_block(run, layer, source, hooks)
        error = _relative_error(store.get("hook_out"), expected)
        if error <= _tolerance(run):
            return store
    raise UnsupportedModelError(
        f"the Inside page cannot reproduce block {layer} of {run.model.info.architecture} on its own "
        f"(largest relative difference {error:.2g}); the other pages still work"
    )


def _relative_error(got: torch.Tensor | None, expected: torch.Tensor) -> float:
    if got is None or got.shape != expected.shape:
        return float("inf")
    return float((got - expected).abs().max()) / max(1.0, float(expected.abs().max()))


def _tolerance(run: Run) -> float:
    return _TOLERANCE.get(run.layer(0).resid_pre.dtype, _HALF_TOLERANCE)


def _check(run: Run, got: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """Refuse a spelled-out step that does not give what the model computed."""
    error = _relative_error(got, expected)
    if not error <= _tolerance(run):
        raise UnsupportedModelError(
            f"the Inside page cannot reproduce {what} of {run.model.info.architecture} (largest relative "
            f"difference {error:.2g}): the model computes it in a way llm-flow does not model"
        )


# --- labels and small helpers -------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Context:
    run: Run
    layer: int
    head: int
    kv_head: int
    position: int
    span: TokenWindow

    @property
    def row(self) -> int:
        """The chosen token's row in the window's matrices."""
        return self.position - self.span.start

    @property
    def tokens(self) -> tuple[str, ...]:
        return tuple(f"{p}: {display_token(self.run.str_tokens[p])}" for p in self.span.positions)

    @property
    def me(self) -> str:
        """The chosen token, for sentences."""
        return f"token {self.position} ({display_token(self.run.str_tokens[self.position])!r})"

    def window_matrix(self, name: str, values: torch.Tensor, **extra) -> Matrix:
        """The window's rows of `values` [W, n], the chosen token's row highlighted."""
        return Matrix(name, _array(values), self.tokens, highlight=self.row, **extra)

    def strip(self, name: str, values: torch.Tensor, **extra) -> Matrix:
        """The chosen token's row of `values` [W, n] as a one-row matrix."""
        return Matrix(name, _array(values[self.row : self.row + 1]), (f"{name}",), **extra)


def _array(values: torch.Tensor) -> np.ndarray:
    return values.detach().float().cpu().numpy().astype(np.float32)


def _norm(vector: torch.Tensor) -> float:
    return float(vector.float().norm())


def _window_rows(context: _Context, tensor: torch.Tensor) -> torch.Tensor:
    return tensor[context.span.start : context.span.stop].float().cpu()


# --- input: tokens and embedding ----------------------------------------------------------------


def _tokens_stage(context: _Context) -> Stage:
    run = context.run
    ids = run.tokens[context.span.start : context.span.stop].float()[None]
    vocab = run.model.info.vocab_size
    token_id = int(run.tokens[context.position])
    ids_matrix = Matrix("token id", _array(ids), ("id",), columns=context.tokens, marked=context.row, kind="ids")
    return Stage(
        key="tokens", group="input", title="Tokens",
        formula=rf"\text{{text}} \;\mapsto\; (t_0, \dots, t_{{{run.n_tokens - 1}}}),\quad t_i \in \{{0, \dots, {vocab - 1:,}\}}",
        sentence=f"The tokenizer cuts the text into {run.n_tokens} tokens from a vocabulary of {vocab:,}; "
                 "from here on the model sees only their ids.",
        notice=f"{context.me[0].upper()}{context.me[1:]} has id {token_id}; the window shows tokens "
               f"{context.span.start}–{context.span.stop - 1} of {run.n_tokens}.",
        strip=(ids_matrix,), detail=(),
    )  # fmt: skip


def _embedding_stage(context: _Context) -> Stage:
    """Token embedding (Gemma: times √d), plus a learned position embedding where the model has
    one; the sum is block 0's input."""
    run = context.run
    bridge = run.model.bridge
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Callable:
        def hook(tensor: torch.Tensor, hook) -> None:
            seen.setdefault(name, _window_rows(context, tensor[0]))

        return hook

    names = [n for n in ("hook_embed", "hook_pos_embed") if n in bridge.hook_dict]
    with run.model.lock, torch.inference_mode():
        block_pass.block_inputs(run, 0, hooks=[(n, keep(n)) for n in names])
    x0 = _window_rows(context, run.layer(0).resid_pre)
    token = seen.get("hook_embed")
    if token is None:
        raise UnsupportedModelError(f"TransformerLens fires no embedding hook for {run.model.info.architecture}")
    embedding = bridge.embed.original_component
    scale = getattr(embedding, "embed_scale", None)
    raw = embedding.weight[run.tokens[context.span.start : context.span.stop]].detach().float().cpu()
    position = seen.get("hook_pos_embed")
    total = token if position is None else token + position
    _check(run, total, x0, "the embedding (token plus position)")
    strip, detail = [context.strip("W_E[t]", raw)], [context.window_matrix("token embedding W_E[t]", raw)]
    d = run.model.info.d_model
    if scale is not None:
        _check(run, raw * float(scale), token, "the embedding scale")
        strip.append(context.strip(f"× √{d}", token))
        detail.append(context.window_matrix(f"scaled by √{d} = {float(scale):.4g}", token))
        formula = rf"x^{{(0)}}_i = \sqrt{{{d}}}\; W_E[t_i]"
    else:
        formula = r"x^{(0)}_i = W_E[t_i]"
    if position is not None:
        strip.append(context.strip("W_P[i]", position))
        detail.append(context.window_matrix("position embedding W_P[i]", position))
        formula += r" + W_P[i]"
        how = "a learned row per position is added to the token's row"
    else:
        how = "no position table: positions enter later, inside every attention layer"
    strip.append(context.strip("x₀", x0))
    detail.append(context.window_matrix("x₀: block 0's input", x0))
    norms = x0.norm(dim=-1)
    return Stage(
        key="embedding", group="input", title="Embedding", formula=formula,
        sentence=f"Each token id picks a row of the embedding table ({d} numbers); {how}.",
        notice=f"The embedding of {context.me} has norm {float(norms[context.row]):.3g}; in the window the "
               f"norms range from {float(norms.min()):.3g} to {float(norms.max()):.3g}.",
        strip=tuple(strip), detail=tuple(detail),
    )  # fmt: skip


# --- block `layer` ------------------------------------------------------------------------------


def _block_stages(context: _Context, rows: dict[str, torch.Tensor]) -> list[Stage]:
    run, layer = context.run, context.layer
    acts = run.layer(layer)
    block = run.model.bridge.blocks[layer]
    x = _window_rows(context, acts.resid_pre)
    stages = [_norm_stage(context, "norm_attn", "before attention", block.ln1, x, rows["ln1.hook_scale"],
                          rows["ln1.hook_out"], "ln1")]  # fmt: skip
    stages.append(_qkv_stage(context, rows))
    qk = query_keys(run, layer)
    if qk.rotated:
        stages.append(_rotary_stage(context, rows, qk))
    stages.append(_attention_stage(context, rows, qk))
    stages.append(_heads_stage(context, rows))
    attention_out = rows["attn.o.hook_out"]
    if "ln1_post.hook_out" in rows:
        stages.append(_norm_stage(context, "post_norm_attn", "after attention", block.ln1_post, attention_out,
                                  rows["ln1_post.hook_scale"], rows["ln1_post.hook_out"], "ln1_post"))  # fmt: skip
        attention_out = rows["ln1_post.hook_out"]
    mid = None
    if acts.resid_mid is not None:
        mid = _window_rows(context, acts.resid_mid)
        stages.append(_residual_attention_stage(context, x, attention_out, mid, post="ln1_post.hook_out" in rows))
    mlp_in = rows["ln1.hook_out"]
    if "ln2.hook_out" in rows:
        stages.append(_norm_stage(context, "norm_mlp", "before the MLP", block.ln2, rows["ln2.hook_in"],
                                  rows["ln2.hook_scale"], rows["ln2.hook_out"], "ln2"))  # fmt: skip
        mlp_in = rows["ln2.hook_out"]
    stages.append(_mlp_stage(context, rows, mlp_in))
    mlp_out = rows["mlp.out.hook_out"]
    if "ln2_post.hook_out" in rows:
        stages.append(_norm_stage(context, "post_norm_mlp", "after the MLP", block.ln2_post, mlp_out,
                                  rows["ln2_post.hook_scale"], rows["ln2_post.hook_out"], "ln2_post"))  # fmt: skip
        mlp_out = rows["ln2_post.hook_out"]
    _check(run, mlp_out, _window_rows(context, acts.mlp_out), f"the MLP output of layer {layer}")
    stages.append(_block_out_stage(context, x, mid, attention_out, mlp_out, rows["hook_out"]))
    return stages


def _norm_stage(context: _Context, key: str, where: str, module, x: torch.Tensor, scale: torch.Tensor,
                out: torch.Tensor, name: str) -> Stage:  # fmt: skip
    """A LayerNorm or RMSNorm: x, x̂ (centred and/or divided by the scale the model computed),
    and γ ⊙ x̂ + β (what the model output, checked)."""
    run = context.run
    cfg = run.model.bridge.cfg
    original = module.original_component
    weight = original.weight.detach().float().cpu()
    offset = bool(getattr(cfg, "rmsnorm_uses_offset", False))
    gain = 1.0 + weight if offset else weight
    bias = getattr(original, "bias", None)
    layer_norm = cfg.normalization_type.startswith("LN")
    centred = x - x.mean(-1, keepdim=True) if layer_norm else x
    hat = centred / scale
    rebuilt = hat * gain + (bias.detach().float().cpu() if bias is not None else 0.0)
    title_layer = f"layer {context.layer} " if key != "final_norm" else ""
    _check(run, rebuilt, out, f"the {title_layer}norm {name}")
    kind = "LayerNorm" if layer_norm else "RMSNorm"
    stat = r"\mu_i = \tfrac{1}{d}\sum_k x_{ik},\; \sigma_i = \sqrt{\tfrac{1}{d}\sum_k (x_{ik}-\mu_i)^2 + \epsilon}"
    if layer_norm:
        formula = r"\hat x_i = \frac{x_i - \mu_i}{\sigma_i},\quad y_i = \gamma \odot \hat x_i + \beta,\quad " + stat
    else:
        g = r"(1 + \gamma)" if offset else r"\gamma"
        formula = (rf"\hat x_i = \frac{{x_i}}{{r_i}},\quad y_i = {g} \odot \hat x_i,\quad "
                   r"r_i = \sqrt{\tfrac{1}{d}\sum_k x_{ik}^2 + \epsilon}")  # fmt: skip
    what = "subtracts the mean and divides by the standard deviation" if layer_norm else "divides by the root mean square"
    gain_name = "1 + γ" if offset else "γ"
    detail = [context.window_matrix("x: input", x), context.window_matrix("x̂: normalised", hat),
              Matrix(gain_name, _array(gain[None]), (gain_name,))]  # fmt: skip
    if bias is not None:
        detail.append(Matrix("β", _array(bias.detach().float()[None]), ("β",)))
    detail.append(context.window_matrix("y: output", out))
    scales = scale[:, 0]
    return Stage(
        key=key, group="output" if key == "final_norm" else "block",
        title=f"{kind} {where} ({name})", formula=formula,
        sentence=f"The {kind} {what} of each token's vector, then scales each dimension by a learned gain "
                 f"{'and adds a learned bias ' if bias is not None else ''}so the next step sees numbers of a steady size.",
        notice=f"For {context.me} the divisor is {float(scales[context.row]):.3g} (in the window from "
               f"{float(scales.min()):.3g} to {float(scales.max()):.3g}); the norm goes from {_norm(x[context.row]):.3g} "
               f"to {_norm(out[context.row]):.3g}.",
        strip=(context.strip("x", x), context.strip("x̂", hat), context.strip("y", out)), detail=tuple(detail),
    )  # fmt: skip


def _qkv_stage(context: _Context, rows: dict[str, torch.Tensor]) -> Stage:
    run, h, g = context.run, context.head, context.kv_head
    info = run.model.info
    q, k, v = rows["attn.q.hook_out"][:, h], rows["attn.k.hook_out"][:, g], rows["attn.v.hook_out"][:, g]
    _check(run, rows["attn.v.hook_out"], _window_rows(context, run.layer(context.layer).values), "the values")
    grouped = info.n_kv_heads < info.n_heads
    group = info.n_heads // info.n_kv_heads
    attention = run.model.bridge.blocks[context.layer].attn
    b = {name: _bias_term(getattr(attention, name), f"b_{name.upper()}") for name in ("q", "k", "v")}
    g_name = "g" if grouped else "h"
    formula = (rf"q^{{(h)}}_i = \hat x_i W_Q^{{(h)}}{b['q']},\; k^{{({g_name})}}_i = \hat x_i W_K^{{({g_name})}}{b['k']},\; "
               rf"v^{{({g_name})}}_i = \hat x_i W_V^{{({g_name})}}{b['v']}")  # fmt: skip
    if grouped:
        sharing = f"heads {g * group}–{(g + 1) * group - 1} share key/value head {g}"
        formula += rf",\quad g = \lfloor h / {group} \rfloor"
    else:
        sharing = "every head has its own keys and values"
    head_name, kv_name = f"head {h}", f"kv head {g}" if grouped else f"head {h}"
    return Stage(
        key="qkv", group="block", title="Queries, keys and values",
        formula=formula,
        sentence=f"Three learned projections turn each normalised vector into a query, a key and a value per head "
                 f"({info.n_heads} heads of {info.d_head} numbers; {sharing}).",
        notice=f"Head {h}'s query for {context.me} has norm {_norm(q[context.row]):.3g}; its key {_norm(k[context.row]):.3g} "
               f"and value {_norm(v[context.row]):.3g} ({kv_name}).",
        strip=(context.strip(f"q ({head_name})", q), context.strip(f"k ({kv_name})", k),
               context.strip(f"v ({kv_name})", v)),
        detail=(context.window_matrix(f"Q ({head_name})", q), context.window_matrix(f"K ({kv_name})", k),
                context.window_matrix(f"V ({kv_name})", v)),
    )  # fmt: skip


def _bias_term(projection, name: str) -> str:
    """`` + b`` in a formula when the projection (a TransformerLens linear bridge) has a bias."""
    return f" + {name}" if getattr(projection.original_component, "bias", None) is not None else ""


def _rotary_stage(context: _Context, rows: dict[str, torch.Tensor], qk) -> Stage:
    run, h, g = context.run, context.head, context.kv_head
    q, k = rows["attn.q.hook_out"][:, h], rows["attn.k.hook_out"][:, g]
    q_rot, k_rot = _window_rows(context, qk.queries)[:, h], _window_rows(context, qk.keys)[:, g]
    d_head = q.shape[-1]
    rotary_dim = _rotary_dim(q, q_rot)
    partial_note = f" (only the first {rotary_dim} of {d_head} dimensions turn)" if rotary_dim < d_head else ""
    return Stage(
        key="rotary", group="block", title="Rotary position embedding",
        formula=(r"\tilde q_i = q_i \odot \cos(i\,\theta) + \operatorname{rot}(q_i) \odot \sin(i\,\theta),\quad "
                 r"\tilde k_j = k_j \odot \cos(j\,\theta) + \operatorname{rot}(k_j) \odot \sin(j\,\theta)"),
        sentence="Instead of a position table, queries and keys are turned by an angle proportional to the token's "
                 f"position, pair of dimensions by pair{partial_note}, so q·k depends on how far apart two tokens are.",
        notice=f"A rotation keeps lengths: the query of {context.me} has norm {_norm(q[context.row]):.3g} before and "
               f"{_norm(q_rot[context.row]):.3g} after; only the directions change.",
        strip=(context.strip("q before", q), context.strip("q rotated", q_rot), context.strip("k before", k),
               context.strip("k rotated", k_rot)),
        detail=(context.window_matrix(f"Q head {h}, before", q), context.window_matrix(f"Q head {h}, rotated", q_rot),
                context.window_matrix(f"K kv head {g}, before", k),
                context.window_matrix(f"K kv head {g}, rotated", k_rot)),
    )  # fmt: skip


def _rotary_dim(before: torch.Tensor, after: torch.Tensor) -> int:
    """How many leading dimensions rotary embeddings changed (the rest pass through)."""
    changed = ((before - after).abs() > 1e-6 * max(1.0, float(before.abs().max()))).any(0).nonzero()
    return int(changed.max()) + 1 if len(changed) else before.shape[-1]


def _attention_stage(context: _Context, rows: dict[str, torch.Tensor], qk) -> Stage:
    """Head h's scores for the window's queries, step by step, as the model computes them: q·k,
    the scale, Gemma 2's soft-cap, the mask and the softmax (over every source of the query,
    so the weights equal the Run's), then the weighted sum of the values."""
    run, h, g, span = context.run, context.head, context.kv_head, context.span
    queries = qk.queries[span.start : span.stop, h]  # [W, d]
    keys = qk.keys[: span.stop, g]  # [stop, d]: every source a query of the window may see
    dots = queries @ keys.T  # [W, stop]
    positions = torch.arange(span.start, span.stop)
    scores = masked_scores(qk, dots, positions)
    weights = torch.softmax(scores, -1)
    used = run.layer(context.layer).pattern.block(span.start, span.stop)[:, h].float().cpu()  # [W, stop]
    _check(run, weights, used, f"the attention weights of layer {context.layer}, head {h}")
    values = rows["attn.v.hook_out"][:, g]  # [W, d] sources of the window
    z = rows["attn.o.hook_in"][:, h]
    shown = slice(span.start, span.stop)
    scaled = dots * qk.scale
    steps = [("q·k", dots), (f"× {qk.scale:.4g}", scaled)]
    if qk.softcap is not None:
        scaled = qk.softcap * torch.tanh(scaled / qk.softcap)
        steps.append((f"soft-cap {qk.softcap:g}·tanh(·/{qk.softcap:g})", scaled))
    masked = scaled.masked_fill(torch.isinf(scores), float("-inf"))
    steps.append(("mask (−∞)", masked))
    columns = context.tokens
    detail = [context.window_matrix(name, step[:, shown], columns=columns) for name, step in steps]
    detail.append(context.window_matrix("softmax (each row adds up to 1 over all earlier tokens)", weights[:, shown],
                                        columns=columns, kind="probability"))  # fmt: skip
    detail.append(context.window_matrix(f"V (kv head {g})", values))
    detail.append(context.window_matrix("z = softmax · V", z))
    row = weights[context.row]
    before = float(row[: span.start].sum())
    best = int(row.argmax())
    scale = (rf"\frac{{1}}{{\sqrt{{{qk.queries.shape[-1]}}}}}" if abs(qk.scale - qk.queries.shape[-1] ** -0.5) < 1e-6
             else f"{qk.scale:.4g}")  # fmt: skip
    score = rf"s_{{ij}} = {scale}\, \tilde q_i \cdot \tilde k_j" if qk.rotated else rf"s_{{ij}} = {scale}\, q_i \cdot k_j"
    if qk.softcap is not None:
        score += rf",\; s_{{ij}} \leftarrow {qk.softcap:g} \tanh(s_{{ij}} / {qk.softcap:g})"
    mask = r"m_{ij} = -\infty \text{ if } j > i"
    if qk.sliding_window is not None:
        mask += rf" \text{{ or }} i - j \ge {qk.sliding_window}"
    hidden = f" {before:.0%} of it goes to tokens before the window." if before >= 0.005 else ""
    return Stage(
        key="attention", group="block", title=f"Attention, head {h}",
        formula=rf"{score},\quad a_{{ij}} = \operatorname{{softmax}}_j(s_{{ij}} + m_{{ij}}),\; {mask},\quad z_i = \sum_j a_{{ij}} v_j",
        sentence="Each query is compared with the keys of its own and every earlier token; the scaled scores of later "
                 "tokens are masked to −∞, a softmax turns the rest into weights that add up to 1 (dropout is off "
                 "when predicting), and the head's output is the weighted sum of the values.",
        notice=f"Head {h} at {context.me} puts {float(row[best]):.0%} of its weight on token {best} "
               f"({display_token(run.str_tokens[best])!r}).{hidden}",
        strip=(Matrix("softmax", _array(row[shown][None]), ("a_i·",), columns=columns, marked=context.row,
                      kind="probability"),
               context.strip("z", z)),
        detail=tuple(detail),
    )  # fmt: skip


def _heads_stage(context: _Context, rows: dict[str, torch.Tensor]) -> Stage:
    """All heads' outputs side by side, through the output projection W_O (+ b_O)."""
    run, layer = context.run, context.layer
    z = rows["attn.o.hook_in"]  # [W, H, d]
    out = rows["attn.o.hook_out"]  # [W, d_model]
    n_heads = z.shape[1]
    w_o = run.model.attention_output_weight(layer).float().cpu()  # [H, d, d_model]
    per_head = torch.einsum("hd,hdm->hm", z[context.row], w_o)  # [H, d_model]
    bias = run.model.attention_output_bias(layer)
    rebuilt = per_head.sum(0) + (bias.float().cpu() if bias is not None else 0.0)
    _check(run, rebuilt, out[context.row], f"the output projection of layer {layer}")
    sizes = per_head.norm(dim=-1)
    strongest = int(sizes.argmax())
    heads = tuple(f"head {h}" for h in range(n_heads))
    concatenated = z.reshape(z.shape[0], -1)
    b = r" + b_O" if bias is not None else ""
    return Stage(
        key="heads", group="block", title="Heads together, output projection",
        formula=rf"o_i = [z^{{(0)}}_i; \dots; z^{{({n_heads - 1})}}_i]\, W_O{b} = \sum_h z^{{(h)}}_i W_O^{{(h)}}{b}",
        sentence=f"The {n_heads} heads' outputs are laid side by side and one learned matrix maps them back to the "
                 "residual stream's width: each head writes its own part of the sum.",
        notice=f"At {context.me}, head {strongest} writes the largest vector (norm {float(sizes[strongest]):.3g})"
               + (f"; head {context.head} writes {float(sizes[context.head]):.3g}." if strongest != context.head else "."),
        strip=(context.strip("z (all heads)", concatenated), context.strip("o", out)),
        detail=(Matrix(f"z of {context.me}, one row per head", _array(z[context.row]), heads, highlight=context.head),
                Matrix(f"‖z⁽ʰ⁾ W_O⁽ʰ⁾‖ at {context.me}", _array(sizes[None]), ("norm",), columns=heads),
                context.window_matrix("o: attention output", out)),
    )  # fmt: skip


def _residual_attention_stage(context: _Context, x, attention_out, mid, post: bool) -> Stage:
    _check(context.run, x + attention_out, mid, f"the residual addition after attention in layer {context.layer}")
    added = r"\operatorname{PostNorm}(o_i)" if post else "o_i"
    ratio = _norm(attention_out[context.row]) / max(_norm(x[context.row]), 1e-12)
    return Stage(
        key="residual_attn", group="block", title="Residual addition after attention",
        formula=rf"x^{{\text{{mid}}}}_i = x_i + {added}",
        sentence="The attention output is added to the token's vector rather than replacing it: the residual "
                 "stream keeps what was there and adds what the heads brought.",
        notice=f"At {context.me} the attention output is {ratio:.2g} times as long as the vector it is added to.",
        strip=(context.strip("x", x), context.strip("+ attention", attention_out), context.strip("= x mid", mid)),
        detail=(context.window_matrix("x: block input", x), context.window_matrix("attention output", attention_out),
                context.window_matrix("x mid", mid)),
    )  # fmt: skip


def _mlp_stage(context: _Context, rows: dict[str, torch.Tensor], mlp_in: torch.Tensor) -> Stage:
    """Up-projection, activation (gated: φ(gate) ⊙ up), down-projection."""
    run, layer = context.run, context.layer
    up, acts, down = rows["mlp.in.hook_out"], rows["mlp.out.hook_in"], rows["mlp.out.hook_out"]
    _check(run, acts, _window_rows(context, run.layer(layer).neuron_acts), f"the MLP activations of layer {layer}")
    mlp = run.model.bridge.blocks[layer].mlp.original_component
    act_module = getattr(mlp, "act_fn", None) or getattr(mlp, "act", None)
    act_name, act_tex = _ACTIVATIONS.get(type(act_module).__name__, (type(act_module).__name__,) * 2)
    gate = rows.get("mlp.gate.hook_out")
    d_mlp = up.shape[-1]
    b_in = _bias_term(getattr(run.model.bridge.blocks[layer].mlp, "in"), r"b_{\text{in}}")
    b_out = r" + b_{\text{out}}" if run.model.neuron_output_bias(layer) is not None else ""
    strip = [context.strip("input", mlp_in)]
    detail = [context.window_matrix("input", mlp_in)]
    if gate is not None:
        with torch.inference_mode():
            activated = act_module(gate)
        _check(run, activated * up, acts, f"the gated MLP of layer {layer} ({act_name}(gate) ⊙ up)")
        strip += [context.strip("gate", gate), context.strip(f"{act_name}(gate)", activated), context.strip("up", up)]
        detail += [context.window_matrix("gate = x W_gate", gate),
                   context.window_matrix(f"{act_name}(gate)", activated), context.window_matrix("up = x W_up", up)]
        formula = (rf"h_i = {act_tex}(x_i W_{{\text{{gate}}}}) \odot (x_i W_{{\text{{up}}}}),\quad "
                   rf"m_i = h_i W_{{\text{{down}}}}{b_out}")  # fmt: skip
        title, shape = "Gated MLP", f"two projections to {d_mlp} neurons, one gating the other through {act_name}"
    else:
        strip.append(context.strip("pre-activation", up))
        detail.append(context.window_matrix("pre-activation = x W_in", up))
        formula = rf"h_i = {act_tex}(x_i W_{{\text{{in}}}}{b_in}),\quad m_i = h_i W_{{\text{{out}}}}{b_out}"
        title, shape = "MLP", f"a projection up to {d_mlp} neurons and the {act_name} activation"
    strip += [context.strip("h (neurons)", acts), context.strip("m = output", down)]
    detail += [context.window_matrix("h: neuron activations", acts), context.window_matrix("m: MLP output", down)]
    row = acts[context.row].abs()
    strongest = int(row.argmax())
    share = float((row > 0.1 * row.max()).float().mean()) if float(row.max()) > 0 else 0.0
    return Stage(
        key="mlp", group="block", title=title, formula=formula,
        sentence=f"Each token on its own: {shape}, then a projection back down to the residual stream's width.",
        notice=f"At {context.me} neuron {strongest} is the most active ({float(acts[context.row, strongest]):.3g}); "
               f"{share:.0%} of the {d_mlp} neurons reach a tenth of that.",
        strip=tuple(strip), detail=tuple(detail),
    )  # fmt: skip


def _block_out_stage(context: _Context, x, mid, attention_out, mlp_out, out) -> Stage:
    run, layer = context.run, context.layer
    expected = _window_rows(context, run.layer(layer).resid_post)
    last = layer == run.n_layers - 1
    goes = "the final norm" if last else f"block {layer + 1}"
    if mid is None:
        _check(run, x + attention_out + mlp_out, expected, f"the parallel residual addition of layer {layer}")
        formula = r"x^{\text{out}}_i = x_i + o_i + m_i"
        sentence = ("In a parallel block attention and MLP both read the block's input, and both outputs are added "
                    "to it at once.")  # fmt: skip
        strip = (context.strip("x", x), context.strip("+ attention", attention_out), context.strip("+ MLP", mlp_out),
                 context.strip("= output", out))  # fmt: skip
        detail = (context.window_matrix("x: block input", x), context.window_matrix("attention output", attention_out),
                  context.window_matrix("MLP output", mlp_out), context.window_matrix("block output", out))
        base = x
    else:
        _check(run, mid + mlp_out, expected, f"the residual addition after the MLP of layer {layer}")
        added = r"\operatorname{PostNorm}(m_i)" if run.model.info.post_norms else "m_i"
        formula = rf"x^{{\text{{out}}}}_i = x^{{\text{{mid}}}}_i + {added}"
        sentence = "The MLP output is added to the residual stream in turn; the sum is the block's output."
        strip = (context.strip("x mid", mid), context.strip("+ MLP", mlp_out), context.strip("= output", out))
        detail = (context.window_matrix("x mid", mid), context.window_matrix("MLP output", mlp_out),
                  context.window_matrix("block output", out))
        base = mid
    ratio = _norm(mlp_out[context.row]) / max(_norm(base[context.row]), 1e-12)
    return Stage(
        key="block_out", group="block", title=f"Block {layer} output", formula=formula, sentence=sentence,
        notice=f"At {context.me} the MLP output is {ratio:.2g} times as long as the vector it is added to; "
               f"the sum is the input of {goes}.",
        strip=strip, detail=detail,
    )  # fmt: skip


# --- output: final norm, logits, sampling -------------------------------------------------------


def _output_stages(context: _Context, sampling: SamplingStages) -> list[Stage]:
    run = context.run
    bridge = run.model.bridge
    last = _window_rows(context, run.layers[-1].resid_post)
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Callable:
        def hook(tensor: torch.Tensor, hook) -> None:
            seen.setdefault(name, tensor[0].detach().float().cpu())

        return hook

    weight = bridge.W_U
    with run.model.lock, torch.inference_mode(), bridge.hooks(fwd_hooks=[("ln_final.hook_scale", keep("scale"))]):
        normed = bridge.ln_final(last[None].to(device=weight.device, dtype=weight.dtype))[0]
        raw = (normed @ bridge.W_U + bridge.b_U).float().cpu()
    normed = normed.float().cpu()
    if "scale" not in seen:
        raise UnsupportedModelError(f"TransformerLens fires no scale hook in the final norm of {run.model.info.architecture}")
    final = _norm_stage(context, "final_norm", "after the last block", bridge.ln_final, last, seen["scale"], normed, "ln_final")
    cap = float(getattr(bridge.cfg, "output_logits_soft_cap", -1.0) or -1.0)
    logits = cap * torch.tanh(raw / cap) if cap > 0 else raw
    _check(run, logits, run.rows_logits(context.span.positions).cpu(), "the logits")
    return [final, _unembed_stage(context, raw, logits, cap), _sampling_stage(context, sampling)]


def _sampling_formula(settings: SamplingSettings) -> str:
    """p = softmax(filters(ℓ / T)), with only the filters that are on."""
    if settings.greedy:
        return r"\hat t = \arg\max_t \ell_{i,t}\quad(\text{temperature } 0)"
    inner = rf"\ell_i / {settings.temperature:g}" if settings.temperature != 1 else r"\ell_i"
    if settings.top_k:
        inner = rf"\operatorname{{top\text{{-}}k}}_{{{settings.top_k}}}({inner})"
    if settings.top_p < 1:
        inner = rf"\operatorname{{top\text{{-}}p}}_{{{settings.top_p:g}}}({inner})"
    return rf"p_i = \operatorname{{softmax}}({inner}),\quad t_{{i+1}} \sim p_i"


def _top_columns(context: _Context, logits: torch.Tensor) -> tuple[list[int], tuple[str, ...]]:
    ids = torch.topk(logits, min(TOP_TOKENS, logits.shape[-1])).indices.tolist()
    return ids, tuple(display_token(t) for t in context.run.model.decode_tokens(ids))


def _unembed_stage(context: _Context, raw: torch.Tensor, logits: torch.Tensor, cap: float) -> Stage:
    run = context.run
    row = logits[context.row]
    ids, labels = _top_columns(context, row)
    b = r" + b_U" if run.model.bridge.b_U is not None and bool(run.model.bridge.b_U.abs().max() > 0) else ""
    formula = rf"\ell_i = y_i W_U{b}"
    strip = [Matrix("logits (top)", _array(row[ids][None]), ("ℓ",), columns=labels)]
    detail = [context.window_matrix(f"logits of the window on {context.me}'s top {len(ids)} tokens", logits[:, ids],
                                    columns=labels)]  # fmt: skip
    if cap > 0:
        formula += rf",\quad \ell_i \leftarrow {cap:g} \tanh(\ell_i / {cap:g})"
        strip.insert(0, Matrix("before soft-cap", _array(raw[context.row][ids][None]), ("raw",), columns=labels))
        detail.insert(0, context.window_matrix("before the soft-cap", raw[:, ids], columns=labels))
    gap = float(row[ids[0]] - row[ids[1]]) if len(ids) > 1 else 0.0
    second = f", {gap:.3g} ahead of {labels[1]!r}" if len(ids) > 1 else ""
    return Stage(
        key="unembed", group="output", title="Logits",
        formula=formula,
        sentence=f"One score per vocabulary token ({run.model.info.vocab_size:,}): the final vector's dot product with "
                 "each token's output embedding" + (", soft-capped" if cap > 0 else "") + ".",
        notice=f"After {context.me} the highest logit is {labels[0]!r} ({float(row[ids[0]]):.3g}){second}.",
        strip=tuple(strip), detail=tuple(detail),
    )  # fmt: skip


def _sampling_stage(context: _Context, stages: SamplingStages) -> Stage:
    """The Playground's pipeline on this position's logits; the figure of the Playground shows it
    in full when the stage is expanded."""
    run, settings = context.run, stages.settings
    ids, labels = _top_columns(context, stages.logits)
    probs = stages.probs[ids]
    formula = _sampling_formula(settings)
    best = int(stages.probs.argmax())
    return Stage(
        key="sampling", group="output", title="Temperature, top-k, top-p, softmax",
        formula=formula,
        sentence=f"The logits are divided by the temperature, filtered by top-k and top-p, and a softmax turns what is "
                 f"left into the probabilities the next token is drawn from ({settings.describe()}).",
        notice=f"{stages.n_kept:,} tokens can be drawn; the most likely is "
               f"{display_token(run.model.decode_tokens([best])[0])!r} with {float(stages.probs[best]):.1%}.",
        strip=(Matrix("p (top)", _array(probs[None]), ("p",), columns=labels, kind="probability"),),
        detail=(),
    )  # fmt: skip
