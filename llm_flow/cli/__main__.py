"""``python -m llm_flow.cli``: the same as the ``llm-flow`` command."""

import sys

from llm_flow.cli import main

sys.exit(main())
