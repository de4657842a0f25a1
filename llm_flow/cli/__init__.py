"""The ``llm-flow`` command: one subcommand per capability, one module per subcommand.

Subcommand modules import nothing heavy at module level (torch, transformers, TransformerLens,
plotly): argument parsing, ``--help`` and argument errors answer before any of that is loaded.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from llm_flow.errors import LlmFlowError

#: Subcommand modules under ``llm_flow.cli``, in the order ``--help`` lists them.
COMMANDS = ("routes", "attention", "attribute", "faithfulness", "generate", "inside", "dataset", "models", "limits")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from llm_flow.config import load_config

        config = load_config(args.config)
        return args.handler(args, config)
    except LlmFlowError as exc:
        print(f"llm-flow: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-flow", description="Information-flow routes inside transformer language models."
    )
    parser.add_argument("--config", help="config file (default: $LLM_FLOW_CONFIG or config/local.json)")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"llm_flow.cli.{name}").register(commands)
    return parser
