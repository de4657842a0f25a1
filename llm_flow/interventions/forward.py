"""Re-run a prompt with parts removed, through TransformerLens hooks on the model's bridge.

What "remove" means (and what the tests check against plain `transformers`):

* A removal takes a vector out of what a block adds to the residual stream at one position:
  attention parts from the attention output (``hook_attn_out``), the FFN part from the FFN
  output (``hook_mlp_out``); a node that loses its residual part is set to what its sublayers
  added (``hook_resid_post``, and ``hook_resid_mid`` for the FFN's input). Whatever reads that
  residual afterwards (the FFN of the same layer, later layers' queries, keys and values, the
  final norm) is recomputed. A query row that loses most of its attention parts is rebuilt from
  the parts it keeps plus the bias rather than by subtraction: the same value in exact
  arithmetic, without the float32 rounding that subtracting a state from itself leaves where a
  route keeps nothing, and that the next RMSNorm would scale to full size.
* Removed vectors are computed *in the ablated pass itself*, from its own attention pattern,
  values and residual states: once an earlier removal has changed a later layer's input, that
  layer's parts are what the changed model actually computes. Removing every attention part of
  some layers is therefore exactly setting those attention outputs to their bias, and removing
  the route's complement leaves each pruned node equal to the sum of its kept parts.
* Post-norms (Gemma 2/3): the attention output enters the residual as ``g_i ⊙ o_i`` with
  ``g_i = w / rms(o_i)``. A part is removed as ``g_i ⊙ z`` with the gain of the pass's *whole*
  output ``o_i``, as in the contributions: the parts then still add up to what entered the
  residual and a removal takes out exactly its share. (Normalising the remainder again would
  scale what is left back up to the old norm and hide most of any removal.)
* Post-LN blocks (BERT, RoBERTa, MiniLM): every part enters the state through the block's
  LayerNorm, ``L_i(x) = g_i ⊙ (x − mean x)`` with ``g_i = γ / σ_i`` and ``σ_i`` the scale of the
  pass's *whole* sum at position ``i`` (docs/method.md#encoders), the same linearisation as the
  contributions and as Gemma's post-norms above. A removal subtracts ``L_i`` of the removed
  parts from the norm's output (``ln1`` for ``A{l}_i``, ``ln2`` for ``I{l}_i``), so a node keeps
  exactly the sum of its other parts plus the norm's bias. A masked-LM head then reads the
  final state as usual; a checkpoint without one predicts through its input embeddings, as the
  run does.
* FFN parts are zeroed or replaced by the FFN's mean output over the prompt's positions in the
  unmodified run (a fixed reference, as mean ablation usually is).
* A layer's fixed replacement vectors (``LayerRemoval.attention_added``, ``ffn_added``) are added
  after the removals: what patching from a counterfactual prompt or a reference mean puts where
  the removed parts were (``llm_flow.faithfulness``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from llm_flow.errors import ArgumentError, UnsupportedModelError
from llm_flow.interventions.parts import Ablation, FfnMode, LayerRemoval, check_run
from llm_flow.models.fast_attention import Capture
from llm_flow.models.run import Run
from llm_flow.views.tokens import ranks


@dataclass(frozen=True)
class Outcome:
    """The target token after one forward pass."""

    probability: float
    logit: float
    rank: int  # 1 = the model's top prediction


def outcome(logits: torch.Tensor, token: int) -> Outcome:
    """`logits` [vocab] of one position."""
    logits = logits.float()
    value = logits[token]
    return Outcome(
        probability=float(torch.softmax(logits, -1)[token]),
        logit=float(value),
        rank=ranks(logits, [token])[0],
    )


def ablated_logits(run: Run, removal: Ablation) -> torch.Tensor:
    """Logits [T, vocab] (float32) of `run`'s prompt with `removal`'s parts taken out."""
    check_run(run)
    if removal.n_tokens != run.n_tokens:
        raise ArgumentError(
            f"this ablation was made for a {removal.n_tokens}-token prompt; the run has {run.n_tokens} tokens"
        )
    model = run.model
    surgery = _PostLnSurgery if model.info.post_ln else _LayerSurgery
    final: dict[str, torch.Tensor] = {}
    # The lock: hooks live on the shared module. The pass attends as `model.run` does, and gives
    # each layer's rows of this pass as it goes (`TransparentLlm.rows_pass`).
    with model.lock, torch.inference_mode(), model.rows_pass() as capture:
        if capture is not None:
            capture.from_rows |= {layer for layer, part in removal.layers.items() if len(part.attention)}
        hooks = []
        for layer, layer_removal in removal.layers.items():
            hooks += surgery(run, layer, layer_removal, removal.ffn_mode, capture).hooks()
        if model.info.no_lm_head:  # the bridge's logits would come from a head the checkpoint lacks
            hooks.append((f"blocks.{run.n_layers - 1}.hook_resid_post", lambda x, hook: final.update(state=x[0].clone())))
        inputs = model.segments(run.tokens.tolist(), run.tokens.device)  # an encoder's token types
        logits = model.bridge.run_with_hooks(run.tokens[None], fwd_hooks=hooks, return_type="logits", **inputs)
    if final:
        return model.unembed(final["state"])
    return logits[0].float()


class _LayerSurgery:
    """The hooks of one layer: capture what the removed vectors are made of, then take them out.

    Where a removal would subtract most of a sum, the sum is rebuilt from what it keeps instead:
    a query row that loses most of its attention parts is its kept parts plus the output bias, and
    a node that loses its residual is what its sublayers added (``hook_resid_post``). Subtracting
    nearly a whole state from itself leaves float32 rounding that the next RMSNorm would scale up
    to a full-size state where the route keeps (almost) nothing."""

    def __init__(self, run: Run, layer: int, removal: LayerRemoval, ffn_mode: FfnMode, capture: "Capture | None") -> None:
        self.model, self.layer, self.removal, self.capture = run.model, layer, removal, capture
        self.post_norms, self.parallel = run.model.info.post_norms, run.parallel
        self.seen: dict[str, torch.Tensor] = {}
        self.ffn_mean = run.layer(layer).mlp_out.float().mean(0) if ffn_mode == "mean" else None  # [d]
        self.n_sources = run.layer(0).pattern.source_counts(torch.arange(run.n_tokens))  # [T] per query row

    def hooks(self) -> list[tuple[str, Callable]]:
        block, r = f"blocks.{self.layer}", self.removal
        hooks = []
        if len(r.attention) and self.capture is None:  # else the pass's rows come from the capture
            hooks += [(f"{block}.attn.hook_pattern", self._keep("pattern")), (f"{block}.attn.hook_v", self._keep("v"))]
        if len(r.attention) and self.post_norms:
            hooks.append((f"{block}.ln1_post.hook_scale", self._keep("scale")))
        if len(r.attention) or r.residual_attention or r.attention_added is not None:
            hooks.append((f"{block}.hook_attn_out", self._attention_out))
        if r.ffn or r.ffn_added is not None or r.residual_attention or r.residual_ffn:
            hooks.append((f"{block}.hook_mlp_out", self._ffn_out))
        if r.residual_attention and not self.parallel:
            hooks.append((f"{block}.hook_resid_mid", self._resid_mid))
        if r.residual_attention or r.residual_ffn:
            hooks.append((f"{block}.hook_resid_post", self._resid_post))
        return hooks

    def _keep(self, name: str) -> Callable:
        def hook(tensor: torch.Tensor, hook) -> None:
            self.seen[name] = tensor[0]

        return hook

    def _attention_out(self, out: torch.Tensor, hook) -> torch.Tensor:
        out = out.clone()  # [1, T, d]
        if len(self.removal.attention):
            rows, vectors, rebuilt = self._attention_rows()
            out[0, rows[~rebuilt]] -= vectors[~rebuilt].to(out.dtype)
            out[0, rows[rebuilt]] = vectors[rebuilt].to(out.dtype)
        if self.removal.attention_added is not None:
            out[0] += self.removal.attention_added.to(out)
        if self.removal.residual_attention:
            self.seen["attention"] = out[0]
        return out

    def _attention_rows(self, rebuild: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each query row the removal touches (rows [r]) and its vector [r, d]: the sum of its
        removed parts, or, for a row that loses more than half of them (rebuilt [r] bool), the
        sum of its kept parts plus the output bias — what attention adds there after the removal."""
        index = self.removal.attention  # [n, 3] (i, j, h)
        rows, row_of = torch.unique(index[:, 0], return_inverse=True)
        if self.capture is not None:  # this pass's own rows, rebuilt for the touched queries only
            pattern = self.capture.patterns[self.layer]
            touched = pattern.rows(rows.to(torch.int64), pattern.n_tokens).float()  # [r, H, T]
            values = self.capture.values[self.layer].float()  # [T, n_kv, d_head]
        else:
            touched = self.seen.pop("pattern").float()[:, rows.to(torch.int64)].transpose(0, 1)  # [r, H, T]
            values = self.seen.pop("v").float()
        n_heads = touched.shape[1]
        index, row_of, rows = index.to(touched.device), row_of.to(touched.device), rows.to(touched.device)
        removed = torch.zeros_like(touched, dtype=torch.bool)  # [r, H, T]
        removed[row_of, index[:, 2], index[:, 1]] = True
        every = self.n_sources.to(touched.device)[rows.to(torch.int64)] * n_heads  # [r] parts per row
        rebuilt = removed.sum((1, 2)) * 2 > every if rebuild else torch.zeros_like(every, dtype=torch.bool)
        weights = touched * torch.where(rebuilt[:, None, None], ~removed, removed)  # [r, H, T]
        values = values.repeat_interleave(n_heads // values.shape[1], dim=1)  # [T, H, d_head]
        mixed = torch.einsum("rhj,jhk->rhk", weights, values)  # [r, H, d_head]
        w_o = self.model.attention_output_weight(self.layer).float()  # [H, d_head, d]
        vectors = torch.einsum("rhk,hkd->rd", mixed, w_o)  # [r, d]
        bias = self.model.attention_output_bias(self.layer)
        if bias is not None:
            vectors[rebuilt] += bias.float().to(vectors.device)
        if self.post_norms:
            scale = self.seen.pop("scale")[rows]  # [r, 1], rms of the whole attention output
            vectors = vectors * self.model.post_norm_gain(self.layer, "ln1_post", scale)
        return rows, vectors, rebuilt

    def _ffn_out(self, out: torch.Tensor, hook) -> torch.Tensor:
        out = out.clone()  # [1, T, d]
        if self.removal.ffn:
            positions = sorted(self.removal.ffn)
            out[0, positions] = 0.0 if self.ffn_mean is None else self.ffn_mean.to(out)
        if self.removal.ffn_added is not None:
            out[0] += self.removal.ffn_added.to(out)
        self.seen["ffn"] = out[0]
        return out

    def _resid_mid(self, state: torch.Tensor, hook) -> torch.Tensor:
        """``A{l}`` [1, T, d] as the FFN reads it where its residual is removed: attention's output
        alone. (The bridge's hook feeds the FFN only; `_resid_post` mends the residual sum.)"""
        return _replaced(state, self.removal.residual_attention, self.seen["attention"])

    def _resid_post(self, state: torch.Tensor, hook) -> torch.Tensor:
        """``I{l}`` [1, T, d] rebuilt from its kept parts where a residual is removed."""
        r, ffn = self.removal, self.seen.pop("ffn")
        attention = self.seen.pop("attention", None)
        if self.parallel:
            return _replaced(state, r.residual_attention, attention + ffn)
        if attention is not None:  # A{l} lost its residual: I{l} = A{l} alone + FFN
            state = _replaced(state, r.residual_attention - r.residual_ffn, attention + ffn)
        return _replaced(state, r.residual_ffn, ffn)


def _replaced(state: torch.Tensor, positions: frozenset[int], rows: torch.Tensor) -> torch.Tensor:
    """`state` [1, T, d] with the rows at `positions` taken from `rows` [T, d]."""
    state = state.clone()
    positions = sorted(positions)
    state[0, positions] = rows[positions].to(state.dtype)
    return state


class _PostLnSurgery(_LayerSurgery):
    """A post-LN block's hooks: the removed parts leave the outputs of its two LayerNorms, through
    each norm linearised with this pass's own scale at each position (the module docstring)."""

    def __init__(self, run: Run, layer: int, removal: LayerRemoval, ffn_mode: FfnMode, capture: "Capture | None") -> None:
        if removal.attention_added is not None or removal.ffn_added is not None:
            raise UnsupportedModelError(
                f"{run.model.name}: putting other values where parts were (patching, mean ablation of "
                "edges) is implemented for decoders only; on an encoder, remove parts (route checks, ablation)"
            )
        super().__init__(run, layer, removal, ffn_mode, capture)

    def hooks(self) -> list[tuple[str, Callable]]:
        """The bridge's attention pattern arrives only after ln1's output has gone by, so ``A{l}``
        is edited where it is read: the FFN's input (``mlp.hook_in``) and the residual added to
        the FFN's output (ln2's input)."""
        block, r = f"blocks.{self.layer}", self.removal
        edits_attention = bool(len(r.attention) or r.residual_attention)
        hooks = []
        if len(r.attention) and self.capture is None:  # else the pass's rows come from the capture
            hooks += [(f"{block}.attn.hook_pattern", self._keep("pattern")), (f"{block}.attn.hook_v", self._keep("v"))]
        if r.residual_attention:
            hooks.append((f"{block}.hook_resid_pre", self._keep("resid_pre")))
        if edits_attention:
            hooks.append((f"{block}.ln1.hook_scale", self._keep("ln1")))
        if edits_attention or r.residual_ffn:
            hooks.append((f"{block}.mlp.hook_in", self._attention_state))
        if edits_attention:
            hooks.append((f"{block}.ln2.hook_in", self._ffn_residual))
        if r.ffn or r.residual_ffn:
            if r.ffn:
                hooks.append((f"{block}.hook_mlp_out", self._keep("mlp_out")))
            hooks += [(f"{block}.ln2.hook_scale", self._keep("ln2")), (f"{block}.ln2.hook_out", self._layer_state)]
        return hooks

    def _attention_state(self, state: torch.Tensor, hook) -> torch.Tensor:
        """``A{l}`` [1, T, d] as the FFN reads it, less its removed parts; kept as I's residual."""
        r = self.removal
        if len(r.attention) or r.residual_attention:
            removed = state.new_zeros(state.shape[1:], dtype=torch.float32)  # [T, d], before the norm
            if len(r.attention):
                rows, vectors, _ = self._attention_rows(rebuild=False)
                removed[rows] += vectors
            if r.residual_attention:
                positions = sorted(r.residual_attention)
                removed[positions] += self.seen.pop("resid_pre")[positions].float()
            self.seen["removed"] = self._through_norm("ln1", removed).to(state.dtype)
            state = state - self.seen["removed"][None]
        if r.residual_ffn:
            self.seen["resid_mid"] = state[0]
        return state

    def _ffn_residual(self, whole: torch.Tensor, hook) -> torch.Tensor:
        """ln2's input [1, T, d], ``A{l}`` + FFN output: the same parts leave its ``A{l}``."""
        return whole - self.seen.pop("removed")[None]

    def _layer_state(self, state: torch.Tensor, hook) -> torch.Tensor:
        """``I{l}`` = ln2's output [1, T, d], less its removed parts (σ from the edited input)."""
        r = self.removal
        removed = state.new_zeros(state.shape[1:], dtype=torch.float32)  # [T, d]
        if r.ffn:
            positions = sorted(r.ffn)
            replacement = 0.0 if self.ffn_mean is None else self.ffn_mean
            removed[positions] += self.seen.pop("mlp_out")[positions].float() - replacement
        if r.residual_ffn:
            positions = sorted(r.residual_ffn)
            removed[positions] += self.seen.pop("resid_mid")[positions].float()
        return state - self._through_norm("ln2", removed).to(state.dtype)[None]

    def _through_norm(self, norm: str, vectors: torch.Tensor) -> torch.Tensor:
        """L_i(x) = g_i ⊙ (x − mean x) for each row of `vectors` [T, d], σ_i from this pass."""
        gain = self.model.post_norm_gain(self.layer, norm, self.seen.pop(norm))  # [T, d]
        return gain * (vectors - vectors.mean(-1, keepdim=True))
