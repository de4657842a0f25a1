"""Benchmark: seconds and peak memory of an encoder–decoder's route across the two stacks
(`llm_flow.seq2seq_route`) on a random model of opus-mt's shape (Marian: d_model 512, 6 encoder
and 6 decoder layers, 8 heads, FFN 2048), for source and target of T tokens each; then what a
run of a long source keeps on a random model of t5-small's shape (d_model 512, 6 + 6 layers, 8
heads of 64, FFN 2048; T5 has no length limit), for S source tokens and a 32-token target.

    python -m benchmarks.seq2seq_routes            # T = 16, 64, 128; S = 512, 2048
    python -m benchmarks.seq2seq_routes --quick    # T = 16, 64; S = 512

The first route on a run computes every block's contributions (one hooked forward pass and the
proximities of every part through the decoder engine's kernel, routes/proximity.py); later routes on the same
run, at any position or threshold, reuse them and only walk the graph. No hub access is needed:
the weights are random, the shapes are opus-mt's.
"""

from __future__ import annotations

import argparse

from benchmarks import memory

FULL_LENGTHS = (16, 64, 128)
QUICK_LENGTHS = (16, 64)
FULL_SOURCES = (512, 2048)
QUICK_SOURCES = (512,)
T5_TARGET = 32
MIB = 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="T = 16 and 64, S = 512 only")
    args = parser.parse_args()
    import torch

    print(f"torch threads {torch.get_num_threads()}; {memory.DESCRIPTION}")
    routes(QUICK_LENGTHS if args.quick else FULL_LENGTHS)
    long_sources(QUICK_SOURCES if args.quick else FULL_SOURCES)


def routes(lengths: tuple[int, ...]) -> None:
    """The route table: source and target of T tokens each on the opus-mt-shaped Marian."""
    from transformers import MarianConfig, MarianMTModel

    import llm_flow

    model = _random_model(MarianMTModel, MarianConfig, dict(
        d_model=512, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8, decoder_attention_heads=8,
        encoder_ffn_dim=2048, decoder_ffn_dim=2048, max_position_embeddings=1024,
    ))  # fmt: skip
    print("opus-mt-shaped Marian (random weights)")
    print(f"{'T':>5} {'run_pair s':>11} {'first route s':>14} {'peak MiB':>9} {'next route s':>13} {'edges':>6}")
    for n in lengths:
        ids = list(range(5, 5 + n))
        run = memory.measure(lambda: model.run_pair_ids(ids, ids))
        first = memory.measure(lambda: llm_flow.seq2seq_route(run.result, -1, 0.04))
        again = memory.measure(lambda: llm_flow.seq2seq_route(run.result, n // 2, 0.02))
        print(f"{n:>5} {run.seconds:>11.2f} {first.seconds:>14.2f} {first.peak_bytes / MIB:>9.0f} "
              f"{again.seconds:>13.3f} {first.result.number_of_edges():>6}")  # fmt: skip


def long_sources(lengths: tuple[int, ...]) -> None:
    """What a run keeps and its pass's peak for S source tokens on the t5-small-shaped T5."""
    from transformers import T5Config, T5ForConditionalGeneration

    shape = dict(d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8)
    model = _random_model(T5ForConditionalGeneration, T5Config, shape)
    print(f"\nt5-small-shaped T5 (random weights), target {T5_TARGET} tokens")
    print(f"{'S':>5} {'run_pair s':>11} {'run.nbytes MiB':>15} {'peak MiB':>9}")
    for n in lengths:
        source = [5 + i % 250 for i in range(n)]  # the tiny tokenizer's ids
        pair = memory.measure(lambda: model.run_pair_ids(source, list(range(5, 5 + T5_TARGET))))
        print(f"{n:>5} {pair.seconds:>11.2f} {pair.result.nbytes / MIB:>15.1f} {pair.peak_bytes / MIB:>9.0f}")
        del pair


def _random_model(model_class, config_class, shape: dict):
    """An encoder–decoder of `shape` with random weights (seed 0) and the tests' tiny tokenizer."""
    import torch

    import llm_flow
    from tests.tiny_models import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    config = config_class(vocab_size=len(tokenizer), decoder_start_token_id=2, pad_token_id=2, eos_token_id=1, **shape)
    torch.manual_seed(0)
    return llm_flow.load_model(model_class(config).eval(), tokenizer=tokenizer, max_prompt_tokens=4096)


if __name__ == "__main__":
    main()
