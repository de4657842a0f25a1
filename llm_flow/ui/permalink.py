"""Permalinks: the URL's query parameters <-> what a session shows.

A link holds what a user needs to reopen the same view: the model, the prompt (a configured one
by its index, a typed one as text), the token to explain, the threshold, renormalisation and the
selected node or edge; the page is the URL's path. Reading a link never fails: each value that
cannot be honoured is replaced by the default and explained in a notice.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from llm_flow.config import Config
from llm_flow.errors import ArgumentError
from llm_flow.routes.nodes import parse_element

THRESHOLD_RANGE = (0.005, 0.2)
DEFAULT_THRESHOLD = 0.04

MODEL, PROMPT, TEXT, TOKEN, THRESHOLD, RENORMALIZE, SELECTED = "model", "prompt", "text", "token", "threshold", "renorm", "sel"
PARAMETERS = (MODEL, PROMPT, TEXT, TOKEN, THRESHOLD, RENORMALIZE, SELECTED)


@dataclass
class LinkState:
    """What a link asks for; None means "the default"."""

    model_choice: str | None = None  # a configured model name
    custom_model: str | None = None  # any other source (hub id, folder, .gguf)
    prompt_index: int | None = None  # into the configured prompts
    text: str | None = None  # a typed prompt
    token: int | None = None  # checked against the prompt once it has run
    threshold: float | None = None
    renormalize: bool | None = None
    selected: str | None = None  # checked against the route graph once it is built
    notices: list[str] = field(default_factory=list)


def read_link(params: Mapping[str, str], config: Config) -> LinkState:
    """Parse query parameters; bad values become notices and defaults, never errors."""
    link = LinkState()
    unknown = sorted(set(params) - set(PARAMETERS))
    if unknown:
        link.notices.append(f"The link's parameter {_names(unknown)} is not one llm-flow knows; it was ignored.")
    _read_model(params.get(MODEL), config, link)
    _read_prompt(params.get(PROMPT), params.get(TEXT), config, link)
    link.token = _read_int(params.get(TOKEN), "token", link)
    link.threshold = _read_threshold(params.get(THRESHOLD), link)
    link.renormalize = _read_bool(params.get(RENORMALIZE), link)
    if params.get(SELECTED):
        try:
            link.selected = str(parse_element(params[SELECTED]))
        except ArgumentError:
            link.notices.append(f"The link selects {params[SELECTED]!r}, which is not a node or edge name; nothing is selected.")
    return link


def write_link(
    *, model: str, prompt: str, configured_prompts: list[str], token: int, threshold: float,
    renormalize: bool, selected: str | None,
) -> dict[str, str]:
    """The query parameters that reopen this view."""
    params = {MODEL: model}
    if prompt in configured_prompts:
        params[PROMPT] = str(configured_prompts.index(prompt))
    else:
        params[TEXT] = prompt
    params[TOKEN] = str(token)
    params[THRESHOLD] = f"{threshold:g}"
    params[RENORMALIZE] = "1" if renormalize else "0"
    if selected:
        params[SELECTED] = selected
    return params


def _read_model(value: str | None, config: Config, link: LinkState) -> None:
    if not value:
        return
    if value in config.models:
        link.model_choice = value
    elif config.allow_custom_models:
        link.custom_model = value
    else:
        link.notices.append(
            f"The link asks for model {value!r}, which this app does not offer; showing {config.default_model!r}."
        )


def _read_prompt(index: str | None, text: str | None, config: Config, link: LinkState) -> None:
    if text:
        if config.demo_mode:
            link.notices.append("The link carries its own prompt, but this app only analyses its configured prompts.")
        else:
            link.text = text
        return
    if index is None:
        return
    number = _read_int(index, "prompt", link)
    if number is None:
        return
    if 0 <= number < len(config.prompts):
        link.prompt_index = number
    else:
        link.notices.append(
            f"The link asks for prompt {number}, but {len(config.prompts)} prompts are configured "
            f"(0–{len(config.prompts) - 1}); showing the first."
        )


def _read_int(value: str | None, what: str, link: LinkState) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        link.notices.append(f"The link's {what} {value!r} is not a whole number; the default is used.")
        return None


def _read_threshold(value: str | None, link: LinkState) -> float | None:
    if value is None:
        return None
    low, high = THRESHOLD_RANGE
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not low <= number <= high:  # also refuses nan
        link.notices.append(
            f"The link's threshold {value!r} is not a number from {low} to {high}; using {DEFAULT_THRESHOLD}."
        )
        return None
    return round(number, 3)


def _read_bool(value: str | None, link: LinkState) -> bool | None:
    if value is None:
        return None
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    link.notices.append(f"The link's renorm {value!r} should be 1 or 0; renormalisation stays on.")
    return None


def _names(names: list[str]) -> str:
    return ", ".join(repr(n) for n in names) if len(names) > 1 else repr(names[0])
