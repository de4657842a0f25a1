"""Every edge scorer by name: one class per scorer, options as its fields."""

from __future__ import annotations

from llm_flow.validation import build_named
from llm_flow.faithfulness.scorers import Alti, Eap, EapIg, Random, Scorer

#: name -> class, in the order the CLI and the app offer them.
SCORERS: dict[str, type[Scorer]] = {cls.name: cls for cls in (Alti, Eap, EapIg, Random)}


def get_scorer(name: str, **options: object) -> Scorer:
    """The scorer called `name` (``_`` and ``-`` alike) with its options, checked."""
    key = name.strip().lower().replace("_", "-") if isinstance(name, str) else name
    return build_named(SCORERS, key, name, options, "edge scorer")
