"""The Streamlit app: page setup, the config file, and navigation between the two pages."""

from __future__ import annotations

import argparse

import streamlit as st

from llm_flow.config import default_config_path, load_config
from llm_flow.errors import ConfigError
from llm_flow.ui.explorer import explorer_page
from llm_flow.ui.guide import guide_page


def config_path_from(argv: list[str]) -> str:
    """``streamlit run app.py -- --config FILE``; otherwise the default config."""
    parser = argparse.ArgumentParser(prog="app.py", add_help=False)
    parser.add_argument("--config", default=str(default_config_path()))
    args, _ = parser.parse_known_args(argv)
    return args.config


def main(argv: list[str]) -> None:
    st.set_page_config(page_title="llm-flow", page_icon=":material/account_tree:", layout="wide")
    try:
        config = load_config(config_path_from(argv))
    except ConfigError as exc:
        st.error(f"The configuration cannot be used. {exc}")
        st.stop()
    pages = [
        st.Page(lambda: explorer_page(config), title="Explorer", icon=":material/account_tree:", url_path="explorer", default=True),
        st.Page(guide_page, title="Guide", icon=":material/menu_book:", url_path="guide"),
    ]
    st.navigation(pages, position="top").run()
