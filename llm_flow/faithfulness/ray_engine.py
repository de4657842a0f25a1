"""Pairs on Ray: the in-process engine's per-pair work (`PairTask.evaluate`) in a pool of Ray
Data actors, each holding one model and, for mean ablation, its own reference runs; the same
machinery as ``llm-flow dataset --engine ray``. Ray is optional and imported only there."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict

from llm_flow.dataset.inprocess import use_threads
from llm_flow.dataset.spec import ModelSpec, resolved
from llm_flow.errors import ArgumentError
from llm_flow.faithfulness.curves import BudgetCurve
from llm_flow.faithfulness.pairs import Pair
from llm_flow.faithfulness.sets import PairCurves, PairTask, Progress


class PairsActor:
    """One model per actor; each call evaluates a batch of pairs."""

    def __init__(self, spec: ModelSpec, task: PairTask, cpus: float) -> None:
        if not spec.device.startswith("cuda"):
            use_threads(max(1, int(cpus)))
        self.model = spec.load()
        self.task = task
        self.shared = task.references(self.model)

    def __call__(self, batch):  # pyarrow.Table with index, pair -> pyarrow.Table with index, result
        import pyarrow as pa

        pairs = [Pair(**json.loads(text)) for text in batch.column("pair").to_pylist()]
        results = [curves_to_json(self.task.evaluate(self.model, pair, self.shared)) for pair in pairs]
        return pa.table({"index": batch.column("index"), "result": results})


def evaluate_on_ray(
    model: str | ModelSpec,
    pairs: Sequence[Pair],
    task: PairTask,
    workers: int | None = None,
    address: str | None = None,
    progress: Progress | None = None,
) -> list[PairCurves]:
    """Every pair's curves, in the order of `pairs` (the actors finish them in any order)."""
    from llm_flow.dataset.ray_engine import map_on_actors

    if not isinstance(model, (str, ModelSpec)):
        raise ArgumentError("the Ray engine loads the model in each worker: pass its name or a ModelSpec, not a loaded model")
    spec = resolved(ModelSpec(model) if isinstance(model, str) else model)
    rows = [{"index": n, "pair": json.dumps(asdict(pair))} for n, pair in enumerate(pairs)]
    found: dict[int, PairCurves] = {}
    if progress is not None:
        progress(0, len(pairs), "starting the Ray workers")
    for row in map_on_actors(PairsActor, {"spec": spec, "task": task, "cpus": 1.0}, rows, spec.device, workers, address):
        found[row["index"]] = curves_from_json(row["result"])
        if progress is not None:
            progress(len(found), len(pairs), f"pair {found[row['index']].pair.pair_id}")
    return [found[n] for n in range(len(pairs))]


def curves_to_json(result: PairCurves) -> str:
    """A pair's result as text (floats written so that they read back exactly)."""
    return json.dumps({"pair": asdict(result.pair), "error": result.error,
                       "curves": {key: asdict(curve) for key, curve in result.curves.items()}})  # fmt: skip


def curves_from_json(text: str) -> PairCurves:
    record = json.loads(text)
    curves = {
        key: BudgetCurve(**{name: tuple(value) if isinstance(value, list) else value for name, value in fields.items()})
        for key, fields in record["curves"].items()
    }  # fmt: skip
    return PairCurves(Pair(**record["pair"]), curves, record["error"])
