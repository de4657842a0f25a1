"""The sidebar, drawn by the frame on every page: model, device and precision, prompt, and how
the route is thresholded."""

from __future__ import annotations

import streamlit as st
import torch

from llm_flow.config import Config
from llm_flow.models.base import TransparentLlm
from llm_flow.ui import keys
from llm_flow.ui.analysis import ask_again
from llm_flow.ui.permalink import DEFAULT_THRESHOLD, THRESHOLD_RANGE
from llm_flow.wording import block_kind


def init_state(config: Config) -> None:
    """First visit of a session: the default model, the first prompt, the default route settings."""
    defaults = {
        keys.MODEL_CHOICE: config.default_model,
        keys.CUSTOM_MODEL: "",
        keys.CUSTOM_MODEL_INPUT: "",
        keys.DEVICE: "cpu",
        keys.DTYPE: "float32",
        keys.PROMPTS: list(config.prompts) or ["The capital of France is"],
        keys.NEW_PROMPT: "",
        keys.ERROR: None,
        keys.FAILED: None,
        keys.NOTICES: [],
        keys.THRESHOLD: DEFAULT_THRESHOLD,
        keys.RENORMALIZE: True,
        keys.SELECTED: None,
        keys.LENS_NORMALIZE: True,
        keys.TEMPERATURE: 1.0,
        keys.NEURON_COUNT: 20,
        keys.COMPACT: False,
    }
    for key, value in defaults.items():
        st.session_state.setdefault(key, value)
    st.session_state.setdefault(keys.PROMPT_CHOICE, st.session_state[keys.PROMPTS][0])


def model_controls(config: Config, model: TransparentLlm | None) -> None:
    st.header("Model")
    names = list(config.models)
    chosen = config.models.get(st.session_state[keys.MODEL_CHOICE])
    st.selectbox(
        "Model", names, key=keys.MODEL_CHOICE, on_change=_choose_model,
        format_func=lambda n: f"{n} (default)" if n == config.default_model else n,
        help=f"Models from the config file. {chosen.description if chosen else ''}",
    )  # fmt: skip
    if config.allow_custom_models:
        with st.form("custom_model_form", border=False):
            st.text_input(
                "…or any other model", key=keys.CUSTOM_MODEL_INPUT,
                placeholder="hub id, local folder or .gguf file",
                help="A Hugging Face hub id (needs network), a local Hugging Face folder, or a .gguf file. "
                     "Leave empty and press Load to go back to the model chosen above.",
            )  # fmt: skip
            st.form_submit_button("Load model", on_click=_load_custom_model)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    left, right = st.columns(2)
    left.selectbox("Device", devices, key=keys.DEVICE, on_change=ask_again)
    dtypes = ["float32", "bfloat16", "float16"] if st.session_state[keys.DEVICE] == "cuda" else ["float32"]
    if st.session_state[keys.DTYPE] not in dtypes:
        st.session_state[keys.DTYPE] = "float32"
    right.selectbox("Precision", dtypes, key=keys.DTYPE, on_change=ask_again)
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
                f"| device / dtype | {info.device} / {info.dtype} |"
            )


def _choose_model() -> None:
    """Picking from the list means that model, even if another one was typed before."""
    st.session_state[keys.CUSTOM_MODEL] = ""
    st.session_state[keys.CUSTOM_MODEL_INPUT] = ""
    ask_again()


def _load_custom_model() -> None:
    st.session_state[keys.CUSTOM_MODEL] = st.session_state[keys.CUSTOM_MODEL_INPUT].strip()
    ask_again()


def prompt_controls(config: Config) -> None:
    st.header("Prompt")
    st.selectbox("Prompt", st.session_state[keys.PROMPTS], key=keys.PROMPT_CHOICE, on_change=ask_again)
    if config.demo_mode:
        st.caption("Demo mode: the prompts are fixed by the configuration.")
        return
    with st.form("new_prompt_form", border=False):
        st.text_area(
            "New prompt", key=keys.NEW_PROMPT, height=90,
            help=f"Up to {config.max_prompt_tokens} tokens. It joins the list above once analysed.",
        )  # fmt: skip
        st.form_submit_button("Analyse new prompt", on_click=_submit_prompt, type="primary")


def _submit_prompt() -> None:
    text = st.session_state[keys.NEW_PROMPT]
    if text.strip():
        st.session_state[keys.PENDING_PROMPT] = text
        ask_again()
    else:
        st.session_state[keys.ERROR] = "The new prompt is empty: type some text to analyse."


def route_controls() -> None:
    st.header("Route")
    st.slider(
        "Contribution threshold", *THRESHOLD_RANGE, step=0.005, key=keys.THRESHOLD, format="%.3f",
        help="Edges whose contribution is at or below this are dropped. Lower shows more of the flow.",
    )  # fmt: skip
    st.checkbox(
        "Renormalise after threshold", key=keys.RENORMALIZE,
        help="Rescale the surviving contributions of each node so that they sum to 1 again.",
    )  # fmt: skip
