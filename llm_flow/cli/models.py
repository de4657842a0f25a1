"""``llm-flow models``: the models a config file offers."""

from __future__ import annotations

import argparse

from llm_flow.config import Config


def register(commands) -> None:
    parser = commands.add_parser("models", help="list the configured models")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, config: Config) -> int:
    print(f"Models in {config.path} (default: {config.default_model}):")
    for name, entry in config.models.items():
        source = entry.source if isinstance(entry.source, str) else f"{entry.source.file} from PyPI {entry.source.pypi}"
        marker = "*" if name == config.default_model else " "
        print(f" {marker} {name:<20} {source}")
        if entry.description:
            print(f"   {'':<20} {entry.description}")
    return 0
