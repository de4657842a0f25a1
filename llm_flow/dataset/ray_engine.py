"""The Ray engine: the same per-prompt work as Ray Data ``map_batches`` over actors, each holding
one model (CPU or GPU actors), on an existing cluster (``address``) or a local Ray.

Ray is an optional dependency (``pip install "llm-flow[scale]"``) and is imported only here.
Workers of an existing cluster need llm-flow installed (and the model reachable) too.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator

from llm_flow.dataset.analyse import PromptResult, analyse_prompt
from llm_flow.dataset.inprocess import use_threads
from llm_flow.dataset.prompts import PromptItem
from llm_flow.dataset.serial import result_from_json, result_to_json
from llm_flow.dataset.settings import INSTALL_HINT, Settings
from llm_flow.dataset.spec import ModelSpec, model_info
from llm_flow import errors
from llm_flow.errors import ArgumentError, LlmFlowError, ModelLoadError

class RouteActor:
    """One model per actor; each call analyses a batch of prompts."""

    def __init__(self, spec: ModelSpec, settings: Settings, cpus: float) -> None:
        if not spec.device.startswith("cuda"):
            use_threads(max(1, int(cpus)))
        self.model = spec.load()
        self.settings = settings
        self.info = json.dumps(model_info(self.model), sort_keys=True)

    def __call__(self, batch):  # pyarrow.Table with prompt_id, text -> pyarrow.Table
        import pyarrow as pa

        results = [
            result_to_json(analyse_prompt(self.model, PromptItem(pid, text), self.settings))
            for pid, text in zip(batch.column("prompt_id").to_pylist(), batch.column("text").to_pylist())
        ]
        return pa.table({"result": results, "model_info": [self.info] * len(results)})


def run_ray(
    spec: ModelSpec,
    settings: Settings,
    items: list[PromptItem],
    on_model: Callable[[dict], None],
    workers: int | None = None,
    address: str | None = None,
    cpus_per_worker: float = 1.0,
    batch_size: int = 1,
) -> Iterator[PromptResult]:
    """Results as the actors finish them (in no particular order: the files are sorted later)."""
    rows = [{"prompt_id": item.prompt_id, "text": item.text} for item in items]
    kwargs = {"spec": spec, "settings": settings, "cpus": cpus_per_worker}
    seen_info = None
    for row in map_on_actors(RouteActor, kwargs, rows, spec.device, workers, address, cpus_per_worker, batch_size):
        if row["model_info"] != seen_info:
            seen_info = row["model_info"]
            on_model(json.loads(seen_info))
        yield result_from_json(row["result"])


def map_on_actors(
    actor: type,
    kwargs: dict,
    rows: list[dict],
    device: str = "cpu",
    workers: int | None = None,
    address: str | None = None,
    cpus_per_worker: float = 1.0,
    batch_size: int = 1,
) -> Iterator[dict]:
    """Ray Data ``map_batches`` of `rows` over a pool of `actor`s (built with `kwargs`, one model
    each, CPU or GPU by `device`), on the cluster at `address` or a local Ray started and stopped
    here; the output rows as they come. An llm-flow error raised in a worker reaches the caller
    as itself, with "(in a Ray worker)" added."""
    ray = _import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=address, logging_level=logging.WARNING, include_dashboard=False)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise ArgumentError(f"cannot connect to the Ray cluster at {address!r}: {_first_line(exc)}") from None
    try:
        gpu = device.startswith("cuda")
        resources = {"num_gpus": 1} if gpu else {"num_cpus": cpus_per_worker}
        if workers is None:  # as many as the cluster holds
            available = ray.cluster_resources().get("GPU" if gpu else "CPU", 1)
            workers = max(1, int(available // (1 if gpu else cpus_per_worker)))
        results = ray.data.from_items(rows).map_batches(
            actor,
            fn_constructor_kwargs=kwargs,
            batch_format="pyarrow",
            batch_size=batch_size,
            compute=ray.data.ActorPoolStrategy(size=workers),
            **resources,
        )
        try:
            for batch in results.iter_batches(batch_size=None, batch_format="pyarrow"):
                yield from batch.to_pylist()
        except LlmFlowError:
            raise
        except Exception as exc:  # Ray wraps a failing actor (model load) in its own types
            cause = _llm_flow_cause(exc)
            if cause is not None:
                raise type(cause)(f"{cause} (in a Ray worker)") from None
            raise ModelLoadError(f"the Ray engine failed: {_first_line(exc)}") from exc
    finally:
        if started_here:
            ray.shutdown()


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ArgumentError(INSTALL_HINT) from None
    return ray


def _llm_flow_cause(exc: BaseException) -> LlmFlowError | None:
    """The llm-flow error behind Ray's wrappers, if there is one. A failed actor constructor
    (the model did not load) reaches the driver only as text, whose last traceback line names
    the error: ``llm_flow.errors.ModelNotFoundError: unknown model ...``."""
    seen = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, LlmFlowError) and type(current).__module__ == "llm_flow.errors":
            return current
        current = getattr(current, "cause", None) or current.__cause__
    found = re.findall(r"llm_flow\.errors\.(\w+): (.+)", str(exc))
    if found:
        name, message = found[-1]
        error_class = getattr(errors, name, None)
        if isinstance(error_class, type) and issubclass(error_class, LlmFlowError):
            return error_class(message.strip())
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
