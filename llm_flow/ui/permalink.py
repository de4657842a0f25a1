"""Permalinks: the URL's query parameters <-> a session's :class:`SessionState`, both ways, as
pure functions.

A link reopens everything on screen: the model, the prompt (a configured one by its index, a
typed one as text), the token to explain, the selected node or edge, and every setting a page
keeps (each field of the state marked ``linked``); the page is the URL's path. Only values that
differ from their default are written, so links stay short. Reading a link never fails: each
value that cannot be honoured is replaced by the default and explained in a notice. Values that
depend on the model or prompt (a layer, a token) are checked once those are known.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Mapping
from dataclasses import fields
from functools import cache
from typing import Any

from llm_flow.validation import threshold_message
from llm_flow.config import Config
from llm_flow.errors import ArgumentError
from llm_flow.routes.nodes import parse_element
from llm_flow.ui.state import SECTIONS, SessionState

MODEL, PROMPT, TEXT, TOKEN, SELECTED = "model", "prompt", "text", "token", "sel"
TARGET, TARGET_IDS = "target", "target_ids"  # an encoder–decoder's target: typed text, or the ids it wrote
_FRAME_PARAMETERS = (MODEL, PROMPT, TEXT, TOKEN, SELECTED, TARGET, TARGET_IDS)
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def link_from_state(state: SessionState, config: Config) -> dict[str, str]:
    """The query parameters that reopen what `state` shows (nothing before a first analysis)."""
    source = state.source
    if source.active is None:
        return {}
    params = {MODEL: source.active.model.source}
    if source.active.prompt in config.prompts:
        params[PROMPT] = str(list(config.prompts).index(source.active.prompt))
    else:
        params[TEXT] = source.active.prompt
    target = source.active.target
    if isinstance(target, tuple):
        params[TARGET_IDS] = _write(target)
    elif target:
        params[TARGET] = target
    if state.route.position is not None:
        params[TOKEN] = str(state.route.position)
    if state.route.selected:
        params[SELECTED] = state.route.selected
    for section, name, spec in linked_fields():
        value = getattr(getattr(state, section), name)
        if value != spec.default:
            params[spec.param] = _write(value)
    return params


def state_from_link(params: Mapping[str, str], config: Config) -> tuple[SessionState, list[str]]:
    """A new session's state from its first URL, and the notices for what was ignored."""
    state = SessionState.initial(config)
    notices: list[str] = []
    known = set(_FRAME_PARAMETERS) | {spec.param for *_, spec in linked_fields()}
    unknown = sorted(set(params) - known)
    if unknown:
        notices.append(f"The link's parameter {_names(unknown)} is not one llm-flow knows; it was ignored.")
    _read_model(params.get(MODEL), config, state, notices)
    _read_prompt(params.get(PROMPT), params.get(TEXT), config, state, notices)
    _read_target(params.get(TARGET), params.get(TARGET_IDS), config, state, notices)
    _read_position(params.get(TOKEN), state, notices)
    if params.get(SELECTED):
        try:
            state.source.pending_selected = str(parse_element(params[SELECTED]))
        except ArgumentError:
            notices.append(f"The link selects {params[SELECTED]!r}, which is not a node or edge name; nothing is selected.")
    for section, name, spec in linked_fields():
        if spec.param in params:
            value = _read(params[spec.param], spec, notices)
            if value is not _IGNORED:
                setattr(getattr(state, section), name, value)
    return state, notices


# --- the frame's own parameters -----------------------------------------------------------------


def _read_model(value: str | None, config: Config, state: SessionState, notices: list[str]) -> None:
    if not value:
        return
    if value in config.models:
        state.source.model_choice = value
    elif config.allow_custom_models:
        state.source.custom_model = state.source.custom_model_input = value
    else:
        notices.append(f"The link asks for model {value!r}, which this app does not offer; showing {config.default_model!r}.")


def _read_prompt(index: str | None, text: str | None, config: Config, state: SessionState, notices: list[str]) -> None:
    if text:
        if config.demo_mode:
            notices.append("The link carries its own prompt, but this app only analyses its configured prompts.")
        else:
            state.source.pending_prompt = text
        return
    if index is None:
        return
    number = _whole(index)
    if number is not None and 0 <= number < len(config.prompts):
        state.source.prompt_choice = config.prompts[number]
    elif number is None:
        notices.append(f"The link's prompt {index!r} is not a whole number; showing the first prompt.")
    else:
        notices.append(
            f"The link asks for prompt {number}, but {len(config.prompts)} prompts are configured "
            f"(0–{len(config.prompts) - 1}); showing the first."
        )


def _read_target(text: str | None, ids: str | None, config: Config, state: SessionState, notices: list[str]) -> None:
    """An encoder–decoder's target: the ids it wrote win over a text (both cannot be meant)."""
    if ids:
        parsed = _parse(ids, tuple)
        if parsed is None or not parsed or any(i < 0 for i in parsed):
            notices.append(f"The link's target_ids {ids!r} is not a list of token ids; the model writes its own target.")
        else:
            state.source.target = parsed
        return
    if not text:
        return
    if config.demo_mode:
        notices.append("The link carries its own target, but this app only analyses the targets its models write.")
        return
    state.source.target = state.source.target_input = text


def _read_position(value: str | None, state: SessionState, notices: list[str]) -> None:
    """Token positions are counted from 0; whether one exists is checked once the prompt has run."""
    if value is None:
        return
    number = _whole(value)
    if number is None or number < 0:
        notices.append(f"The link's token {value!r} is not a token position (0, 1, 2 …); explaining the last token.")
        return
    state.source.pending_position = number


# --- page settings: one codec for every linked field --------------------------------------------


class Spec(typing.NamedTuple):
    param: str
    kind: type  # bool, int, float, str or tuple (of ints)
    optional: bool
    default: Any
    choices: tuple | None
    low: float | None
    high: float | None


_IGNORED = object()


@cache
def linked_fields() -> tuple[tuple[str, str, Spec], ...]:
    """(section, field, spec) for every linked field of the state, in declaration order."""
    found = []
    for section in SECTIONS:
        cls = SessionState.__dataclass_fields__[section].default_factory
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            if "param" not in f.metadata:
                continue
            kind, optional = _kind(hints[f.name])
            meta = f.metadata
            found.append((section, f.name, Spec(meta["param"], kind, optional, f.default, meta["choices"],
                                                 meta["low"], meta["high"])))  # fmt: skip
    return tuple(found)


def _kind(hint: Any) -> tuple[type, bool]:
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        (inner,) = [a for a in args if a is not type(None)]
        return _kind(inner)[0], True
    origin = typing.get_origin(hint)
    return (tuple if origin is tuple else hint), False


def _write(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _read(text: str, spec: Spec, notices: list[str]) -> Any:
    """The value a link's text stands for, or _IGNORED with a notice saying why."""
    if spec.optional and text == "":
        return None
    value = _parse(text, spec.kind)
    problem = None
    if value is None:
        problem = _expected(spec)
    elif spec.choices is not None and value not in spec.choices:
        problem = "one of " + ", ".join(repr(c) for c in spec.choices if c != "")
    elif spec.kind in (int, float) and not _within(value, spec):
        problem = _expected(spec)
    elif spec.kind is tuple and any(v < 0 for v in value):
        problem = "a list of numbers from 0"
    if problem is None:
        return value
    if spec.param == "threshold":
        notices.append(f"In the link, {threshold_message(text)}.")
    else:
        default = "none" if spec.default is None else repr(spec.default)
        notices.append(f"The link's {spec.param} {text!r} is not {problem}; the default ({default}) is used.")
    return _IGNORED


def _parse(text: str, kind: type) -> Any:
    """`text` as a value of `kind`, or None when it is not one."""
    if kind is bool:
        lowered = text.lower()
        return True if lowered in _TRUE else False if lowered in _FALSE else None
    if kind is int:
        return _whole(text)
    if kind is float:
        try:
            number = float(text)
        except ValueError:
            return None
        return None if math.isnan(number) else number
    if kind is tuple:
        parts = [_whole(part) for part in text.split(",") if part.strip()]
        return None if None in parts else tuple(parts)
    return text


def _within(value: float, spec: Spec) -> bool:
    return (spec.low is None or value >= spec.low) and (spec.high is None or value <= spec.high)


def _expected(spec: Spec) -> str:
    what = {bool: "1 or 0", int: "a whole number", float: "a number", tuple: "a list of whole numbers"}.get(spec.kind, "text")
    if spec.low is not None and spec.high is not None:
        return f"{what} from {spec.low:g} to {spec.high:g}"
    if spec.low is not None:
        return f"{what} from {spec.low:g}"
    return what


def _whole(text: str) -> int | None:
    try:
        return int(text.strip())
    except ValueError:
        return None


def _names(names: list[str]) -> str:
    return ", ".join(repr(n) for n in names) if len(names) > 1 else repr(names[0])

