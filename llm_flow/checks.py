"""Checks of user-supplied settings that need no model: kept free of torch so that the CLI and
the app can refuse a bad value at once, before anything slow is loaded."""

from __future__ import annotations

import math

from llm_flow.errors import ArgumentError, PromptError


def check_threshold(threshold: object) -> float:
    """A contribution threshold: a number in [0, 1]."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or math.isnan(threshold) \
            or not 0 <= threshold <= 1:
        raise ArgumentError(f"threshold must be a number between 0 and 1 (got {threshold!r})")
    return float(threshold)


def check_prompt_text(prompt: object) -> str:
    """Refuse an empty prompt before any slow work (model load, tokenisation)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise PromptError("the prompt is empty: type some text to analyse")
    return prompt
