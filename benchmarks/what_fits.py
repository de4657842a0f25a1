"""What fits where: weights and the longest prompt llm-flow can analyse, per model and machine.

    python -m benchmarks.what_fits                      # the README's table
    python -m benchmarks.what_fits --memory 24GiB 80GB  # other budgets

Computed from the models' public shapes with the same functions ``llm-flow limits`` and
``model.run``'s refusal use (`llm_flow.models.sizing`, `llm_flow.models.memory`), so the table
is what llm-flow itself would allow; `benchmarks/run_memory.py` and `benchmarks/routes.py`
measure how close those estimates are to a real run's peak.
"""

from __future__ import annotations

import argparse

from transformers import GPT2Config, LlamaConfig, PretrainedConfig

from llm_flow.cli.limits import parse_bytes
from llm_flow.models.memory import estimate_peak_bytes, format_bytes
from llm_flow.models.sizing import footprint, info_from_config

_LLAMA_3 = dict(vocab_size=128_256, max_position_embeddings=131_072, rope_theta=500_000.0)


def shapes() -> dict[str, tuple[PretrainedConfig, str]]:
    """Public shapes (each model's config.json on the Hugging Face hub) and the dtype used."""
    return {
        "GPT-2 small": (GPT2Config(), "float32"),
        "SmolLM2-135M": (LlamaConfig(
            hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
            num_key_value_heads=3, vocab_size=49_152, max_position_embeddings=8192, tie_word_embeddings=True,
        ), "float32"),  # fmt: skip
        "Llama-3.2-1B": (LlamaConfig(
            hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
            num_key_value_heads=8, head_dim=64, tie_word_embeddings=True, **_LLAMA_3,
        ), "bfloat16"),  # fmt: skip
        "Llama-3.2-3B": (LlamaConfig(
            hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
            num_key_value_heads=8, head_dim=128, tie_word_embeddings=True, **_LLAMA_3,
        ), "bfloat16"),  # fmt: skip
        "Llama-3.1-8B": (LlamaConfig(
            hidden_size=4096, intermediate_size=14_336, num_hidden_layers=32, num_attention_heads=32,
            num_key_value_heads=8, head_dim=128, tie_word_embeddings=False, **_LLAMA_3,
        ), "bfloat16"),  # fmt: skip
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory", nargs="+", default=["24GiB", "80GB"], help="budgets, e.g. 24GiB 80GB")
    parser.add_argument("--tokens", nargs="+", type=int, default=[4096, 16_384], help="lengths to show the peak of")
    args = parser.parse_args(argv)
    budgets = [(text, parse_bytes(text)) for text in args.memory]
    header = ["model", "dtype", "parameters", "weights", *(f"peak at {t:,}" for t in args.tokens),
              *(f"longest in {text}" for text, _ in budgets)]  # fmt: skip
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * 3 + "---:|" * (len(header) - 3))
    for name, (config, dtype) in shapes().items():
        info = info_from_config(config, name, dtype=dtype)
        prints = [footprint(info, [], budget) for _, budget in budgets]
        longest = [
            "weights do not fit" if not fp.fits_weights
            else f"{fp.longest:,}" + (" (context)" if fp.longest == info.n_ctx else "")
            for fp in prints
        ]  # fmt: skip
        peaks = [format_bytes(estimate_peak_bytes(info, t)) for t in args.tokens]
        row = [name, dtype, f"{info.n_params / 1e9:.2f} B", format_bytes(prints[0].weights), *peaks, *longest]
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
