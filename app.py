"""`streamlit run app.py [-- --config FILE]`: the llm-flow explorer."""

import sys

from llm_flow.ui.app import main

main(sys.argv[1:])
