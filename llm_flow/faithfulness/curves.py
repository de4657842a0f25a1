"""Budget curves, CPR and CMD as the Mechanistic Interpretability Benchmark (MIB) computes them,
and the smallest circuit that reaches a target faithfulness.

At each budget k (a fraction of the full graph's edges) the circuit is the top ⌊k·n⌋ edges by
score: by *signed* score for the curve CPR integrates, by *absolute* score for the one CMD
integrates (the same circuit for scorers whose scores are never negative). Then

    CPR = ∫ f dk,    CMD = ∫ |1 - f| dk

by trapezoids on a linear axis of edge fraction, from the first budget (0.1 %) to 100 %: no
segment before the first budget. CPR higher and CMD lower are better; f above 1 counts fully in
CPR (a circuit can do more than the whole model once the rest is ablated).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pandas as pd
import torch

from llm_flow.errors import ArgumentError
from llm_flow.faithfulness.problem import Problem
from llm_flow.faithfulness.scorers import Scorer

BUDGETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)

Progress = Callable[[int, int], None]  # (passes done, passes in all)


@dataclass(frozen=True)
class BudgetCurve:
    """f of one scorer's top-k circuits at each budget."""

    scorer: str
    ablation: str
    metric_name: str
    total: int  # edges of the full graph
    budgets: tuple[float, ...]
    edges: tuple[int, ...]
    metric: tuple[float, ...]  # m of the top-k by signed score
    faithfulness: tuple[float, ...]
    metric_absolute: tuple[float, ...]  # m of the top-k by |score|
    faithfulness_absolute: tuple[float, ...]
    full: float  # m(M)
    empty: float  # m(∅)

    @property
    def cpr(self) -> float:
        """Area under f (signed top-k): higher is better."""
        return area(self.budgets, self.faithfulness)

    @property
    def cmd(self) -> float:
        """Area between f (absolute top-k) and 1: lower is better."""
        return area(self.budgets, [abs(1.0 - f) for f in self.faithfulness_absolute])

    def at(self, budget: float) -> float:
        """f (signed top-k) at one of the curve's budgets."""
        if budget not in self.budgets:
            raise ArgumentError(f"the curve has no budget {budget} (its budgets: {', '.join(map(str, self.budgets))})")
        return self.faithfulness[self.budgets.index(budget)]

    def to_frame(self) -> pd.DataFrame:
        """One row per budget: the CSV columns of ``llm-flow faithfulness``."""
        return pd.DataFrame({
            "scorer": self.scorer, "ablation": self.ablation, "budget": list(self.budgets),
            "edges": list(self.edges), "metric": list(self.metric), "faithfulness": list(self.faithfulness),
            "metric_absolute": list(self.metric_absolute), "faithfulness_absolute": list(self.faithfulness_absolute),
        })  # fmt: skip


@dataclass(frozen=True)
class SmallestCircuit:
    """The fewest top-ranked edges found whose f reaches the target."""

    edges: int
    fraction: float  # of the full graph
    faithfulness: float
    threshold: float  # the score the kept edges beat: for Alti(selection="threshold"), the route threshold
    passes: int  # forward passes the search made
    kept: torch.Tensor = field(repr=False)  # bool [n]


def area(budgets: Sequence[float], values: Sequence[float]) -> float:
    """Trapezoids on a linear axis."""
    return sum((b - a) * (u + v) / 2 for a, b, u, v in zip(budgets, budgets[1:], values, values[1:]))


def budget_size(budget: float, total: int) -> int:
    """Edges at a budget: ⌊budget · total⌋, as MIB."""
    return int(math.floor(budget * total + 1e-9))


def check_budgets(budgets: Sequence[float]) -> tuple[float, ...]:
    values = tuple(budgets)
    if len(values) < 2 or any(not isinstance(b, (int, float)) or not 0 < b <= 1 for b in values) \
            or list(values) != sorted(set(values)):
        raise ArgumentError(f"budgets must be at least two increasing fractions in (0, 1] (got {values!r})")
    return tuple(float(b) for b in values)


def top_k(scores: torch.Tensor, k: int, absolute: bool = False) -> torch.Tensor:
    """The `k` highest scores (or absolute scores) as a bool mask; ties keep the earlier edge."""
    order = torch.argsort(scores.abs() if absolute else scores, descending=True, stable=True)
    kept = torch.zeros(len(scores), dtype=torch.bool)
    kept[order[:k]] = True
    return kept


def budget_curve(
    problem: Problem,
    scorer: Scorer,
    budgets: Sequence[float] = BUDGETS,
    scores: torch.Tensor | None = None,
    progress: Progress | None = None,
) -> BudgetCurve:
    """`scorer`'s curve on `problem` (scores computed unless given): one forward pass per budget,
    two for signed scorers, fewer when circuits repeat."""
    budgets = check_budgets(budgets)
    scores = scorer.scores(problem) if scores is None else scores
    total = len(problem.edges)
    sizes = [budget_size(b, total) for b in budgets]
    same = not bool((scores < 0).any())  # signed and absolute rankings agree
    n_passes = len(sizes) * (1 if same else 2)
    done = 0

    def metrics(absolute: bool) -> list[float]:
        nonlocal done
        out = []
        for size in sizes:
            out.append(problem.metric(top_k(scores, size, absolute)))
            done += 1
            if progress is not None:
                progress(done, n_passes)
        return out

    signed = metrics(False)
    absolute = signed if same else metrics(True)
    return BudgetCurve(
        scorer=scorer.key, ablation=problem.spec.mode, metric_name=problem.contrast.metric, total=total,
        budgets=budgets, edges=tuple(sizes),
        metric=tuple(signed), faithfulness=tuple(problem.normalised(m) for m in signed),
        metric_absolute=tuple(absolute), faithfulness_absolute=tuple(problem.normalised(m) for m in absolute),
        full=problem.full, empty=problem.empty,
    )  # fmt: skip


def smallest_circuit(
    problem: Problem,
    scorer: Scorer,
    target: float = 0.8,
    scores: torch.Tensor | None = None,
    absolute: bool = False,
    budgets: Sequence[float] = BUDGETS,
    max_passes: int = 24,
) -> SmallestCircuit:
    """The fewest top-ranked edges with f >= `target`: the budgets in order until one reaches it,
    then bisection between it and the budget before (f is assumed to grow with the budget
    between the two). Only cuts between different scores are tried, so with
    ``Alti(selection="threshold")`` every candidate is a route at some threshold."""
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target <= 1:
        raise ArgumentError(f"the target faithfulness must be in (0, 1] (got {target!r})")
    scores = scorer.scores(problem) if scores is None else scores
    ranked = torch.sort(scores.abs() if absolute else scores, descending=True, stable=True).values
    total = len(ranked)
    drops = torch.nonzero(ranked[:-1] > ranked[1:]).flatten() + 1  # sizes that cut between two scores
    cuts = [*drops.tolist(), total]
    seen: dict[int, float] = {}

    def f(index: int) -> float:
        k = cuts[index]
        if k not in seen:
            seen[k] = problem.normalised(problem.metric(top_k(scores, k, absolute)))
        return seen[k]

    low, high = -1, len(cuts) - 1  # f(low) < target (or none tried), f(high) >= target
    for budget in check_budgets(budgets):
        index = next(n for n, k in enumerate(cuts) if k >= budget_size(budget, total))
        if index > low and f(index) >= target:
            high = index
            break
        low = max(low, index)
    while high - low > 1 and len(seen) < max_passes:
        middle = (low + high) // 2
        if f(middle) >= target:
            high = middle
        else:
            low = middle
    k = cuts[high]
    return SmallestCircuit(
        edges=k,
        fraction=k / total,
        faithfulness=f(high),
        threshold=float(ranked[k]) if k < total else 0.0,
        passes=len(seen),
        kept=top_k(scores, k, absolute),
    )
