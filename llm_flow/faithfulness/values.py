"""What an ablated edge carries instead of its clean value: nothing (zero), its value on a
counterfactual prompt (patching), or its mean over reference prompts (mean).

A part's value is a vector in the residual stream (docs/method.md): ``z[i, j, h]`` summed over
heads for an attention edge, ``resid_pre[i]``, ``resid_mid[i]`` or ``mlp_out[i]`` for the
residual and FFN parts, each as it entered the residual (post-norm gain applied). Every source
answers the same two questions, both linear in the part vectors, without materialising a
[T, T, d] tensor per layer:

* `attention(layer, mask)`: Σ_j mask[i, j] Σ_h z[i, j, h], per destination i: [T, d];
* `attention_dot(layer, grad)`: Σ_h z[i, j, h] · grad[i] for every edge: [T, T].

Mean ablation is position-matched (the IOI convention): the value at destination i is the mean
over the reference prompts that have a token at i, each cut to the prompt's length (a causal
model's first T positions do not see what comes after).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from llm_flow.errors import ArgumentError
from llm_flow.faithfulness.settings import AblationSpec
from llm_flow.models.run import Run
from llm_flow.wording import plural


class RunValues:
    """Part values as one Run computed them, on its first `n_tokens` positions (default: all; a
    causal model's first positions are the same whatever follows)."""

    def __init__(self, run: Run, n_tokens: int | None = None) -> None:
        self.run = run
        self.n_tokens = run.n_tokens if n_tokens is None else min(n_tokens, run.n_tokens)
        self._layers: dict[int, tuple] = {}  # dense float32 tensors per layer, made once (every pass reads them)

    def attention(self, layer: int, mask: torch.Tensor) -> torch.Tensor:
        pattern, values, w_o, gain = self._attention(layer)
        mixed = torch.einsum("hij,jhk->ihk", pattern * mask[None], values)  # [T, H, d_head]
        out = torch.einsum("ihk,hkd->id", mixed, w_o)
        return out if gain is None else out * gain

    def attention_dot(self, layer: int, grad: torch.Tensor) -> torch.Tensor:
        pattern, values, w_o, gain = self._attention(layer)
        grad = grad if gain is None else grad * gain
        read = torch.einsum("hkd,id->ihk", w_o, grad)  # what head h's output is worth at i
        return torch.einsum("hij,jhk,ihk->ij", pattern, values, read)

    def state(self, layer: int, name: str) -> torch.Tensor:
        value = getattr(self.run.layer(layer), name)
        if value is None:
            raise ArgumentError(f"this model has parallel blocks: there is no {name}")
        return value[: self.n_tokens].float()

    def _attention(self, layer: int):
        if layer not in self._layers:
            self._layers[layer] = self.attention_tensors(layer)
        return self._layers[layer]

    def attention_tensors(self, layer: int):
        """(pattern [H, T, T], values [T, H, d_head] per query head, W_O [H, d_head, d], post-norm
        gain [T, d] or None) as float32."""
        acts, n = self.run.layer(layer), self.n_tokens
        pattern = acts.pattern.block(0, n).permute(1, 0, 2).float()  # [H, T, T]
        n_heads = pattern.shape[0]
        values = acts.values[:n].float().repeat_interleave(n_heads // acts.values.shape[1], dim=1)  # [T, H, d_head]
        w_o = self.run.model.attention_output_weight(layer).float()
        gain = None if acts.attn_gain is None else acts.attn_gain[:n]
        return pattern, values, w_o, gain


class MeanValues:
    """Position-matched means over reference Runs of any length (each covers its own positions)."""

    def __init__(self, runs: Sequence[Run], n_tokens: int) -> None:
        self.sources = [RunValues(run, n_tokens) for run in runs]
        self.n_tokens = n_tokens
        counts = torch.zeros(n_tokens)
        for source in self.sources:
            counts[: source.n_tokens] += 1
        if not bool((counts > 0).all()):
            longest = max(source.n_tokens for source in self.sources)
            raise ArgumentError(
                f"mean ablation needs reference prompts at least as long as the prompt ({plural(n_tokens, 'token')}); "
                f"the longest reference has {plural(longest, 'token')}: use longer reference prompts"
            )
        self.counts = counts[:, None]
        self._mixed: dict[int, tuple[torch.Tensor, torch.Tensor] | None] = {}

    def attention(self, layer: int, mask: torch.Tensor) -> torch.Tensor:
        mixed = self._mixed_mean(layer)
        if mixed is None:
            return self._mean(lambda s, n: s.attention(layer, mask[:n, :n]), columns=None)
        means, w_o = mixed
        return torch.einsum("ihk,hkd->id", torch.einsum("ij,ijhk->ihk", mask.to(means.dtype), means), w_o)

    def attention_dot(self, layer: int, grad: torch.Tensor) -> torch.Tensor:
        mixed = self._mixed_mean(layer)
        if mixed is None:
            return self._mean(lambda s, n: s.attention_dot(layer, grad[:n]), columns=self.n_tokens)
        means, w_o = mixed
        return torch.einsum("ijhk,ihk->ij", means, torch.einsum("hkd,id->ihk", w_o, grad))

    def _mixed_mean(self, layer: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The references' mean of ``A[h, i, j] v[j, h]`` [T, T, H, d_head] and W_O, made once per
        layer so that a pass does not go over every reference again. None under post-norms: each
        reference's row gain multiplies after W_O and does not factor out."""
        if layer not in self._mixed:
            total, w_o = None, None
            for source in self.sources:
                pattern, values, w_o, gain = source.attention_tensors(layer)
                if gain is not None:
                    self._mixed[layer] = None
                    return None
                if total is None:
                    total = values.new_zeros(self.n_tokens, self.n_tokens, *values.shape[1:])
                n = source.n_tokens
                total[:n, :n] += torch.einsum("hij,jhk->ijhk", pattern, values)
            self._mixed[layer] = (total / self.counts[:, :, None, None], w_o)
        return self._mixed[layer]

    def state(self, layer: int, name: str) -> torch.Tensor:
        return self._mean(lambda s, n: s.state(layer, name), columns=None)

    def _mean(self, compute, columns: int | None) -> torch.Tensor:
        total = None
        for source in self.sources:
            n = source.n_tokens
            value = compute(source, n)
            if total is None:
                total = value.new_zeros(self.n_tokens, columns or value.shape[-1])
            total[:n, : value.shape[-1]] += value
        return total / self.counts


class ZeroValues:
    """Zero ablation: an ablated part carries nothing."""

    def __init__(self, n_tokens: int, d_model: int) -> None:
        self.n_tokens, self.d_model = n_tokens, d_model

    def attention(self, layer: int, mask: torch.Tensor) -> torch.Tensor:
        return torch.zeros(self.n_tokens, self.d_model)

    def attention_dot(self, layer: int, grad: torch.Tensor) -> torch.Tensor:
        return torch.zeros(self.n_tokens, self.n_tokens)

    def state(self, layer: int, name: str) -> torch.Tensor:
        return torch.zeros(self.n_tokens, self.d_model)


PartValues = RunValues | MeanValues | ZeroValues


def ablation_values(run: Run, spec: AblationSpec, references: Sequence[Run] | None = None) -> PartValues:
    """The values `spec` puts in place of ablated parts of `run`'s prompt. Runs the model on the
    counterfactual, or on the reference prompts unless their `references` runs are given (a set
    of prompts can share them: each uses the positions it needs)."""
    model = run.model
    if spec.mode == "zero":
        return ZeroValues(run.n_tokens, model.info.d_model)
    if spec.mode == "patching":
        counterfactual = model.run(spec.counterfactual)
        if counterfactual.n_tokens != run.n_tokens:
            raise ArgumentError(
                f"patching needs prompts of the same length: the prompt is {plural(run.n_tokens, 'token')}, "
                f"the counterfactual {plural(counterfactual.n_tokens, 'token')} ({counterfactual.str_tokens!r}); "
                "reword the counterfactual"
            )
        return RunValues(counterfactual)
    return MeanValues(reference_runs(model, spec, run.n_tokens) if references is None else references, run.n_tokens)


def reference_runs(model, spec: AblationSpec, n_tokens: int | None = None) -> list[Run]:
    """One Run per reference prompt of `spec` (blank ones skipped), cut to `n_tokens` if given."""
    texts = [text for text in spec.reference_prompts() if text.strip()]
    return [model.run_ids(model.encode(text)[:n_tokens], prompt=text) for text in texts]
