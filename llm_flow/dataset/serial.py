"""A `PromptResult` as one JSON string: how results travel back from Ray actors.

JSON keeps floats exactly (Python writes the shortest repr that reads back to the same double),
so a result that made the trip is equal to one computed in-process.
"""

from __future__ import annotations

import json

from llm_flow.dataset.analyse import ComponentRow, PromptResult
from llm_flow.dataset.experts import ExpertTally
from llm_flow.dataset.reduce import parse_component_id


def result_to_json(result: PromptResult) -> str:
    return json.dumps(
        {
            "prompt_id": result.prompt_id,
            "text": result.text,
            "text_hash": result.text_hash,
            "status": result.status,
            "error": result.error,
            "tokens": result.tokens,
            "n_targets": result.n_targets,
            "components": [
                [row.component.id, row.position_class, row.routes, row.contribution, row.top_target]
                for row in result.components
            ],
            "experts": [[e.layer, e.expert, e.selected, e.share, e.contribution] for e in result.experts],
        }
    )


def result_from_json(text: str) -> PromptResult:
    data = json.loads(text)
    rows = [
        ComponentRow(parse_component_id(component), position_class, routes, contribution, top_target)
        for component, position_class, routes, contribution, top_target in data.pop("components")
    ]
    experts = [ExpertTally(*row) for row in data.pop("experts")]
    return PromptResult(**data, components=rows, experts=experts)
