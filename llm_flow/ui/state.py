"""Everything a session has chosen, in one typed object, and the binding of widgets to it.

Streamlit drops a widget's value from ``st.session_state`` on any run that does not draw the
widget (another page, or a fragment rerun followed by a page switch), so a widget key is never
where a setting lives. The one copy is :class:`SessionState`, kept under a key no widget uses;
a widget drawn with :func:`bind` takes its value from the state before it is drawn and writes
the user's change back in its ``on_change`` callback (which Streamlit runs for full and fragment
reruns alike). Links (:mod:`llm_flow.ui.permalink`) are a pure function of this object both
ways: every field marked with :func:`linked` travels in the URL.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import streamlit as st

from llm_flow.config import Config
from llm_flow.validation import (
    ATTENTION_WEIGHTINGS, DEFAULT_THRESHOLD, INSIDE_STAGES, PAIR_PARTS, SEQ2SEQ_STACKS, THRESHOLD_RANGE,
)  # fmt: skip

STATE_KEY = "llm_flow_state"  # the only session_state key llm-flow's settings live under
DRAWN_BY_KEY = "llm_flow_drawn_by"  # the page and model whose widget drew each bound key last (`bind`)
PAGE_KEY = "llm_flow_page"  # the page this run draws (`drawing_page`); a fragment rerun keeps its page's
WIDGET_PREFIX = "w:"  # widget keys: "w:" + the field's path, e.g. "w:route.threshold"


def linked(param: str, default: Any, *, choices: tuple | None = None, low: float | None = None,
           high: float | None = None) -> Any:  # fmt: skip
    """A field that travels in links as query parameter `param` (written only when it differs
    from `default`). `choices` or `low`..`high` are what a link may ask for; anything else is
    reported and ignored. Ranges that depend on the model or prompt are checked by the page."""
    meta = {"param": param, "choices": choices, "low": low, "high": high}
    return field(default=default, metadata=meta)  # dataclasses refuse a mutable default themselves


# --- what is analysed ----------------------------------------------------------------------------


@dataclass
class SourceState:
    """The model and prompt the session asks for, and the request in flight. The model and the
    prompt travel in links through their own parameters (see permalink)."""

    model_choice: str = ""  # a configured model name
    custom_model: str = ""  # hub id, folder or .gguf (overrides the choice); set on "Load model"
    custom_model_input: str = ""  # what the text box holds
    device: str = "cpu"
    dtype: str = "float32"
    prompts: tuple[str, ...] = ()  # the configured prompts plus the ones analysed in this session
    prompt_choice: str = ""  # an encoder–decoder's source
    new_prompt: str = ""  # the "New prompt" box ("New source")
    target: str | tuple[int, ...] = ""  # an encoder–decoder's target: text, ids it wrote, or "" (it writes one greedily)
    target_input: str = ""  # the "Target" box
    pending_prompt: str | None = None  # a typed prompt waiting to be analysed (consumed by one run)
    awaited_prompt: str | None = None  # that prompt while its analysis runs (kept across page switches)
    watched: Any = None  # the Request whose analysis this session has watched run (see analysis)
    pending_position: int | None = None  # token to explain once the pending analysis is accepted
    pending_selected: str | None = None  # element to select then
    active: Any = None  # analysis.Request on screen
    failed: Any = None  # the refused Request: not retried until the user asks again
    error: str | None = None  # why the last request was refused
    notices: tuple[str, ...] = ()  # what a link asked for that could not be honoured


@dataclass
class RouteState:
    """What every page explains: the token, and how its route is thresholded."""

    position: int | None = None  # the explained token's position; None: the last one
    threshold: float = linked("threshold", DEFAULT_THRESHOLD, low=THRESHOLD_RANGE[0], high=THRESHOLD_RANGE[1])
    renormalize: bool = linked("renorm", True)
    selected: str | None = None  # node or edge id in the Explorer's panel (linked as "sel")


# --- pages -----------------------------------------------------------------------------------------


@dataclass
class ExplorerState:
    compact: bool | None = linked("compact", None)  # only the route's token columns; None: by length
    lens_normalize: bool = linked("lens_norm", True)
    temperature: float = linked("temp", 1.0, low=0.05, high=5.0)
    head: int | None = linked("head", None)  # the head chosen in an attention edge's panel
    neuron: int | None = linked("neuron", None)  # the neuron chosen in an FFN panel
    expert: int | None = linked("expert", None, low=0)  # a mixture of experts: whose neurons (None: all)
    neuron_count: int = linked("neurons", 20, low=5, high=100)
    find: str = linked("find", "")  # the "Find a node" box
    focus: str | None = linked("focus", None)  # the found node the graph is centred on


@dataclass
class CheckState:
    """The Explorer's checks on the model. Results are shared through the Run's store; which of
    them this session asked to see is the session's own."""

    draws: int = linked("check_draws", 20, low=1, high=200)
    seed: int = linked("check_seed", 0, low=0, high=2**31 - 1)
    shown: bool = linked("check", False)  # the route check of the route on screen is open
    curve: bool = linked("curve", False)  # and its threshold curve
    asked: tuple = ()  # the (route, draws, seed) settings this session checked: shown when they return
    pending: str | None = None  # "check" or "curve": clicked, to be computed by this run
    curves: tuple = ()  # the routes whose threshold curve this session asked for
    edge: str | None = None  # the edge whose removal was asked for
    cancelled: str | None = None  # what the last Cancel stopped (said once)


@dataclass
class FaithState:
    """The Explorer's faithfulness check of the route on screen (MIB's protocol)."""

    ablation: str = linked("ablation", "zero", choices=("zero", "mean", "patching"))
    counterfactual: str = linked("cf", "")  # the prompt patching reads (same token count)
    answer: str = linked("answer", "")  # "": the model's top prediction at the token
    foil: str = linked("foil", "")  # "": the counterfactual's top prediction, else the second one
    metric: str = linked("metric", "logit_diff", choices=("logit_diff", "probability"))
    scorers: str = linked("scorers", "alti,random")  # budget curves of these (comma-separated)
    target: float = linked("f_target", 0.8, low=0.05, high=1.0)  # "Smallest route with f ≥ target"
    shown: bool = linked("faith", False)  # the measurement of the route on screen is open
    score_by: str = linked("score_by", "alti", choices=("alti", "eap-ig"))  # which scorer draws the graph
    compare: bool = linked("compare", False)  # the counterfactual's route beside this one
    asked: tuple = ()  # settings this session measured: shown again when they return
    pending: bool = False  # "Measure" was clicked
    cancelled: bool = False


ATTENTION_VIEWS = ("head", "model", "neuron")
HEAD_AGGREGATES = {"": "each head", "mean": "mean of heads", "max": "max of heads"}  # "Heads as": value -> label


@dataclass
class AttentionState:
    view: str = linked("att_view", "head", choices=ATTENTION_VIEWS)
    weighting: str = linked("att_weight", "attention", choices=ATTENTION_WEIGHTINGS)
    layer: int | None = linked("att_layer", None)  # None: the middle layer
    head: int = linked("att_head", 0, low=0)
    heads: tuple[int, ...] | None = linked("att_heads", None)  # None: all
    layers: tuple[int, ...] | None = linked("att_layers", None)  # None: all
    window: int | None = linked("att_window", None, low=1)  # None: the view's default
    top_k: int = linked("att_top_k", 0, low=0)
    aggregate: str = linked("att_aggregate", "", choices=tuple(HEAD_AGGREGATES))
    split: int = linked("att_split", 0, low=0)
    part: str = linked("att_part", "all", choices=PAIR_PARTS)
    focus: int | None = linked("att_focus", None, low=0)  # head view: the token whose lines alone show
    stack: str = linked("att_stack", "encoder", choices=SEQ2SEQ_STACKS)  # an encoder–decoder's tab


@dataclass
class AttributionState:
    source: str = linked("attr_source", "Generate", choices=("Generate", "Type"))
    generate: int = linked("attr_generate", 3, low=1, high=64)
    continuation: str = linked("attr_continuation", "")
    method: str = linked("attr_method", "integrated_gradients")  # checked against the registry
    foil: str = linked("attr_foil", "")
    function: str = linked("attr_function", "probability", choices=("probability", "logit"))
    words: bool = linked("attr_words", False)
    step: int = linked("attr_step", 0, low=0)
    ig_steps: int = linked("attr_ig_steps", 32, low=2, high=256)
    baseline: str = linked("attr_baseline", "zeros")  # checked against the method's baselines
    samples: int = linked("attr_samples", 8, low=1, high=128)
    window: int = linked("attr_window", 1, low=1, high=512)
    layer: int | None = linked("attr_layer", None, low=0)  # None: the last layer
    heads: str = linked("attr_heads", "mean", choices=("mean", "max"))
    confirmed: Any = None  # the long request the user chose to compute
    cancelled: Any = None  # the request the user cancelled: not restarted on its own
    shown: Any = None  # the request whose result is on screen (kept there while another computes)


@dataclass
class PlaygroundState:
    temperature: float = linked("play_temp", 1.0, low=0.0, high=2.0)
    top_k: int = linked("play_top_k", 0, low=0)
    top_p: float = linked("play_top_p", 1.0, low=0.0, high=1.0)
    seed: int = linked("play_seed", 0, low=0, high=2**31 - 1)
    bars: int = linked("play_bars", 15, low=5, high=40)
    count: int = linked("play_count", 5, low=1, high=64)
    explain: str = linked("play_explain", "next", choices=("next", "top"))
    generated: tuple[int, ...] = linked("play_ids", ())  # token ids generated at the end of the prompt
    history: list = field(default_factory=list)  # the Step/Generate entries, for Undo
    target_tokens: int = linked("play_target_tokens", 40, low=1, high=256)  # an encoder–decoder: most target tokens to write
    written: Any = None  # an encoder–decoder: the last TargetGeneration, shown while it is the active target
    random: Any = None  # (seed, torch.Generator): the session's sampling source
    message: str | None = None


@dataclass
class InsideState:
    layer: int | None = linked("in_layer", None, low=0)  # None: the middle layer
    head: int = linked("in_head", 0, low=0)
    stage: str | None = linked("in_stage", None, choices=INSIDE_STAGES)  # the expanded stage; None: overview only
    step: int = linked("in_step", 0, low=0)  # the guided tour: 0 is the overview, k the model's k-th stage


@dataclass
class DatasetState:
    folder: str = linked("data_folder", "")
    compare: str = linked("data_compare", "")
    metric: str = linked("data_metric", "frequency", choices=("frequency", "mean_contribution"))
    position_class: str = linked("data_class", "all")
    view: str = linked("data_view", "first folder")
    component: str | None = linked("data_component", None)
    expert_metric: str = linked(
        "data_expert_metric", "selection_rate", choices=("selection_rate", "mean_share", "mean_contribution")
    )  # mixtures of experts: what the experts' heatmap shows
    prompt: str | None = None  # the prompt chosen in the component's list (first folder)
    prompt_list: tuple | None = None  # (folder, component, position class) that list was for
    prompt_compare: str | None = None  # and in the second folder's list
    prompt_compare_list: tuple | None = None


@dataclass
class SessionState:
    source: SourceState = field(default_factory=SourceState)
    route: RouteState = field(default_factory=RouteState)
    explorer: ExplorerState = field(default_factory=ExplorerState)
    check: CheckState = field(default_factory=CheckState)
    faith: FaithState = field(default_factory=FaithState)
    attention: AttentionState = field(default_factory=AttentionState)
    attribution: AttributionState = field(default_factory=AttributionState)
    playground: PlaygroundState = field(default_factory=PlaygroundState)
    inside: InsideState = field(default_factory=InsideState)
    dataset: DatasetState = field(default_factory=DatasetState)
    link_read: bool = False  # the session's first URL has been applied

    @classmethod
    def initial(cls, config: Config) -> SessionState:
        """A new session: the default model, the first configured prompt, default settings."""
        prompts = tuple(config.prompts) or ("The capital of France is",)
        source = SourceState(model_choice=config.default_model, prompts=prompts, prompt_choice=prompts[0])
        return cls(source=source)


SECTIONS = tuple(f.name for f in fields(SessionState) if f.name != "link_read")


def init_state(config: Config) -> SessionState:
    """This session's state; a new session's is made from the config (by the frame, which runs
    before anything else reads the state)."""
    if STATE_KEY not in st.session_state:
        st.session_state[STATE_KEY] = SessionState.initial(config)
    return st.session_state[STATE_KEY]


def get_state() -> SessionState:
    """This session's state (made by the frame's :func:`init_state`)."""
    return st.session_state[STATE_KEY]


def resolve(state: SessionState, path: str) -> tuple[object, str]:
    """``"route.threshold"`` -> (state.route, "threshold")."""
    section, name = path.split(".")
    owner = getattr(state, section)
    getattr(owner, name)  # a misspelt setting fails here, not when the widget first changes
    return owner, name


def drawing_page(page: str) -> None:
    """Record the page this script run draws, for :func:`bind`: widgets on different pages are
    different widgets to Streamlit even under one key."""
    st.session_state[PAGE_KEY] = page


def _drawer(state: SessionState) -> tuple[str, Any]:
    """Who draws a bound widget in this run: the page and the model on screen. Streamlit tells
    widgets apart by key, page and some of their arguments (a slider's range, say, which follows
    the model's size); a decoder's and an encoder–decoder's variant of a page draw different
    widgets. A widget is new to Streamlit at most when this pair changes."""
    active = state.source.active
    return st.session_state.get(PAGE_KEY, ""), active.model if active is not None else None


def bind(path: str, *, to_widget: Callable[[Any], Any] | None = None, from_widget: Callable[[Any], Any] | None = None,
         then: Callable[[], None] | None = None) -> dict[str, Any]:  # fmt: skip
    """Keyword arguments that bind a widget to the setting at `path`: ``st.slider(..., **bind(
    "route.threshold"))``. The widget shows the state's value (converted by `to_widget`) and its
    changes are written back (converted by `from_widget`), then `then` runs. For widgets in a
    form, use :func:`widget_key` and copy the value in the submit button's callback instead.

    A widget Streamlit sees for the first time under a key that another widget filled (another
    page's, or the same page's for another model) is drawn at its default although the key
    holds the setting's value, so when the drawer (:func:`_drawer`) changes the value is written
    again."""
    state = get_state()
    owner, name = resolve(state, path)
    key = widget_key(path)
    value = getattr(owner, name)
    value = to_widget(value) if to_widget else value
    drawer = _drawer(state)
    drawn_by = st.session_state.setdefault(DRAWN_BY_KEY, {})
    # Otherwise only a value the widget does not hold is written: a write is sent to the browser
    # and replaces what the user may be changing right now (a slider moved key by key).
    if key not in st.session_state or st.session_state[key] != value or drawn_by.get(key, drawer) != drawer:
        st.session_state[key] = value
    drawn_by[key] = drawer

    def changed() -> None:
        target, attribute = resolve(get_state(), path)
        value = st.session_state[key]
        setattr(target, attribute, from_widget(value) if from_widget else value)
        if then is not None:
            then()

    return {"key": key, "on_change": changed}


def widget_key(path: str, *, fill: bool = False) -> str:
    """The widget key of a setting; with `fill`, the widget is given the setting's value first."""
    key = WIDGET_PREFIX + path
    if fill:
        owner, name = resolve(get_state(), path)
        st.session_state[key] = getattr(owner, name)
    return key


def widget_value(path: str) -> Any:
    """What the widget of `path` holds now (for a form's submit callback)."""
    return st.session_state.get(WIDGET_PREFIX + path)
