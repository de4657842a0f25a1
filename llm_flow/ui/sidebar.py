"""The sidebar, drawn by the frame on every page: model, device and precision, prompt, and how
the route is thresholded."""

from __future__ import annotations

import streamlit as st
import torch

from llm_flow.config import Config
from llm_flow.models.base import TransparentLlm
from llm_flow.models.memory import available_bytes, estimate_peak_bytes, fitting_tokens, format_bytes
from llm_flow.models.sizing import weights_bytes
from llm_flow.validation import THRESHOLD_RANGE
from llm_flow.models.run import Run
from llm_flow.models.seq2seq_run import Seq2SeqRun
from llm_flow.ui.analysis import ask_again
from llm_flow.ui.seq2seq import target_controls
from llm_flow.ui.state import bind, get_state, widget_key, widget_value
from llm_flow.wording import block_kind


def model_controls(config: Config, model: TransparentLlm | None) -> None:
    st.header("Model")
    names = list(config.models)
    source = get_state().source
    chosen = config.models.get(source.model_choice)
    st.selectbox(
        "Model", names, **bind("source.model_choice", then=_choose_model),
        format_func=lambda n: f"{n} (default)" if n == config.default_model else n,
        help=f"Models from the config file. {chosen.description if chosen else ''}",
    )  # fmt: skip
    if config.allow_custom_models:
        with st.form("custom_model_form", border=False):
            key = widget_key("source.custom_model_input")
            st.session_state.setdefault(key, source.custom_model_input)  # never over what is being typed
            st.text_input(
                "…or any other model", key=key,
                placeholder="hub id, local folder or .gguf file",
                help="A Hugging Face hub id (needs network), a local Hugging Face folder, or a .gguf file. "
                     "Leave empty and press Load to go back to the model chosen above.",
            )  # fmt: skip
            st.form_submit_button("Load model", on_click=_load_custom_model)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    left, right = st.columns(2)
    if source.device not in devices:
        source.device = "cpu"
    left.selectbox("Device", devices, **bind("source.device", then=ask_again))
    dtypes = ["float32", "bfloat16", "float16"] if source.device == "cuda" else ["float32"]
    if source.dtype not in dtypes:
        source.dtype = "float32"
    right.selectbox("Precision", dtypes, **bind("source.dtype", then=ask_again))
    if model is not None:
        with st.expander("Model info"):
            info = model.info
            st.markdown(
                f"**{info.name}** · {info.architecture}\n\n"
                f"| | |\n|---|---|\n| layers | {info.n_layers} |\n"
                f"| heads (KV heads) | {info.n_heads} ({info.n_kv_heads}) |\n"
                f"| d_model / d_head / d_mlp | {info.d_model} / {info.d_head} / {info.d_mlp} |\n"
                f"| vocabulary | {info.vocab_size:,} |\n| parameters | {info.n_params / 1e6:,.1f} M |\n"
                f"| context | {info.n_ctx:,} tokens |\n"
                f"| blocks | {block_kind(info)} |\n"
                f"| device / dtype | {info.device} / {info.dtype} |\n"
                + ("" if info.encoder_layers else _memory_rows(model))  # the estimates are a decoder's
            )


def _memory_rows(model: TransparentLlm) -> str:
    """Weights, a run at the prompt limit, and the longest prompt the free memory holds now."""
    info = model.info
    rows = f"| weights | {format_bytes(weights_bytes(info))} |\n"
    if model.max_prompt_tokens:
        limit = min(model.max_prompt_tokens, info.n_ctx)
        rows += f"| a run of {limit:,} tokens | {format_bytes(estimate_peak_bytes(info, limit))} at its peak |\n"
    fits = fitting_tokens(info, available_bytes(info.device))
    return rows + f"| longest prompt the free memory holds now | {fits:,} tokens |"


def _choose_model() -> None:
    """Picking from the list means that model, even if another one was typed before."""
    source = get_state().source
    source.custom_model = source.custom_model_input = ""
    st.session_state[widget_key("source.custom_model_input")] = ""
    ask_again()


def _load_custom_model() -> None:
    source = get_state().source
    source.custom_model_input = widget_value("source.custom_model_input") or ""
    source.custom_model = source.custom_model_input.strip()
    ask_again()


def prompt_controls(config: Config, run: Run | Seq2SeqRun | None = None) -> None:
    """The prompt; for an encoder–decoder on screen, the source and its target."""
    pair = isinstance(run, Seq2SeqRun)
    word = "source" if pair else "prompt"
    st.header(word.capitalize())
    source = get_state().source
    st.selectbox(word.capitalize(), source.prompts, **bind("source.prompt_choice", then=ask_again))
    if config.demo_mode:
        st.caption(f"Demo mode: the {word}s are fixed by the configuration.")
        if pair:
            target_controls(demo=True)
        return
    with st.form("new_prompt_form", border=False):
        key = widget_key("source.new_prompt")
        st.session_state.setdefault(key, source.new_prompt)  # never over what is being typed
        st.text_area(
            f"New {word}", key=key, height=90,
            help=f"Up to {config.max_prompt_tokens} tokens. It joins the list above once analysed.",
        )  # fmt: skip
        st.form_submit_button(f"Analyse new {word}", on_click=_submit_prompt, args=(word,), type="primary")
    if pair:
        target_controls()


def _submit_prompt(word: str = "prompt") -> None:
    source = get_state().source
    source.new_prompt = text = widget_value("source.new_prompt") or ""
    if text.strip():
        source.pending_prompt = text
        ask_again()
    else:
        what = "a text for the encoder to read" if word == "source" else "some text to analyse"
        source.error = f"The new {word} is empty: type {what}."


def route_controls() -> None:
    st.header("Route")
    st.slider(
        "Contribution threshold", *THRESHOLD_RANGE, step=0.001, format="%.3f", **bind("route.threshold"),
        help="Edges whose contribution is at or below this are dropped. Lower shows more of the flow.",
    )  # fmt: skip
    st.checkbox(
        "Renormalise after threshold", **bind("route.renormalize"),
        help="Rescale the surviving contributions of each node so that they sum to 1 again.",
    )  # fmt: skip
