"""One prompt through one model: its route graphs reduced to per-component rows.

This is the unit of work both engines run (in-process, or inside a Ray actor), so a result does
not depend on where it was computed. A prompt that cannot be analysed (empty, over-long, or
anything else that fails) becomes an error result; it never stops the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from llm_flow.dataset.experts import ExpertTally, add_expert_tallies
from llm_flow.dataset.prompts import PromptItem
from llm_flow.dataset.reduce import Component, Tally, graph_tallies, row_key
from llm_flow.dataset.settings import Settings
from llm_flow.errors import LlmFlowError
from llm_flow.models.base import TransparentLlm
from llm_flow.routes.graph import build_graph


@dataclass(frozen=True)
class ComponentRow:
    """One component in one position class, summed over the prompt's graphs."""

    component: Component
    position_class: str
    routes: int  # graphs of this prompt where the component is on the route
    contribution: float  # summed parts over the prompt's graphs
    top_target: int  # the target position whose graph it contributed most to


@dataclass(frozen=True)
class PromptResult:
    prompt_id: str
    text: str
    text_hash: str
    status: Literal["ok", "error"]
    error: str | None = None
    tokens: list[str] = field(default_factory=list)
    n_targets: int = 0  # graphs built: 1 per prompt ("last") or one per token ("all")
    components: list[ComponentRow] = field(default_factory=list)
    experts: list[ExpertTally] = field(default_factory=list)  # mixtures of experts only


def analyse_prompt(model: TransparentLlm, item: PromptItem, settings: Settings) -> PromptResult:
    """Routes for the chosen positions of one prompt, reduced; an error result if anything fails."""
    try:
        run = model.run(item.text)
        targets = range(run.n_tokens) if settings.positions == "all" else [run.n_tokens - 1]
        sums: dict[tuple[Component, str], _Sum] = {}
        experts: dict[tuple[int, int], ExpertTally] = {}
        for target in targets:
            graph = build_graph(run, target, settings.threshold, settings.renormalize)
            for key, tally in graph_tallies(graph).items():
                sums.setdefault(key, _Sum()).add(tally, target)
            add_expert_tallies(experts, run, graph)
    except Exception as exc:  # a batch of thousands must survive any one prompt
        message = str(exc) if isinstance(exc, LlmFlowError) else f"{type(exc).__name__}: {exc}"
        return PromptResult(item.prompt_id, item.text, item.text_hash, "error", error=message)
    rows = [
        ComponentRow(component, position_class, s.routes, s.contribution, s.top_target)
        for (component, position_class), s in sorted(sums.items(), key=lambda kv: row_key(*kv[0]))
    ]
    return PromptResult(
        item.prompt_id, item.text, item.text_hash, "ok",
        tokens=list(run.str_tokens), n_targets=len(targets), components=rows,
        experts=[experts[key] for key in sorted(experts)],
    )  # fmt: skip


@dataclass
class _Sum:
    routes: int = 0
    contribution: float = 0.0
    top_target: int = -1
    top: float = -1.0

    def add(self, tally: Tally, target: int) -> None:
        self.routes += tally.on_route
        self.contribution += tally.contribution
        if tally.contribution > self.top:  # ties keep the earliest target
            self.top, self.top_target = tally.contribution, target
