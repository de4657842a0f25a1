"""Methods that read one forward pass instead of explaining an output: attention weights and
ALTI rollout. Both come from a single route `Run` over the prompt and the continuation without its
last token; causal attention makes row ``i`` of that Run exactly what step ``i - n_prompt + 1``
saw, so every step is answered by the same pass. On an encoder that Run is the input itself,
and the one step reads the row of its mask over every token (the attention is bidirectional).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from llm_flow.attribution.base import Method, MethodOutput, Problem, check_choice, stack_rows
from llm_flow.errors import ArgumentError
from llm_flow.models.run import Run
from llm_flow.routes.contributions import attention_contributions, ffn_contributions


def _run(problem: Problem) -> Run:
    return problem.model.run_ids(list(problem.sequence.ids[:-1]))


def _query_rows(problem: Problem) -> list[int]:
    """The position whose output predicts each target: one before the target (an encoder's mask)."""
    if problem.sequence.position is not None:
        return [problem.sequence.position]
    return [problem.sequence.n_prompt + step - 1 for step in range(problem.n_steps)]


def _visible(problem: Problem, query: int) -> int:
    """How many sources the step predicted at `query` sees: up to the query, or all (encoder)."""
    return problem.n_sources if problem.sequence.position is not None else query + 1


@dataclass(frozen=True)
class Attention(Method):
    """Attention weights of one layer from the predicting position to every source, the mean or
    the maximum over heads."""

    name: ClassVar[str] = "attention"
    label: ClassVar[str] = "Attention"
    summary: ClassVar[str] = (
        "The attention weights of one layer from the predicting position (mean or maximum over "
        "heads); no output is explained."
    )
    uses_output: ClassVar[bool] = False
    scale: ClassVar[str] = "share"

    layer: int = -1
    heads: str = "mean"

    def __post_init__(self) -> None:
        if isinstance(self.layer, bool) or not isinstance(self.layer, int):
            raise ArgumentError(f"layer must be an integer (got {self.layer!r})")
        check_choice("heads", self.heads, ("mean", "max"))

    def compute(self, problem: Problem) -> MethodOutput:
        run = _run(problem)
        pattern = run.layer(self.layer).pattern  # layer checked here, with the valid range
        rows = []
        for query in _query_rows(problem):
            weights = pattern.row(query).float()[:, : _visible(problem, query)]  # [H, sources seen]
            rows.append(weights.mean(0) if self.heads == "mean" else weights.max(0).values)
        problem.report(problem.n_steps)
        return MethodOutput(stack_rows(rows, problem.n_sources))


@dataclass(frozen=True)
class AltiRollout(Method):
    """ALTI contributions composed across all layers into token-to-token shares (Ferrando et al.
    2022, "Measuring the Mixing of Contextual Information in the Transformer").

    Per layer, a row-stochastic token-mixing matrix M (T x T) from the route engine's exact
    contributions (DESIGN.md §1):

    * sequential blocks: attention ``A[i, j] = sum_h c_heads[i, j, h] + [i == j] * c_res[i]``
      (the residual ``resid_pre[i]`` is position i's own representation, so its share stays
      on the diagonal); FFN ``F = diag(c_ffn + c_res2)`` (the FFN is position-wise: its output
      is made of whatever ``resid_mid[i]`` is made of, so it mixes no tokens and, its two
      shares summing to 1, F is the identity); ``M = F @ A``;
    * parallel blocks: one normalisation, ``M[i, j] = sum_h c_heads[i, j, h] + [i == j] *
      (c_res[i] + c_ffn[i])``.

    Rollout: ``R = M_{L-1} @ ... @ M_0``; ``R[i, j]`` is input token j's share in position i's
    last residual state, and each row sums to 1. Step t reads row ``n_prompt + t - 1``.
    """

    name: ClassVar[str] = "alti_rollout"
    label: ClassVar[str] = "ALTI rollout"
    summary: ClassVar[str] = (
        "Each input token's share in the final state of the predicting position: the route "
        "engine's exact contributions multiplied through all layers."
    )
    uses_output: ClassVar[bool] = False
    scale: ClassVar[str] = "share"

    def compute(self, problem: Problem) -> MethodOutput:
        run = _run(problem)
        rollout = alti_rollout(run)
        rows = [torch.from_numpy(rollout[query, : _visible(problem, query)]) for query in _query_rows(problem)]
        problem.report(problem.n_steps)
        return MethodOutput(stack_rows(rows, problem.n_sources))


def layer_mixing(run: Run, layer: int) -> np.ndarray:
    """The token-mixing matrix M of one layer (see `AltiRollout`): [T, T] float64."""
    heads, residual = attention_contributions(run, layer)  # [T, T, H], [T]
    ffn, ffn_residual = ffn_contributions(run, layer)  # [T], [T]
    mixing = heads.sum(-1).double().numpy()
    if run.parallel:
        # c_res is the same in both calls here: one joint normalisation
        np.fill_diagonal(mixing, mixing.diagonal() + residual.double().numpy() + ffn.double().numpy())
        return mixing
    np.fill_diagonal(mixing, mixing.diagonal() + residual.double().numpy())
    return (ffn + ffn_residual).double().numpy()[:, None] * mixing


def alti_rollout(run: Run) -> np.ndarray:
    """``R = M_{L-1} @ ... @ M_0`` over every layer of `run`: [T, T] float64."""
    rollout = np.eye(run.n_tokens)
    for layer in range(run.n_layers):
        rollout = layer_mixing(run, layer) @ rollout
    return rollout
