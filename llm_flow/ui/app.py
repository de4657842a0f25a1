"""The Streamlit app: page setup, the config file, the frame, and navigation between pages.

The first thing a visitor sees is drawn before PyTorch and the model libraries are imported
(several seconds on a cold start), so the page is never blank while the app gets ready.
"""

from __future__ import annotations

import argparse

import streamlit as st

from llm_flow.config import default_config_path, load_config
from llm_flow.errors import ConfigError


def config_path_from(argv: list[str]) -> str:
    """``streamlit run app.py -- --config FILE``; otherwise the default config."""
    parser = argparse.ArgumentParser(prog="app.py", add_help=False)
    parser.add_argument("--config", default=str(default_config_path()))
    args, _ = parser.parse_known_args(argv)
    return args.config


def main(argv: list[str]) -> None:
    st.set_page_config(page_title="llm-flow", page_icon=":material/account_tree:", layout="wide")
    starting = st.empty()
    starting.caption("Starting llm-flow…")
    try:
        config = load_config(config_path_from(argv))
    except ConfigError as exc:
        starting.empty()
        st.error(f"The configuration cannot be used. {exc}")
        st.stop()
    from llm_flow.ui.frame import page_run
    from llm_flow.ui.pages import pages
    from llm_flow.ui.process import freeze_imports

    freeze_imports()
    navigation = st.navigation(list(pages().values()), position="top")
    starting.empty()
    with page_run(config, navigation.url_path):
        navigation.run()
