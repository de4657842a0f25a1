"""Budget curves over a set of prompt pairs, in-process or on Ray (`ray_engine`): each pair its
own circuits (a route is per prompt), then the mean and spread of CPR, CMD and f over the pairs, and MIB's pooled
curve, f from the metrics averaged over the set:

    f_pooled(k) = (mean m(C_k) - mean m(∅)) / (mean m(M) - mean m(∅))

Per-pair f is unstable where ablating everything barely moves a pair's metric (a small
denominator); the pooled f is what MIB reports. A pair that cannot be evaluated (a word that is
not one token, lengths that differ) is kept as an error and the others go on.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd

from llm_flow.errors import ArgumentError, LlmFlowError
from llm_flow.faithfulness.curves import BUDGETS, BudgetCurve, area, budget_curve, check_budgets
from llm_flow.faithfulness.pairs import Pair
from llm_flow.faithfulness.problem import prepare
from llm_flow.faithfulness.scorers import Scorer
from llm_flow.faithfulness.settings import AblationSpec
from llm_flow.faithfulness.values import reference_runs

Progress = Callable[[int, int, str], None]  # (pairs done, pairs in all, what is being done)


@dataclass(frozen=True)
class PairCurves:
    """One pair's curve per scorer (by `Scorer.key`), or why it could not be evaluated."""

    pair: Pair
    curves: dict[str, BudgetCurve]
    error: str | None = None


@dataclass(frozen=True)
class PairsResult:
    """Every pair's curves, and what they add up to."""

    results: tuple[PairCurves, ...]
    scorers: tuple[str, ...]
    ablation: str
    metric: str
    budgets: tuple[float, ...]

    @property
    def evaluated(self) -> list[PairCurves]:
        return [r for r in self.results if r.error is None]

    def frame(self) -> pd.DataFrame:
        """One row per pair, scorer and budget (the single-pair CSV with ``pair`` and ``task``)."""
        frames = [
            curve.to_frame().assign(pair=r.pair.pair_id, task=r.pair.task)
            for r in self.evaluated for curve in r.curves.values()
        ]  # fmt: skip
        frame = pd.concat(frames, ignore_index=True)
        return frame[["pair", "task", *(c for c in frame.columns if c not in ("pair", "task"))]]

    def pooled(self, scorer: str) -> tuple[list[float], list[float]]:
        """MIB's f per budget from the set's mean metrics: (signed top-k, absolute top-k)."""
        curves = [r.curves[scorer] for r in self.evaluated]
        full, empty = (statistics.fmean(getattr(c, name) for c in curves) for name in ("full", "empty"))

        def f(field: str) -> list[float]:
            means = [statistics.fmean(getattr(c, field)[k] for c in curves) for k in range(len(self.budgets))]
            # NaN when ablating everything leaves the pooled metric unchanged, as `Problem.normalised`
            return [(m - empty) / (full - empty) if full != empty else float("nan") for m in means]

        return f("metric"), f("metric_absolute")

    def summary(self) -> pd.DataFrame:
        """One row per scorer: pairs, CPR and CMD (mean and standard deviation over the pairs),
        f at 1 % and 5 % (mean), and CPR and CMD of the pooled curve."""
        rows = []
        for scorer in self.scorers:
            curves = [r.curves[scorer] for r in self.evaluated]
            signed, absolute = self.pooled(scorer)
            row = {"scorer": scorer, "pairs": len(curves)}
            for name, values in (("cpr", [c.cpr for c in curves]), ("cmd", [c.cmd for c in curves])):
                row[f"{name}_mean"], row[f"{name}_sd"] = statistics.fmean(values), _sd(values)
            for budget in (0.01, 0.05):
                if budget in self.budgets:
                    row[f"f_{budget:.0%}"] = statistics.fmean(c.at(budget) for c in curves)
            row["cpr_pooled"] = area(self.budgets, signed)
            row["cmd_pooled"] = area(self.budgets, [abs(1 - f) for f in absolute])
            rows.append(row)
        return pd.DataFrame(rows)


def evaluate_pairs(
    model,
    pairs: Sequence[Pair],
    scorers: Sequence[Scorer],
    mode: str = "patching",
    reference: object = None,
    metric: str = "logit_diff",
    budgets: Sequence[float] = BUDGETS,
    progress: Progress | None = None,
    *,
    engine: str = "inprocess",
    workers: int | None = None,
    address: str | None = None,
) -> PairsResult:
    """Each pair's budget curve per scorer. Mean ablation averages over `reference` (a prompt
    file or list), by default over the set's counterfactual prompts (the IOI convention: the
    mean of the corrupted distribution), run once for all pairs (once per worker on Ray).

    `engine`: ``inprocess`` (`model` a loaded model) or ``ray`` (`model` a name or a
    `llm_flow.dataset.ModelSpec`: each of `workers` actors loads its own, on the cluster at
    `address` or a local Ray), with the same results."""
    from llm_flow.dataset.settings import check_engine

    check_engine(engine, workers, address)
    budgets = check_budgets(budgets)
    keys = [scorer.key for scorer in scorers]
    if len(set(keys)) != len(keys):
        raise ArgumentError(f"each scorer may appear once (got {', '.join(keys)})")
    if mode == "mean" and reference is None:
        reference = [p.counterfactual for p in pairs]
    task = PairTask(tuple(scorers), mode, reference, metric, budgets)
    if engine == "ray":
        from llm_flow.faithfulness.ray_engine import evaluate_on_ray

        results = evaluate_on_ray(model, pairs, task, workers, address, progress)
    else:
        results = _evaluate_here(model, pairs, task, progress)
    return PairsResult(tuple(results), tuple(keys), mode, metric, budgets)


@dataclass(frozen=True)
class PairTask:
    """What is measured on every pair: all an engine's worker needs besides the model."""

    scorers: tuple[Scorer, ...]
    mode: str
    reference: object  # prompts mean ablation averages over (None for the other modes)
    metric: str
    budgets: tuple[float, ...]

    def references(self, model) -> list | None:
        """The reference runs mean ablation shares across pairs (None for the other modes)."""
        return reference_runs(model, AblationSpec("mean", reference=self.reference)) if self.mode == "mean" else None

    def evaluate(self, model, pair: Pair, shared: list | None) -> PairCurves:
        """One pair's curves, or the reason it cannot be evaluated."""
        try:
            spec = AblationSpec(self.mode, counterfactual=pair.counterfactual if self.mode == "patching" else None,
                                reference=self.reference if self.mode == "mean" else None)  # fmt: skip
            problem = prepare(model.run(pair.clean), pair.answer, pair.foil, spec, self.metric, references=shared)
            return PairCurves(pair, {s.key: budget_curve(problem, s, self.budgets) for s in self.scorers})
        except LlmFlowError as exc:
            return PairCurves(pair, {}, str(exc))


def _evaluate_here(model, pairs: Sequence[Pair], task: PairTask, progress: Progress | None) -> list[PairCurves]:
    from llm_flow.dataset.spec import ModelSpec

    if isinstance(model, str):
        model = ModelSpec(model)
    if isinstance(model, ModelSpec):
        model = model.load()
    if task.mode == "mean" and progress is not None:
        progress(0, len(pairs), "running the reference prompts")
    shared = task.references(model)
    results = []
    for done, pair in enumerate(pairs):
        if progress is not None:
            progress(done, len(pairs), f"pair {pair.pair_id}")
        results.append(task.evaluate(model, pair, shared))
    if progress is not None:
        progress(len(pairs), len(pairs), "done")
    return results


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0
