"""Checks of user-supplied settings that need no model: kept free of torch so that the CLI and
the app can refuse a bad value at once, before anything slow is loaded."""

from __future__ import annotations

import math

from llm_flow.errors import ArgumentError, PromptError


#: The contribution thresholds llm-flow accepts, everywhere (library, CLI, app, links). Below
#: 0.001 a route keeps nearly every part (millions of edges at long prompts); above 0.5 at most
#: one part of a representation can pass, so the route says nothing more.
THRESHOLD_RANGE = (0.001, 0.5)
DEFAULT_THRESHOLD = 0.04


def check_threshold(threshold: object) -> float:
    """A contribution threshold within :data:`THRESHOLD_RANGE`."""
    low, high = THRESHOLD_RANGE
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or math.isnan(threshold) \
            or not low <= threshold <= high:
        raise ArgumentError(threshold_message(threshold))
    return float(threshold)


def threshold_message(value: object) -> str:
    """The one sentence every part of llm-flow uses for a threshold out of range."""
    low, high = THRESHOLD_RANGE
    return f"the threshold must be a number from {low:g} to {high:g} (got {value!r}); the default is {DEFAULT_THRESHOLD:g}"


def check_prompt_text(prompt: object) -> str:
    """Refuse an empty prompt before any slow work (model load, tokenisation)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise PromptError("the prompt is empty: type some text to analyse")
    return prompt


#: Attention-view settings (see llm_flow.views.attention), here so they are checked before torch loads.
ATTENTION_WEIGHTINGS = ("attention", "norm", "alti")
HEAD_AGGREGATIONS = ("mean", "max")
# Sentence pairs (BertViz's sentence A / B): which query segment -> which source segment to keep.
# A causal model never lets A attend to B, so "A->B" is always empty; it is offered for symmetry.
#: The three attentions of an encoder–decoder, in BertViz's order.
SEQ2SEQ_STACKS = ("encoder", "decoder", "cross")
PAIR_PARTS = ("all", "A->A", "B->A", "B->B", "A->B")


def check_weighting(weighting: object) -> str:
    if weighting not in ATTENTION_WEIGHTINGS:
        raise ArgumentError(f"unknown weighting {weighting!r}: use one of {', '.join(ATTENTION_WEIGHTINGS)}")
    return str(weighting)


def check_aggregation(aggregate: object) -> str | None:
    """None (heads one by one), "mean" or "max"."""
    if aggregate is not None and aggregate not in HEAD_AGGREGATIONS:
        raise ArgumentError(f"unknown head aggregation {aggregate!r}: use {' or '.join(HEAD_AGGREGATIONS)}")
    return aggregate


def check_pair_part(part: object, split: int | None) -> str:
    if part not in PAIR_PARTS:
        raise ArgumentError(f"unknown sentence-pair part {part!r}: use one of {', '.join(PAIR_PARTS)}")
    if part != "all" and split is None:
        raise ArgumentError(f"part {part!r} needs a split point (the first token of sentence B)")
    return str(part)


def check_count(value: int | None, what: str) -> int | None:
    """A count that may be left out (None) but, when given, is at least 1: top-k, window size."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ArgumentError(f"{what} must be at least 1, got {value!r}")
    return value


def check_sampling(temperature: object, top_k: object, top_p: object) -> tuple[float, int, float]:
    """Sampling settings: temperature >= 0 (0 is greedy), top-k >= 0 (0 is off), top-p in [0, 1]
    (1 is off)."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not math.isfinite(temperature) or temperature < 0:
        raise ArgumentError(f"temperature must be a number >= 0, 0 meaning greedy (got {temperature!r})")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ArgumentError(f"top-k must be a whole number >= 0, 0 meaning off (got {top_k!r})")
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 <= top_p <= 1:
        raise ArgumentError(f"top-p must be a number between 0 and 1, 1 meaning off (got {top_p!r})")
    return float(temperature), top_k, float(top_p)


def check_seed(seed: object) -> int | None:
    """A random seed: a whole number >= 0, or None for a fresh one."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ArgumentError(f"the seed must be a whole number >= 0 (got {seed!r})")
    return seed


def check_positive(name: str, value: object, low: int = 1, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"{low}..{high}" if high is not None else f"at least {low}"
        raise ArgumentError(f"{name} must be an integer {bound} (got {value!r})")


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ArgumentError(f"{name} must be one of {', '.join(choices)} (got {value!r})")


def check_flag(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ArgumentError(f"{name} must be true or false (got {value!r})")


def build_named(classes: dict, key: object, name: object, options: dict, what: str):
    """``classes[key](**options)`` for a registry of option-carrying classes (attribution
    methods, edge scorers), or an error that lists the names or the options there are."""
    if key not in classes:
        raise ArgumentError(f"unknown {what} {name!r}: use one of {', '.join(classes)}")
    cls = classes[key]
    unknown = sorted(set(options) - set(cls.options()))
    if unknown:
        valid = ", ".join(cls.options()) or "none"
        raise ArgumentError(f"{key} has no option {unknown[0]!r} (its options: {valid})")
    return cls(**options)


#: Tokens the Inside page's matrices show around the chosen one, by default.
INSIDE_WINDOW = 16

#: Every stage the Inside page can show (see llm_flow.views.inside), in the order a model computes
#: them; a model has a subset (no "rotary" without rotary embeddings, no post-norms but Gemma's, no
#: "residual_attn" in a parallel block, whose attention and MLP are added together in "block_out").
INSIDE_STAGES = (
    "tokens", "embedding", "norm_attn", "qkv", "rotary", "attention", "heads", "post_norm_attn",
    "residual_attn", "norm_mlp", "mlp", "post_norm_mlp", "block_out", "final_norm", "unembed", "sampling",
)  # fmt: skip
